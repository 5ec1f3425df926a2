"""liteqd's failure model: killed children, timeouts, a killed supervisor,
graceful and fast stops, reloads under load, poison tasks, pid reuse, crash loops.

Real daemons, real forked children, real signals; see tests/support/daemon_helpers.py.
"""

import os
import signal
import socket
import threading
import time
from collections import Counter

import psutil
import pytest

from liteq import backends

from support.processes import cpu_seconds, is_gone, read_lines, wait_for, wait_gone
from support.task_table import status, wait_all, wait_status


def _read_pidfile(path):
    def check():
        try:
            with open(path) as f:
                return f.read().split()
        except FileNotFoundError:
            return None
    return [int(x) for x in wait_for(check, 10, message=f"{path} never written")]


def _start_slow(daemons, app, seconds):
    """Enqueue app.slow and wait until a child has really begun it (its marker line);
    task.started is logged at dispatch, a moment before the child reads the task."""
    marker = daemons.path(f"slow-{time.monotonic_ns()}.txt")
    tid = app.slow.delay(seconds, marker)
    lines = wait_for(lambda: read_lines(marker), 10, message="the slow task never began")
    return tid, int(lines[0].split()[1])


# ---- a child killed in the middle of a task ----------------------------------------------

def test_sigkill_child_mid_task_task_still_ends_done_and_child_replaced(daemons, app):
    d = daemons.start("--concurrency", "2")
    first = d.wait_children(2)
    attempts = daemons.path("attempts.txt")
    tid = app.slow.delay(1.0, attempts)
    started = d.wait_event("task.started", task_id=tid)
    wait_for(lambda: len(read_lines(attempts)) == 1, 5)
    victim = started["pid"]
    assert victim in first
    os.kill(victim, signal.SIGKILL)
    st = wait_status(tid, timeout=15, daemons=daemons)
    assert st["status"] == "done", st
    assert st["attempts"] == 2
    assert len(read_lines(attempts)) == 2
    retry = d.events("task.retrying", task_id=tid)
    assert retry and "SIGKILL" in retry[0]["error"]
    wait_for(lambda: is_gone(victim), 5)
    now = d.wait_children(2)
    assert victim not in now
    assert now - first, "no new child replaced the killed one"
    spawned = {e["pid"] for e in d.events("child.spawned")}
    assert now <= spawned


# ---- hard time limits --------------------------------------------------------------------

def test_timeout_kills_child_and_its_subprocess(daemons, app):
    kill_grace = 1.0
    d = daemons.start("--concurrency", "1")  # FAST_ARGS: --kill-grace 1
    pidfile = daemons.path("sub.pid")
    tid = app.sleep_with_subprocess.delay(pidfile)
    sleep_pid, child_pid = _read_pidfile(pidfile)
    t0 = time.monotonic()  # the task started a little before this
    sleeper = psutil.Process(sleep_pid)
    child = psutil.Process(child_pid)
    assert sleeper.cmdline() == ["sleep", "600"]
    limit = 1.0 + kill_grace + 1.0
    left = wait_gone([sleeper, child], timeout=limit)
    assert not left, f"still alive {time.monotonic() - t0:.1f} s after the start: " \
                     f"{[p.pid for p in left]}\n{daemons.dump()}"
    st = wait_status(tid, timeout=5, daemons=daemons)
    assert st["status"] == "failed", st
    assert "timed out after 1 s" in st["error"]
    assert st["attempts"] == 1
    # A fresh child takes the killed one's place and serves tasks.
    now = d.wait_children(1)
    assert child_pid not in now
    assert wait_status(app.add.delay(1, 1), daemons=daemons)["result"] == 2


def test_timeout_kills_a_subprocess_in_a_session_of_its_own(daemons, app):
    # Killing the child's process group misses a subprocess that called setsid();
    # the whole tree must end (psutil), so it must die as well.
    d = daemons.start("--concurrency", "1")  # --kill-grace 1
    pidfile = daemons.path("sub.pid")
    tid = app.sleep_with_detached_subprocess.delay(pidfile)
    sleep_pid, child_pid = _read_pidfile(pidfile)
    sleeper = psutil.Process(sleep_pid)
    assert os.getpgid(sleep_pid) != os.getpgid(child_pid)
    left = wait_gone([sleeper, psutil.Process(child_pid)], timeout=1.0 + 1.0 + 1.0)
    assert not left, f"still alive: {[p.pid for p in left]}\n{daemons.dump()}"
    st = wait_status(tid, timeout=5, daemons=daemons)
    assert st["status"] == "failed" and "timed out after 1 s" in st["error"], st
    assert d.alive()


