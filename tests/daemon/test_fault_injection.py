"""Fault injection against real daemons: one test per fault.

Real databases (each backend: conftest's `db`), real `liteqd` processes, real signals
and sockets;
nothing of LiteQ is mocked. Tasks record each execution themselves ("TASK_ID PID"
lines appended with O_APPEND, see tests/apps/fault_app.py), so "lost" and "doubled"
are counted exactly. Every process a test starts is SIGKILLed in teardown (its
process group, every descendant seen, anything still carrying the test's tag);
every wait has a deadline. The only time bounds asserted are the documented
ones, each with CI_SLACK of room for a loaded 2-core CI machine.
"""

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time

import psutil
import pytest

from liteq import control, backends

from support import APPS
from support.daemon_helpers import PYTHON as PY
from support.processes import cpu_seconds, is_gone, read_lines, wait_for, wait_gone
from support.task_table import all_tasks, status_counts, wait_statuses, worker_rows
from support.fault_helpers import CI_SLACK, KILL_GRACE, executions

CRASH_APP = os.path.join(APPS, "fault_crash_app.py")


@pytest.fixture
def app(fault_app):
    """This file's tasks: tests/apps/fault_app.py, run by the `lab` daemons."""
    return fault_app


def _pool(lab):
    return control.status(include_queues=False, path=lab.socket)["pools"][0]


def _ping(lab, timeout=5.0):
    reply = control.ping(path=lab.socket, timeout=timeout)
    assert reply["pong"] is True
    return reply


def _read_ints(path, timeout=10.0):
    def check():
        try:
            with open(path) as f:
                return [int(x) for x in f.read().split()]
        except (FileNotFoundError, ValueError):
            return None
    return wait_for(check, timeout, f"{path} was never written")


def _first_line(path, timeout=10.0):
    return wait_for(lambda: (read_lines(path) or [None])[0], timeout,
                    f"nothing was written to {path} within {timeout} s")


def _assert_exactly_once(log, ids):
    runs = executions(log)
    missing = sorted(set(ids) - set(runs))
    doubled = sorted(i for i, n in runs.items() if n > 1)
    extra = sorted(set(runs) - set(ids))
    assert not missing, f"{len(missing)} tasks never ran: {missing[:20]}"
    assert not doubled, f"{len(doubled)} tasks ran more than once: {doubled[:20]}"
    assert not extra, f"executions of unknown ids: {extra[:20]}"
    return runs


# ---- 1. SIGKILL a random child every 200 ms ----------------------------------------------

def test_sigkill_a_random_child_every_200ms_during_3000_tasks(lab, app):
    d = lab.daemon("--concurrency", "2")
    log = lab.path("executions.txt")
    ids = app.work.starmap([(log, 0.002)] * 3000)
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 90
    while True:
        done = status_counts(lab.db).get("done", 0)
        if done == len(ids):
            break
        assert time.monotonic() < deadline, f"only {done} of 3000 done after 90 s\n{d.dump()}"
        victims = d.workers()
        if victims:
            victim = rng.choice(victims)
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)  # psutil checks the start time first
                kills += 1
        time.sleep(0.2)
    rows = wait_statuses(lab.db, ids, timeout=5, dump=d.dump)
    assert {r["status"] for r in rows.values()} == {"done"}
    runs = executions(log)
    assert set(runs) == set(ids), "some task never ran"
    extra = sum(runs.values()) - len(ids)
    print(f"{kills} kills, {extra} extra executions")
    assert kills >= 5, f"only {kills} kills: the run was too short to test anything"
    assert extra <= kills, f"{extra} extra executions for {kills} kills"
    # attempts counts executions started: a re-run is always a new attempt.
    assert all(runs[i] <= rows[i]["attempts"] for i in ids)
    assert d.alive()
    wait_for(lambda: len(d.workers()) == 2, 10, "the pool never came back to 2 children")


# ---- 2. SIGSTOP a child in the middle of a task with a time limit -------------------------