def test_task_that_swallows_the_soft_timeout_is_killed_at_the_hard_limit(daemons, app):
    d = daemons.start("--concurrency", "1")  # --kill-grace 1
    pidfile = daemons.path("child.pid")
    tid = app.swallow_timeout.delay(pidfile)
    (child_pid,) = _read_pidfile(pidfile)
    child = psutil.Process(child_pid)
    left = wait_gone([child], timeout=1.0 + 1.0 + 1.0)
    assert not left, f"child {child_pid} outlived the hard limit\n{daemons.dump()}"
    st = wait_status(tid, timeout=5, daemons=daemons)
    assert st["status"] == "failed", st
    assert "timed out after 1 s" in st["error"]
    ev = d.wait_event("task.timed_out", task_id=tid)
    assert ev["pid"] == child_pid
    assert wait_status(app.add.delay(2, 2), daemons=daemons)["result"] == 4


# ---- the supervisor killed ---------------------------------------------------------------

def test_sigkill_supervisor_children_exit_and_restart_reclaims_task(daemons, app):
    d1 = daemons.start("--concurrency", "2")
    children = [psutil.Process(pid) for pid in d1.wait_children(2)]
    attempts = daemons.path("attempts.txt")
    tid = app.slow.delay(1.5, attempts)
    d1.wait_event("task.started", task_id=tid)
    wait_for(lambda: len(read_lines(attempts)) == 1, 5)
    d1.kill()
    left = wait_gone(children, timeout=5)
    assert not left, f"orphaned children {[p.pid for p in left]}"
    assert wait_status(tid, "running", timeout=1)["worker_id"].split(":")[1] == str(d1.pid)
    d2 = daemons.start("--concurrency", "2")
    ev = d2.wait_event("task.reclaimed", task_id=tid)
    assert ev["status"] == "pending"
    st = wait_status(tid, timeout=15, daemons=daemons)
    assert st["status"] == "done", st
    assert st["attempts"] == 2
    assert len(read_lines(attempts)) == 2
    assert st["worker_id"].split(":")[1] == str(d2.pid)



@pytest.mark.parametrize("busy", ["idle", "running", "draining"])
def test_children_of_a_sigkilled_supervisor_exit_with_one_line_each(daemons, app, busy):
    # A child that found its socket reset (its results unread) printed a traceback
    # (ConnectionResetError) into the daemon's log. Now each child logs child.orphaned
    # once and exits: idle ones, one in the middle of a task, and children streaming
    # results (the case that left results unread).
    d = daemons.start("--concurrency", "3")
    pids = d.wait_children(3)
    children = [psutil.Process(pid) for pid in pids]
    running = None
    if busy == "running":
        running, running_pid = _start_slow(daemons, app, 30)
    elif busy == "draining":
        app.add.starmap([(i, i) for i in range(20000)])
        wait_for(lambda: len(d.events("task.succeeded")) > 200, 20, interval=0.002)
    d.kill()
    left = wait_gone(children, timeout=5)
    assert not left, f"children outlived their supervisor: {[p.pid for p in left]}"
    lines = wait_for(lambda: _orphan_lines(d, len(pids)), 5,
                     lambda: f"not one child.orphaned per child\n{d.dump()}")
    assert sorted(ev["pid"] for ev in lines) == sorted(pids)
    assert all(ev["supervisor_pid"] == d.pid and ev["level"] == "warning" for ev in lines)
    if running is not None:
        assert [ev.get("task_id") for ev in lines if ev["pid"] == running_pid] == [running]
    text = "\n".join(d.log_lines()) + d.stderr()
    assert "Traceback" not in text and "Error" not in text, d.dump()


def _orphan_lines(d, n):
    lines = d.events("child.orphaned")
    return lines if len(lines) >= n else None

def test_sigkill_supervisor_then_restart_ends_the_tasks_orphaned_subprocess(daemons, app):
    # Without systemd's cgroup, a task's own subprocess outlives a SIGKILLed daemon
    # (its child dies by PDEATHSIG; the subprocess is reparented). The next daemon on
    # the database finds it by the worker id in its environment and ends it.
    d1 = daemons.start("--concurrency", "1")
    pidfile = daemons.path("sub.pid")
    app.subprocess_then_sleep.delay(pidfile, 30)
    sleep_pid, child_pid = _read_pidfile(pidfile)
    sleeper = psutil.Process(sleep_pid)
    d1.kill()
    if wait_gone([psutil.Process(child_pid)], timeout=5):
        pytest.fail("the child itself outlived its supervisor")
    assert sleeper.is_running()  # nothing has ended it yet
    d2 = daemons.start("--concurrency", "1")
    left = wait_gone([sleeper], timeout=10)
    assert not left, f"the task's subprocess {sleep_pid} outlived the restart"
    assert d2.events("child.orphan_killed", pid=sleep_pid)


def test_a_zombie_supervisor_is_dead_its_leftovers_are_ended_and_its_task_reclaimed(
        daemons, app):
    # SIGKILLed but not reaped (its parent, this test, has not called wait()): the pid
    # and start time still answer, but the supervisor will never run again.
    d1 = daemons.start("--concurrency", "1", "--stale-after", "120")
    pidfile = daemons.path("sub.pid")
    tid = app.subprocess_then_sleep.delay(pidfile, 30)
    sleep_pid, _child_pid = _read_pidfile(pidfile)
    sleeper = psutil.Process(sleep_pid)
    os.kill(d1.pid, signal.SIGKILL)
    wait_for(lambda: d1.ps.status() == psutil.STATUS_ZOMBIE, 10, "no zombie")
    # Heartbeats cannot go stale during this test: only the process's state can tell.
    d2 = daemons.start("--concurrency", "1", "--stale-after", "120",
                       "--socket", daemons.path("d2.sock"))
    assert not wait_gone([sleeper], timeout=15), f"the zombie's leftover {sleep_pid} lives on"
    assert d2.events("child.orphan_killed", pid=sleep_pid)
    d2.wait_event("task.reclaimed", task_id=tid)
    assert d1.ps.status() == psutil.STATUS_ZOMBIE  # still unreaped all along
    assert wait_status(tid, "running", timeout=15)["worker_id"].startswith(
        socket.gethostname() + f":{d2.pid}:")


# ---- graceful and fast stop --------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_sigterm_lets_a_running_task_finish_then_exits_0(daemons, app, sig):
    d = daemons.start("--concurrency", "2")
    tid, _ = _start_slow(daemons, app, 2.0)
    assert wait_status(tid, "running", timeout=1)
    d.send(sig)
    d.wait_event("daemon.stopping", mode="graceful", reason=signal.Signals(sig).name)
    code = d.wait(15)
    assert code == 0, d.dump()
    st = wait_status(tid, timeout=1)
    assert st["status"] == "done", st
    assert st["result"] == "slept"
    assert d.events("daemon.stopped")


def test_second_sigterm_stops_fast_and_requeues_the_task(daemons, app):
    d = daemons.start("--concurrency", "1", "--graceful-timeout", "60")
    tid, child_pid = _start_slow(daemons, app, 30.0)
    d.send(signal.SIGTERM)
    d.wait_event("daemon.stopping", mode="graceful")
    time.sleep(0.2)
    assert d.alive()  # graceful: it waits for the task
    t0 = time.monotonic()
    d.send(signal.SIGTERM)
    code = d.wait(5)
    elapsed = time.monotonic() - t0
    assert code == 0, d.dump()
    assert elapsed < 4.0, elapsed
    assert d.events("daemon.stopping", mode="fast")
    wait_for(lambda: is_gone(child_pid), 5)
    st = wait_status(tid, "pending", timeout=1)
    assert st["worker_id"] is None


def test_graceful_timeout_expiry_kills_and_requeues_the_task(daemons, app):
    d = daemons.start("--concurrency", "1", "--graceful-timeout", "1")
    tid, child_pid = _start_slow(daemons, app, 30.0)
    d.send(signal.SIGTERM)
    assert d.wait(10) == 0, d.dump()
    assert is_gone(child_pid)
    st = wait_status(tid, "pending", timeout=1)
    assert st["worker_id"] is None
    assert d.events("child.killed", pid=child_pid)


def test_graceful_stop_returns_prefetched_tasks_to_pending_at_once(daemons, app):
    # Preconditions fail with pytest.fail (not AssertionError), so they are not
    # mistaken for the known bug.
    d = daemons.start("--concurrency", "1", "--prefetch", "2")
    running, _ = _start_slow(daemons, app, 3.0)
    queued = app.add.delay(1, 2)
    wait_status(queued, "running", timeout=2)  # prefetched behind the slow task
    d.send(signal.SIGTERM)
    d.wait_event("daemon.stopping")
    deadline = time.monotonic() + 1.5
    while status(queued)["status"] != "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    if status(running)["status"] != "running":
        pytest.fail("the slow task was no longer running: the check came too late")
    assert status(queued)["status"] == "pending"
    assert status(queued)["worker_id"] is None


# ---- reload ------------------------------------------------------------------------------