def test_sigstopped_child_is_killed_at_timeout_plus_grace(lab, app):
    d = lab.daemon("--concurrency", "1")
    marker = lab.path("started.txt")
    tid = app.stoppable.delay(marker)
    line = _first_line(marker)
    started = time.monotonic()
    task_id, pid = (int(x) for x in line.split())
    assert task_id == tid
    worker = psutil.Process(pid)
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: worker.status() == psutil.STATUS_STOPPED, 5, "the child never stopped")
    limit = 1.0 + KILL_GRACE
    left = wait_gone([worker], timeout=limit + CI_SLACK + 5)
    elapsed = time.monotonic() - started
    assert not left, "the stopped child was never killed"
    assert elapsed <= limit + CI_SLACK, f"killed {elapsed:.2f} s after the start"
    # Not at the soft limit (1 s): no signal handler runs in a stopped process. (The
    # daemon's clock starts when it hands the task over, a moment before the marker.)
    assert elapsed >= 1.0 + KILL_GRACE / 2, f"killed after {elapsed:.2f} s, before the hard limit"
    row = wait_statuses(lab.db, [tid], timeout=10, dump=d.dump)[tid]
    assert row["status"] == "failed", row
    assert "timed out after 1 s" in row["error"], row["error"]
    assert status_counts(lab.db).get("running", 0) == 0
    ev = d.wait_event("task.timed_out", task_id=tid)
    assert ev["pid"] == pid
    assert wait_statuses(lab.db, [app.add.delay(2, 3)], dump=d.dump)  # still serving
    assert d.alive()


# ---- 3. a task blocked in C with SIGTERM blocked, with grandchildren -----------------------

def test_blocked_task_and_all_its_grandchildren_die_by_timeout_grace_plus_1s(lab, app):
    d = lab.daemon("--concurrency", "1")
    pidfile = lab.path("pids.txt")
    tid = app.blocked_with_grandchildren.delay(pidfile)
    worker_pid, plain, session, orphan = _read_ints(pidfile)
    # The pidfile is written after the grandchildren started, so this is no earlier
    # than the task's own start: measuring from here is, if anything, lenient.
    started = time.monotonic()
    procs = {name: psutil.Process(pid) for name, pid in
             (("worker", worker_pid), ("plain", plain), ("session", session),
              ("orphan", orphan))}
    blocked = procs["worker"].status()
    assert blocked in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING), blocked
    bound = 1.0 + KILL_GRACE + 1.0
    wait_gone(procs.values(), timeout=bound + CI_SLACK + 5)
    elapsed = time.monotonic() - started
    alive = [name for name, p in procs.items() if not is_gone(p)]
    assert not alive, f"still running {elapsed:.1f} s after the task began: {alive}\n{d.dump()}"
    assert elapsed <= bound + CI_SLACK, f"the last one died {elapsed:.2f} s after the start"
    row = wait_statuses(lab.db, [tid], timeout=10, dump=d.dump)[tid]
    assert row["status"] == "failed" and "timed out" in row["error"], row
    assert d.alive()


# ---- 4. a task swallows the soft-timeout exception -----------------------------------------

def test_task_swallowing_the_soft_timeout_is_killed_at_the_hard_limit(lab, app):
    d = lab.daemon("--concurrency", "1")
    marker = lab.path("swallow.txt")
    tid = app.swallow_timeout.delay(marker)
    pid = int(_first_line(marker).split()[1])
    started = time.monotonic()
    worker = psutil.Process(pid)
    # The soft limit (1 s) reached the task, which caught it and carried on.
    wait_for(lambda: any(l.startswith("caught") for l in read_lines(marker)), 5,
             "the soft timeout never reached the task")
    assert not is_gone(worker), "killed at the soft limit; this test needs it to survive it"
    limit = 1.0 + KILL_GRACE
    left = wait_gone([worker], timeout=limit + CI_SLACK + 5)
    elapsed = time.monotonic() - started
    assert not left, "the child was never killed"
    assert elapsed <= limit + CI_SLACK, f"killed {elapsed:.2f} s after the start"
    row = wait_statuses(lab.db, [tid], timeout=10, dump=d.dump)[tid]
    assert row["status"] == "failed", row
    assert "timed out after 1 s" in row["error"], row["error"]
    assert d.events("task.timed_out", task_id=tid)
    assert d.alive()