def test_hup_under_steady_load_runs_every_task_exactly_once(daemons, app):
    d = daemons.start("--concurrency", "2")
    first = d.wait_children(2)
    log = daemons.path("executions.txt")
    ids = []
    errors = []

    def produce():
        try:
            for n in range(300):
                ids.append(app.record.delay(log, n))
                time.sleep(0.01)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            backends.forget_backends()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    for _ in range(3):
        time.sleep(0.8)
        d.send(signal.SIGHUP)
    producer.join(timeout=30)
    assert not producer.is_alive() and not errors, errors
    assert len(ids) == 300
    rows = wait_all(ids, timeout=30, daemons=daemons)
    assert Counter(r["status"] for r in rows.values()) == {"done": 300}
    counts = Counter(int(line.split()[0]) for line in read_lines(log))
    assert sorted(counts) == list(range(300))
    assert set(counts.values()) == {1}, {n: c for n, c in counts.items() if c != 1}
    assert len(d.events("daemon.reloaded")) == 3
    now = d.wait_children(2)
    assert not (now & first), (first, now)
    assert len({e["pid"] for e in d.events("child.spawned")}) >= 8
    assert d.alive()


APP_V1 = '''
from liteq import task

@task
def version():
    return "v1"
'''

APP_V2 = '''
from liteq import task

@task
def version():
    return {"version": 2, "note": "reloaded code"}
'''


def test_hup_loads_new_code(daemons):
    from support.daemon_helpers import load_app_module
    path = daemons.path("versioned_tasks.py")
    with open(path, "w") as f:
        f.write(APP_V1)
    d = daemons.start("--concurrency", "1", app=path)
    mod = load_app_module(path)
    assert wait_status(mod.version.delay(), daemons=daemons)["result"] == "v1"
    old = d.wait_children(1)
    with open(path, "w") as f:
        f.write(APP_V2)
    d.send(signal.SIGHUP)
    d.wait_event("daemon.reloaded")
    assert not d.events("daemon.reload_failed")
    assert wait_status(mod.version.delay(), daemons=daemons)["result"] == \
        {"version": 2, "note": "reloaded code"}
    assert not (d.wait_children(1) & old)


def test_hup_with_broken_new_code_keeps_serving_the_old_code(daemons):
    from support.daemon_helpers import load_app_module
    path = daemons.path("versioned_tasks.py")
    with open(path, "w") as f:
        f.write(APP_V1)
    d = daemons.start("--concurrency", "1", app=path)
    mod = load_app_module(path)
    old = d.wait_children(1)
    with open(path, "w") as f:
        f.write(APP_V1 + "\nraise RuntimeError('half-deployed')\n")
    d.send(signal.SIGHUP)
    ev = d.wait_event("daemon.reload_failed")
    assert "RuntimeError: half-deployed" in ev["error"]
    assert wait_status(mod.version.delay(), daemons=daemons)["result"] == "v1"
    assert d.wait_children(1) == old  # the children were kept
    assert d.alive()


# ---- poison tasks ------------------------------------------------------------------------

def test_poison_tasks_fail_after_retries_and_the_daemon_keeps_serving(daemons, app):
    d = daemons.start("--concurrency", "2")
    seg = app.segfault.delay()
    ex1 = app.exit_one.delay()
    meanwhile = 0
    deadline = time.monotonic() + 30
    # Keep ordinary work flowing while the poison tasks crash their children.
    while time.monotonic() < deadline:
        tid = app.add.delay(meanwhile, 1)
        st = wait_status(tid, timeout=15, daemons=daemons)
        assert st["status"] == "done" and st["result"] == meanwhile + 1, st
        rows = {r["id"]: r for r in backends.get_backend().get_tasks([seg, ex1])}
        if all(r["status"] in ("done", "failed") for r in rows.values()):
            break
        meanwhile += 1  # served while a poison task was still crashing children
        time.sleep(0.05)
    st_seg = wait_status(seg, timeout=1, daemons=daemons)
    st_ex1 = wait_status(ex1, timeout=1, daemons=daemons)
    assert st_seg["status"] == "failed" and st_seg["attempts"] == 3, st_seg
    assert "SIGSEGV" in st_seg["error"]
    assert st_ex1["status"] == "failed" and st_ex1["attempts"] == 3, st_ex1
    assert "exited with code 1" in st_ex1["error"]
    assert meanwhile >= 1
    # Each of the six deaths is seen as a crash (warning, counted for the respawn
    # back-off), however the supervisor first noticed it (reaping it, or a send to it
    # failing because it was already gone).
    deaths = [e for e in d.events("child.exited")
              if "SIGSEGV" in e["how"] or "exited with code 1" in e["how"]]
    assert len(deaths) == 6, deaths
    assert all(e["reason"] == "crashed" and e["level"] == "warning" for e in deaths), deaths
    assert d.alive()
    assert wait_status(app.add.delay(5, 5), daemons=daemons)["result"] == 10
    assert len(d.wait_children(2)) == 2