# ---- 5. SIGKILL the supervisor during a run, then start it again ---------------------------

def test_sigkill_supervisor_mid_run_then_restart_finishes_every_task(lab, app):
    d1 = lab.daemon("--concurrency", "2")
    log = lab.path("executions.txt")
    ids = app.work.starmap([(log, 0.003)] * 1000)
    wait_for(lambda: len(read_lines(log)) >= 300, 30, "the first daemon never got going")
    old_children = d1.descendants()
    assert len(d1.workers()) == 2
    d1.send(signal.SIGKILL)
    d1.wait(10)
    # No child of the first daemon is left: they die with their parent (PDEATHSIG).
    left = wait_gone(old_children + list(d1.seen.values()), timeout=5)
    assert not left, f"children of the killed daemon still run: {[p.pid for p in left]}"
    # Rows the dead daemon held; only these may run twice.
    held = {r["id"] for r in all_tasks(lab.db) if r["status"] == "running"}
    before = executions(log)
    assert 300 <= sum(before.values()) < 1000 + len(held)
    d2 = lab.daemon("--concurrency", "2")
    rows = wait_statuses(lab.db, ids, timeout=60, dump=lab.dump)
    assert {r["status"] for r in rows.values()} == {"done"}
    runs = executions(log)
    assert set(runs) == set(ids), "a task was lost"
    doubled = {i for i, n in runs.items() if n > 1}
    assert doubled <= held, f"tasks the dead daemon did not hold ran twice: {doubled - held}"
    assert max(runs.values()) <= 2
    reclaimed = {e["task_id"] for e in d2.events("task.reclaimed")}
    assert held and reclaimed == held
    for p in old_children:
        assert is_gone(p)
    assert d2.alive()


# ---- 6. pid reuse -------------------------------------------------------------------------

def test_worker_row_whose_pid_now_belongs_to_another_process_is_dead(lab, app):
    store = backends.get_backend()
    stranger = psutil.Process(lab.popen(["sleep", "60"]).pid)
    # A worker row with a fresh heartbeat whose pid is now this unrelated process:
    # only the start time (an hour off) tells that it is not the same process.
    store.heartbeat("reused-pid", socket.gethostname(), "default", 1, stranger.pid,
                    stranger.create_time() - 3600.0)
    log = lab.path("executions.txt")
    tid = app.work.delay(log)
    assert [r["id"] for r in store.claim("reused-pid", ["default"], 1)] == [tid]
    # With --stale-after 120 no heartbeat can go stale during the test.
    d = lab.daemon("--concurrency", "1", "--stale-after", "120")
    d.wait_event("task.reclaimed", task_id=tid)
    row = wait_statuses(lab.db, [tid], timeout=15, dump=d.dump)[tid]
    assert row["status"] == "done", row
    assert row["worker_id"] != "reused-pid"
    assert executions(log) == {tid: 1}
    assert stranger.is_running(), "the unrelated process was touched"
    assert "reused-pid" not in {w["worker_id"] for w in store.list_workers()}


# ---- 7. every child crashes at start-up ------------------------------------------------------

def test_children_crashing_at_start_back_off_show_failing_and_cost_little_cpu(lab):
    d = lab.daemon("--concurrency", "2", app=CRASH_APP, ready=False)
    wait_for(lambda: _try_ping(lab), 15, lambda: f"the daemon never answered\n{d.dump()}")
    wait_for(lambda: len(d.events("child.exited")) >= 3, 15,
             lambda: f"children did not crash\n{d.dump()}")
    assert not d.events("daemon.ready")
    # Respawns back off: over 4 s a fork loop would spawn hundreds of children.
    spawned0 = len(d.events("child.spawned"))
    cpu0 = cpu_seconds(d.ps)
    time.sleep(3.0)
    cpu = cpu_seconds(d.ps) - cpu0
    time.sleep(1.0)
    spawned = len(d.events("child.spawned")) - spawned0
    assert spawned <= 10, f"{spawned} children spawned in 4 s"
    assert cpu < 0.5, f"the supervisor used {cpu:.2f} s of CPU in 3 s"
    gaps = _gaps([e["timestamp"] for e in d.events("child.spawned")])
    assert gaps[-1] > gaps[0] and gaps[-1] >= 0.7, f"no back-off: {gaps}"
    pool = _pool(lab)
    assert pool["failing"] is True, pool
    assert pool["consecutive_failures"] >= 3, pool
    res = lab.liteqctl("status", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["pools"][0]["failing"] is True
    res = lab.liteqctl("status")
    assert res.returncode == 0 and "FAILING" in res.stdout, res.stdout
    crashed = d.events("child.exited")
    assert all(e["reason"] == "crashed" and "code 1" in e["how"] for e in crashed), crashed
    assert d.alive()


def _try_ping(lab):
    try:
        return _ping(lab, timeout=1)
    except (control.DaemonNotRunning, OSError):
        return None


def _gaps(stamps):
    from datetime import datetime
    ts = [datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in stamps]
    return [b - a for a, b in zip(ts, ts[1:])]


# ---- 8. poison tasks --------------------------------------------------------------------------

def test_poison_tasks_fail_after_their_retries_while_other_tasks_run(lab, app):
    d = lab.daemon("--concurrency", "2")
    poison = {"segfault": app.segfault.delay(), "exit": app.exit_one.delay(),
              "memory": app.huge_allocation.delay()}
    log = lab.path("executions.txt")
    normal = []
    deadline = time.monotonic() + 60
    # Ordinary work keeps arriving while the poison tasks crash their children.
    while status_counts(lab.db, poison.values()).get("failed", 0) < 3:
        assert time.monotonic() < deadline, f"poison tasks not failed in 60 s\n{d.dump()}"
        normal += app.work.starmap([(log, 0.002)] * 10)
        time.sleep(0.05)
    rows = wait_statuses(lab.db, list(poison.values()) + normal, timeout=30, dump=d.dump)
    seg, ex, mem = (rows[poison[k]] for k in ("segfault", "exit", "memory"))
    for row in (seg, ex, mem):
        assert row["status"] == "failed" and row["attempts"] == 3, row
    assert "SIGSEGV" in seg["error"], seg["error"]
    assert "exited with code 1" in ex["error"], ex["error"]
    assert "MemoryError" in mem["error"], mem["error"]
    assert all(rows[i]["status"] == "done" for i in normal)
    _assert_exactly_once(log, normal)
    last_poison = max(r["finished_at"] for r in (seg, ex, mem))
    meanwhile = [i for i in normal if rows[i]["finished_at"] < last_poison]
    assert len(meanwhile) >= 10, "ordinary tasks did not run while the poison tasks did"
    assert d.alive()
    wait_for(lambda: len(d.workers()) == 2, 10, "the pool never came back to 2 children")


# ---- 9. recycling by task count and by memory under load ------------------------------------

@pytest.mark.parametrize("limit", ["tasks", "memory"])
def test_recycling_by_task_count_or_memory_loses_and_doubles_nothing(lab, app, limit):
    log = lab.path("executions.txt")
    if limit == "tasks":
        d = lab.daemon("--concurrency", "2", "--max-tasks-per-child", "7")
        ids = app.work.starmap([(log, 0.001)] * 300)
        per_child, reason = 7, "max_tasks"
    else:
        # Each task keeps 6 MiB more resident; a child is replaced past 100 MB.
        d = lab.daemon("--concurrency", "2", "--max-memory-per-child", "100")
        ids = app.grow.starmap([(log, 6)] * 200)
        per_child, reason = 100 // 6 + 1, "max_memory"
    rows = wait_statuses(lab.db, ids, timeout=60, dump=d.dump)
    assert {r["status"] for r in rows.values()} == {"done"}
    _assert_exactly_once(log, ids)
    by_pid = {}
    for line in read_lines(log):
        pid = int(line.split()[1])
        by_pid[pid] = by_pid.get(pid, 0) + 1
    assert max(by_pid.values()) <= per_child, by_pid
    assert len(by_pid) >= len(ids) // per_child
    recycled = d.events("child.recycling", reason=reason)
    assert len(recycled) >= len(ids) // per_child - 2, len(recycled)
    assert not d.events("child.exited", reason="crashed")
    assert d.alive()
    wait_for(lambda: len(d.workers()) == 2, 10, "the pool never came back to 2 children")


# ---- 10. SIGTERM, then a second SIGTERM ------------------------------------------------------

def test_second_sigterm_stops_fast_within_2s_and_requeues_leftovers(lab, app):
    d = lab.daemon("--concurrency", "2")
    marker = lab.path("holds.txt")
    holds = [app.hold.delay(marker, 60) for _ in range(2)]
    wait_for(lambda: len(read_lines(marker)) == 2, 10, "the long tasks never started")
    queued = app.work.starmap([(lab.path("never.txt"),)] * 5)
    workers = d.workers()
    d.send(signal.SIGTERM)
    d.wait_event("daemon.stopping", mode="graceful")
    time.sleep(0.3)
    assert d.alive() and all(not is_gone(w) for w in workers), "graceful stop cut tasks short"
    t0 = time.monotonic()
    d.send(signal.SIGTERM)
    d.wait(2.0 + CI_SLACK + 10)
    elapsed = time.monotonic() - t0
    assert elapsed <= 2.0 + CI_SLACK, f"the fast stop took {elapsed:.2f} s"
    assert d.events("daemon.stopping", mode="fast")
    assert not wait_gone(workers, timeout=2), "children outlived the daemon"
    rows = {r["id"]: r for r in all_tasks(lab.db)}
    assert not [r for r in rows.values() if r["status"] == "running"]
    for tid in holds + queued:
        assert rows[tid]["status"] == "pending", rows[tid]
        assert rows[tid]["attempts"] == 0, rows[tid]  # the stop did not use up an attempt
        assert rows[tid]["worker_id"] is None
    assert not read_lines(lab.path("never.txt"))
    assert not worker_rows(lab.db)


# ---- 11. liteqctl scale 1 -> 8 -> 1 under load ----------------------------------------------

PRODUCER = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
import fault_app
log, n = sys.argv[2], int(sys.argv[3])
for i in range(n):
    print(fault_app.work.delay(log, 0.005), flush=True)
    if i % 20 == 19:
        time.sleep(0.04)
'''


def test_scale_1_to_8_to_1_under_load_settles_within_2s_and_loses_nothing(lab, app):
    d = lab.daemon("--concurrency", "1")
    log = lab.path("executions.txt")
    producer = lab.popen([PY, "-c", PRODUCER, APPS, log, "800"], stdout=subprocess.PIPE,
                         text=True)
    wait_for(lambda: len(read_lines(log)) >= 20, 20, "no task ran")
    for size in (8, 1):
        # liteqctl scale returns once the pool has settled; --wait bounds that.
        res = lab.liteqctl("scale", str(size), "--wait", str(2.0 + CI_SLACK))
        assert res.returncode == 0, f"scale {size}: {res.stderr}\n{d.dump()}"
        pool = _pool(lab)
        assert pool["size"] == size and len(pool["children"]) == size, pool
        assert all(c["state"] in ("idle", "running") for c in pool["children"]), pool
        wait_for(lambda: len(d.workers()) == size, 2.0 + CI_SLACK,
                 lambda: f"{len(d.workers())} worker processes, not {size}")
        if size == 8:
            wait_for(lambda: sum(1 for c in _pool(lab)["children"] if c["tasks_done"]) >= 4,
                     15, "the new children never took work")
    out, _ = producer.communicate(timeout=60)
    assert producer.returncode == 0
    ids = [int(x) for x in out.split()]
    assert len(ids) == 800
    rows = wait_statuses(lab.db, ids, timeout=60, dump=d.dump)
    assert {r["status"] for r in rows.values()} == {"done"}
    _assert_exactly_once(log, ids)
    assert len({line.split()[1] for line in read_lines(log)}) >= 5
    assert len(d.workers()) == 1
    assert [e["size"] for e in d.events("pool.scaled")] == [8, 1]


# ---- 12. another process holds the write lock for 10 s ---------------------------------------

LOCK_HOLDER = r'''
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
'''

LOCKED_PRODUCER = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
import liteq, fault_app
t0 = time.monotonic()
try:
    fault_app.add.delay(1, 2)
except liteq.DatabaseLocked as exc:
    print(f"DatabaseLocked after {time.monotonic() - t0:.2f} s: {exc}")
    sys.exit(3)
print("enqueued")
'''


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_write_lock_held_10s_daemon_supervises_retries_and_loses_nothing(lab, app, db_path):
    """SQLite only: another process holds its single write lock past the busy timeout."""
    d = lab.daemon("--concurrency", "2")
    log = lab.path("executions.txt")
    ids = app.work.starmap([(log, 0.4)] * 16)
    wait_for(lambda: read_lines(log), 10, "no task started")
    holder = lab.popen([PY, "-c", LOCK_HOLDER, db_path, "10"], stdout=subprocess.PIPE,
                       text=True)
    assert holder.stdout.readline().strip() == "locked"
    locked_at = time.monotonic()

    # A producer with a 1 s busy timeout waits for it, then gets a clear error.
    res = lab.run([PY, "-c", LOCKED_PRODUCER, APPS], env={"LITEQ_BUSY_TIMEOUT": "1"},
                  timeout=30)
    assert res.returncode == 3, (res.stdout, res.stderr)
    waited = float(res.stdout.split("after ")[1].split(" s")[0])
    assert waited >= 0.9, res.stdout
    assert "locked" in res.stdout and "LITEQ_BUSY_TIMEOUT" in res.stdout, res.stdout
    assert db_path in res.stdout, res.stdout

    # The daemon keeps supervising: it answers, and replaces a child killed meanwhile.
    pings = 0
    victim = d.workers()[0]
    victim.kill()
    while time.monotonic() - locked_at < 8.5:
        _ping(lab, timeout=2)
        pings += 1
        time.sleep(0.25)
    assert holder.poll() is None, "the lock holder quit early; the test proves nothing"
    assert pings >= 10
    assert victim.pid not in d.worker_pids()
    assert len(d.workers()) == 2, "the killed child was not replaced during the lock"
    retries = d.events("db.retrying")
    assert retries, "the daemon never had to retry a write"
    # The message names the daemon's own short busy timeout, not the producers' default.
    assert all("locked" in e["error"] and "LITEQ_BUSY_TIMEOUT" not in e["error"]
               for e in retries), retries[0]
    # The tasks the children held when the lock came finished meanwhile (their outcomes
    # wait in memory); with fair dispatch nothing waits behind them to run.
    busy = [c for p in control.status(path=lab.socket, timeout=5)["pools"]
            for c in p["children"] if c.get("task_id") is not None]
    assert not busy, f"children still busy after 8 s of 0.4 s tasks: {busy}"
    assert holder.stdout.readline().strip() == "released"
    holder.wait(10)

    rows = wait_statuses(lab.db, ids, timeout=30, dump=d.dump)
    assert {r["status"] for r in rows.values()} == {"done"}
    runs = executions(log)
    assert set(runs) == set(ids)
    # The one task that can run twice is the one the killed child was running.
    assert sum(runs.values()) - len(ids) <= 1
    assert d.alive()
    assert not [r for r in all_tasks(lab.db) if r["status"] == "running"]


# ---- 13. a flood of control connections while children respawn ------------------------------

def _connect(path, timeout=10.0):
    """Connect to the control socket, waiting for room while its accept backlog is full
    (a Unix socket with a timeout fails at once with EAGAIN then)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            assert time.monotonic() < deadline, "the daemon stopped accepting connections"
            time.sleep(0.005)


def _ping_amid_flood(lab, timeout=5.0):
    """A ping must get a pong within `timeout`. Connections the flood already closed
    count against the daemon's cap (128) until its loop reads their end, so for a
    moment it may answer "too many control connections": an answer, not a hang."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _ping(lab, timeout=timeout)
        except control.ControlError as exc:
            assert "too many control connections" in str(exc), exc
            assert time.monotonic() < deadline, f"no pong within {timeout} s: {exc}"
            time.sleep(0.05)


def test_control_socket_flood_while_children_respawn(lab, app):
    d = lab.daemon("--concurrency", "2")
    log = lab.path("executions.txt")
    wait_statuses(lab.db, [app.work.delay(lab.path("warmup.txt"))], dump=d.dump)
    _ping(lab)
    lab.liteqctl("status")
    baseline = d.fds()
    rng = random.Random(13)
    held, ids, crashers = [], [], []
    try:
        for rnd in range(10):
            for k in range(100):
                s = _connect(lab.socket)
                junk = os.urandom(rng.randint(1, 3000))
                if k % 3:
                    junk += b"\n"
                with contextlib.suppress(OSError):
                    s.sendall(junk)
                if k % 20 == 0:
                    held.append(s)  # left open, silent after its garbage
                else:
                    s.close()
            # Tasks keep flowing; every fifth one kills its child (a respawn).
            for n in range(20):
                crash = n % 5 == 0
                tid = app.work_or_exit.delay(log, crash)
                (crashers if crash else ids).append(tid)
            _ping_amid_flood(lab)
        assert len(held) == 50
    finally:
        for s in held:
            s.close()
    rows = wait_statuses(lab.db, ids + crashers, timeout=60, dump=d.dump)
    assert all(rows[i]["status"] == "done" for i in ids)
    assert all(rows[i]["status"] == "failed" and "code 1" in rows[i]["error"]
               for i in crashers)
    runs = executions(log)
    assert all(runs[i] == 1 for i in ids + crashers), "a task was lost or doubled"
    assert len(d.events("child.exited", reason="crashed")) == len(crashers)
    _ping(lab)
    wait_for(lambda: len(d.workers()) == 2, 10, "the pool never came back to 2 children")
    wait_for(lambda: d.fds() <= baseline + 3, 15,
             lambda: f"fds did not come back: {d.fds()} now, {baseline} before")
    assert d.alive()


# ---- 14. thirty SIGHUP reloads in a row --------------------------------------------------------

def test_thirty_sighup_reloads_leak_nothing_and_lose_nothing(lab, app):
    d = lab.daemon("--concurrency", "2")
    log = lab.path("executions.txt")
    # Warm up: one reload and a task, so lazily opened files are open for the baseline.
    d.send(signal.SIGHUP)
    d.wait_event("daemon.reloaded")
    wait_statuses(lab.db, [app.work.delay(lab.path("warmup.txt"))], dump=d.dump)
    wait_for(lambda: len(d.workers()) == 2 and len(d.children()) == 2, 10,
             "the warm-up reload did not settle")
    _ping(lab)
    baseline = d.fds()
    first_workers = d.workers()
    ids = []
    for n in range(30):
        ids += app.work.starmap([(log, 0.01)] * 10)
        d.send(signal.SIGHUP)
        time.sleep(0.1 + 0.1 * (n % 2))
    rows = wait_statuses(lab.db, ids, timeout=60, dump=d.dump)
    assert {r["status"] for r in rows.values()} == {"done"}
    _assert_exactly_once(log, ids)
    wait_for(lambda: len(d.events("daemon.reloaded")) == 31, 10,
             lambda: f"{len(d.events('daemon.reloaded'))} reloads logged, not 31")
    wait_for(lambda: len(d.workers()) == 2 and len(d.children()) == 2, 10,
             lambda: f"children did not settle at 2: {d.children()}")
    assert not d.zombies()
    assert not [p for p in first_workers if not is_gone(p)], "a replaced child lives on"
    wait_for(lambda: d.fds() <= baseline + 3, 15,
             lambda: f"fds did not come back: {d.fds()} now, {baseline} before")
    assert d.alive()