# ---- pid reuse ---------------------------------------------------------------------------

def test_worker_row_with_a_reused_pid_is_dead_and_its_task_is_reclaimed(daemons, app):
    store = backends.get_backend()
    host = socket.gethostname()
    # Two live, unrelated processes. "ghost" claims the first one's pid with a wrong
    # start time (the pid was reused); "alive" names the second one correctly.
    reused = psutil.Process(daemons.popen(["sleep", "30"]).pid)
    living = psutil.Process(daemons.popen(["sleep", "30"]).pid)
    store.heartbeat("ghost", host, "default", 1, reused.pid, reused.create_time() - 3600.0)
    store.heartbeat("alive", host, "default", 1, living.pid, living.create_time())
    log = daemons.path("executions.txt")
    lost = app.record.delay(log, 1)
    assert [r["id"] for r in store.claim("ghost", ["default"], 1)] == [lost]
    held = app.record.delay(log, 2)
    assert [r["id"] for r in store.claim("alive", ["default"], 1)] == [held]
    # Heartbeats cannot go stale during this test: only pid + start time can tell.
    d = daemons.start("--concurrency", "1", "--stale-after", "120")
    d.wait_event("task.reclaimed", task_id=lost)
    st = wait_status(lost, timeout=10, daemons=daemons)
    assert st["status"] == "done", st
    assert st["worker_id"] != "ghost"
    assert reused.is_running() and living.is_running()  # unrelated processes left alone
    # The live worker's task is left alone.
    time.sleep(1.5)  # three heartbeats
    st_held = wait_status(held, "running", timeout=1)
    assert st_held["worker_id"] == "alive"
    assert not d.events("task.reclaimed", task_id=held)
    assert [l.split()[0] for l in read_lines(log)] == ["1"]
    workers = {w["worker_id"] for w in store.list_workers()}
    assert "ghost" not in workers and "alive" in workers


def test_task_of_a_remote_worker_with_a_stale_heartbeat_is_reclaimed(daemons, app):
    store = backends.get_backend()
    # A worker on another machine: its pid means nothing here, only its heartbeat counts.
    store.heartbeat("far-away", "some-other-host", "default", 1, os.getpid(), 1.0)
    log = daemons.path("executions.txt")
    tid = app.record.delay(log, 7)
    assert [r["id"] for r in store.claim("far-away", ["default"], 1)] == [tid]
    d = daemons.start("--concurrency", "1", "--stale-after", "2")
    # Fresh at first: not touched until the heartbeat is older than --stale-after.
    time.sleep(0.6)
    assert wait_status(tid, "running", timeout=0.1)["worker_id"] == "far-away"
    assert not d.events("task.reclaimed")
    ev = d.wait_event("task.reclaimed", task_id=tid, timeout=10)
    assert ev["status"] == "pending"
    st = wait_status(tid, timeout=10, daemons=daemons)
    assert st["status"] == "done" and st["result"] == 7, st
    assert [line.split()[0] for line in read_lines(log)] == ["7"]
    assert "far-away" not in {w["worker_id"] for w in store.list_workers()}


# ---- crash loops -------------------------------------------------------------------------

def test_crash_loop_respawns_back_off_and_cpu_stays_low(daemons, app):
    d = daemons.start("--concurrency", "2")
    cpu0 = cpu_seconds(d.ps)
    tid = app.crash_always.delay()
    d.wait_event("child.exited", reason="crashed")
    t0 = time.monotonic()
    spawned0 = len(d.events("child.spawned"))
    time.sleep(3.0)
    spawned = len(d.events("child.spawned")) - spawned0
    cpu = cpu_seconds(d.ps) - cpu0
    crashed = d.events("child.exited", reason="crashed")
    assert len(crashed) >= 2, d.dump()  # it really kept crashing
    assert spawned < 15, f"{spawned} children spawned in {time.monotonic() - t0:.1f} s"
    assert cpu < 1.0, f"supervisor used {cpu:.2f} s CPU while children crash-looped"
    assert d.alive()
    failing = [e for e in d.events("child.exited") if e.get("failing")]
    assert failing, "the pool never reported itself failing"
    st = wait_status(tid, timeout=60, daemons=daemons)
    assert st["status"] == "failed" and st["attempts"] == 6, st
    assert "exited with code 3" in st["error"]
