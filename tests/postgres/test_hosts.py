"""Several hosts on one PostgreSQL queue: a drain shared by three hosts, a host crash and
its restart, a frozen host, status --all and scale across hosts, and no secrets shown.

Each daemon runs in UTS and PID namespaces of its own, with its own hostname and
control socket (tests/support/hosts.py); killing a namespace's every process is a host crash.
Tasks record each execution themselves ("TASK_ID PID HOSTNAME", one O_APPEND write,
tests/apps/fault_app.py), so runs are counted from their side effects, not from the
database. The only time bounds asserted are the documented ones, with CI_SLACK.
The SQLite case of `db` is skipped: an SQLite queue is one file on one host.
"""

import json
import time
import traceback
from collections import Counter

import pytest

from liteq import backends
from liteq.errors import DatabaseError

from support.daemon_helpers import LITEQCTL
from support.monitor import Monitor
from support.processes import read_lines, wait_for
from support.task_table import all_tasks, status_counts, task_rows, wait_statuses
from support.fault_helpers import CI_SLACK, FAULT_APP, executions, load_app_module

HEARTBEAT, STALE_AFTER = 0.5, 2.0  # daemon_helpers.FAST_ARGS
NAMES = ("host-a", "host-b", "host-c")


@pytest.fixture
def app(hosts):
    """tests/apps/fault_app.py loaded in the test process (for .map() and .delay())."""
    return load_app_module(FAULT_APP)


def _hosts_of(log, ids=None) -> Counter:
    """Executions per hostname ("TASK_ID PID HOSTNAME" lines), of `ids` only if given."""
    lines = (line.split() for line in read_lines(log))
    return Counter(f[2] for f in lines if ids is None or int(f[0]) in ids)


def _running_on(db, host) -> set:
    """Ids of the tasks the database says run on a daemon of `host`."""
    return {r["id"] for r in all_tasks(db)
            if r["status"] == "running" and (r["worker_id"] or "").startswith(host + ":")}


def _wait_done(hosts, ids, timeout):
    rows = wait_statuses(hosts.db, ids, timeout=timeout, dump=hosts.dump)
    assert Counter(r["status"] for r in rows.values()) == {"done": len(ids)}
    return rows


def _worker_ids() -> set:
    return {w["worker_id"] for w in backends.get_backend().list_workers()}


def _reclaimed_by(host) -> set:
    return {e["task_id"] for e in host.events("task.reclaimed")}


# ---- three hosts, 30,000 tasks -----------------------------------------------------------

def test_three_hosts_run_30000_tasks_each_exactly_once(hosts, app):
    for name in NAMES:
        hosts.host(name, "--concurrency", "2")
    log = hosts.path("executions.txt")
    ids = app.work_on_host.map([log] * 30000)
    wait_for(lambda: status_counts(hosts.db).get("done", 0) == len(ids), 120,
             lambda: f"not drained: {status_counts(hosts.db)}\n{hosts.dump()}", interval=0.5)
    assert status_counts(hosts.db) == {"done": 30000}
    runs = executions(log)
    assert set(runs) == set(ids), "some task never ran"
    assert set(runs.values()) == {1}, f"{sum(n > 1 for n in runs.values())} ran twice"
    per_host = _hosts_of(log)
    print(f"executions per host: {dict(per_host)}")
    assert set(per_host) == set(NAMES), "not every host took part"


# ---- a host crash ------------------------------------------------------------------------

def test_host_crash_its_tasks_are_reclaimed_by_the_others_and_only_they_run_twice(hosts, app):
    started = {name: hosts.host(name, "--concurrency", "2") for name in NAMES}
    log = hosts.path("executions.txt")
    ids = app.work_on_host.starmap([(log, 0.2 + 0.1 * (i % 4)) for i in range(120)])
    # Crash host-b while both its children run a task, with work left for the others.
    wait_for(lambda: len(_running_on(hosts.db, "host-b")) >= 2
             and _hosts_of(log)["host-b"] >= 4, 30,
             lambda: f"host-b never ran two tasks at once\n{hosts.dump()}", interval=0.05)
    crashed_at = time.monotonic()
    started["host-b"].crash()
    # What it held when it died: the database's running rows for it. A commit it sent
    # before dying can only make this set larger than what really ran there.
    held = _running_on(hosts.db, "host-b")
    assert held, "host-b held no task when it crashed"

    def given_back():
        rows = task_rows(hosts.db, held)
        return all(not (r["status"] == "running" and r["worker_id"].startswith("host-b:"))
                   for r in rows.values())
    wait_for(given_back, 30, lambda: f"host-b's tasks were never reclaimed\n{hosts.dump()}",
             interval=0.05)
    reclaimed_after = time.monotonic() - crashed_at
    print(f"host-b held {sorted(held)}; reclaimed {reclaimed_after:.2f} s after the crash")
    assert reclaimed_after <= STALE_AFTER + HEARTBEAT + CI_SLACK

    rows = _wait_done(hosts, ids, 60)
    runs = executions(log)
    assert set(runs) == set(ids), "some task never ran"
    doubled = {i for i, n in runs.items() if n > 1}
    assert doubled <= held, f"tasks host-b did not hold ran twice: {doubled - held}"
    assert max(runs.values()) <= 2
    assert held <= _reclaimed_by(started["host-a"]) | _reclaimed_by(started["host-c"])
    assert all(not rows[i]["worker_id"].startswith("host-b:") for i in held)
    assert started["host-a"].alive() and started["host-c"].alive()


# ---- the crashed host's own restart --------------------------------------------------------

def test_daemon_restarted_on_its_own_host_reclaims_at_once_by_pid_and_start_time(hosts, app):
    # The host (its namespaces) stays up; its daemon is SIGKILLed with its children, as
    # kill -9 or the OOM killer would. The restart, as systemd would do it, shares the
    # dead daemon's hostname and PID namespace, and with --stale-after 60 only the
    # pid and start time can tell it that the dead daemon is gone.
    machine = hosts.machine("host-a")
    first = hosts.host(None, "--concurrency", "2", "--stale-after", "60", on=machine)
    log = hosts.path("executions.txt")
    ids = app.work_on_host.starmap([(log, 1.0)] * 2)
    wait_for(lambda: len(read_lines(log)) == 2, 15, lambda: f"not started\n{hosts.dump()}")
    first.crash()
    assert machine.init.is_running(), "the host went down with its daemon"
    held = _running_on(hosts.db, "host-a")
    assert held == set(ids)
    second = hosts.host(None, "--concurrency", "2", "--stale-after", "60", on=machine)
    for tid in ids:
        second.wait_event("task.reclaimed", task_id=tid, timeout=5)
    _wait_done(hosts, ids, 20)
    assert executions(log) == {tid: 2 for tid in ids}
    assert _hosts_of(log) == {"host-a": 4}


def test_host_restarted_in_a_fresh_namespace_gets_its_tasks_back_after_stale_after(
        hosts, app):
    # A crashed host that comes back with the same hostname but a new PID namespace
    # (a container restarted, a machine rebooted) cannot judge the dead daemon's pid:
    # pids are per namespace. It must neither keep the tasks stuck nor take them at
    # once on a pid that means nothing here: they come back once the restarted daemon
    # has seen the dead one's heartbeat unchanged for --stale-after of its own time.
    stale_after = 3.0
    first = hosts.host("host-a", "--concurrency", "2", "--stale-after", stale_after)
    up_since = time.monotonic()
    log = hosts.path("executions.txt")
    ids = app.work_on_host.starmap([(log, 2.0)] * 2)
    wait_for(lambda: len(read_lines(log)) == 2, 15, lambda: f"not started\n{hosts.dump()}")
    # Both daemons are pid 1 of their namespaces: start times more than a second apart
    # keep the new one from mistaking its own pid 1 for the dead daemon.
    time.sleep(max(0.0, 1.2 - (time.monotonic() - up_since)))
    crashed_at = time.monotonic()
    first.crash()
    second = hosts.host("host-a", "--concurrency", "2", "--stale-after", stale_after)
    ready_after = time.monotonic() - crashed_at
    for tid in ids:
        second.wait_event("task.reclaimed", task_id=tid, timeout=stale_after + 10)
    reclaimed_after = time.monotonic() - crashed_at
    print(f"restarted {ready_after:.2f} s and reclaimed {reclaimed_after:.2f} s after the "
          f"crash; PID namespace {'reused' if second.namespace == first.namespace else 'new'}")
    # A daemon that has just started watches a heartbeat for a full stale-after of its
    # own before it judges by it (no wall clock: liteqd/liveness.py).
    assert reclaimed_after <= ready_after + stale_after + HEARTBEAT + CI_SLACK
    if second.namespace != first.namespace:
        # Not at once: its last heartbeat came at most one interval before the crash.
        # (When the kernel gives the new namespace the dead one's number, the pids
        # are comparable again, and an at-once reclaim is right.)
        assert reclaimed_after >= stale_after - HEARTBEAT - 0.2
    _wait_done(hosts, ids, 20)
    assert executions(log) == {tid: 2 for tid in ids}


def test_live_daemons_with_one_hostname_in_two_pid_namespaces_leave_each_other_alone(
        hosts, app):
    # Containers with the host's name (host networking) run daemons with the same
    # hostname, each pid 1 of its own namespace. Judged by pid, each looked dead to the
    # other (its pid 1 is another process), and a running task was taken from its
    # live daemon and run twice.
    first = hosts.host("twin", "--concurrency", "1", "--stale-after", "60")
    log = hosts.path("executions.txt")
    release = hosts.path("release")  # the task runs until the checks below are done
    tid = app.work_on_host_until.delay(log, release)
    wait_for(lambda: read_lines(log), 15, lambda: f"not started\n{hosts.dump()}")
    time.sleep(1.1)  # start times more than a second apart: they cannot be mistaken
    second = hosts.host("twin", "--concurrency", "1", "--stale-after", "60")
    assert second.namespace != first.namespace
    time.sleep(4 * HEARTBEAT)
    first_id = first.events("daemon.ready")[0]["worker_id"]
    row = task_rows(hosts.db, [tid])[tid]
    assert (row["status"], row["worker_id"], row["attempts"]) == ("running", first_id, 1)
    assert not second.events("task.reclaimed")
    open(release, "w").close()
    _wait_done(hosts, [tid], 60)
    assert executions(log) == {tid: 1}
    assert not first.events("task.reclaimed")
    assert {first_id, second.events("daemon.ready")[0]["worker_id"]} <= _worker_ids()


# ---- a frozen host --------------------------------------------------------------------------

def test_frozen_host_its_tasks_run_elsewhere_its_late_outcomes_are_refused(hosts, app):
    a = hosts.host("host-a", "--concurrency", "2")
    log = hosts.path("executions.txt")
    release = hosts.path("release")  # the tasks run until host-b has taken them over
    ids = [app.work_on_host_until.delay(log, release) for _ in range(2)]
    wait_for(lambda: len(read_lines(log)) == 2, 15, lambda: f"not started\n{hosts.dump()}")
    b = hosts.host("host-b", "--concurrency", "2")
    a.freeze()
    # host-b reclaims them once host-a's heartbeat is stale, and runs them to the end.
    for tid in ids:
        b.wait_event("task.reclaimed", task_id=tid, timeout=STALE_AFTER + 10)
    wait_for(lambda: len(read_lines(log)) == 4, 15, lambda: f"not rerun\n{hosts.dump()}")
    open(release, "w").close()
    rows = _wait_done(hosts, ids, 20)
    assert all(rows[i]["worker_id"].startswith("host-b:") for i in ids)
    a_id = a.events("daemon.ready")[0]["worker_id"]
    assert a_id not in _worker_ids(), "host-a's stale row was not removed"
    finished = {i: (rows[i]["finished_at"], rows[i]["result"]) for i in ids}
    a.thaw()
    # Its children see the release too: their outcomes reach the database's guards.
    for tid in ids:
        ev = a.wait_event("task.outcome_refused", task_id=tid, timeout=15)
        assert "no longer running for this daemon (now done)" in ev["reason"], ev
    after = task_rows(hosts.db, ids)
    assert {i: (after[i]["finished_at"], after[i]["result"]) for i in ids} == finished
    assert all(after[i]["worker_id"] == rows[i]["worker_id"] for i in ids)
    assert executions(log) == {tid: 2 for tid in ids}
    assert _hosts_of(log) == {"host-a": 2, "host-b": 2}
    # It carries on: its worker row (deleted by host-b's reclaim) is back, and with
    # host-b gone it runs new work.
    wait_for(lambda: a_id in _worker_ids(), 10, lambda: f"host-a never heartbeat again\n{hosts.dump()}")
    assert b.ctl("shutdown").returncode == 0
    b.wait(timeout=20)
    fresh = app.work_on_host.starmap([(log, 0.0)] * 5)
    _wait_done(hosts, fresh, 20)
    assert _hosts_of(log, set(fresh)) == {"host-a": 5}
    assert a.alive()
    assert not a.events("daemon.fatal")


# ---- status --all and scale across hosts ---------------------------------------------------

def test_status_all_from_one_host_lists_every_host_and_scale_changes_only_one(hosts, app):
    started = {name: hosts.host(name, "--concurrency", "2") for name in NAMES}
    log = hosts.path("executions.txt")
    ids = app.work_on_host.starmap([(log, 0.01)] * 600)
    here = started["host-a"]

    def listed(sizes):
        out = here.run_here([LITEQCTL, "--db", hosts.db, "status", "--all", "--json"])
        assert out.returncode == 0, out.stderr
        rows = {r["hostname"]: r for r in json.loads(out.stdout)}
        return rows if {h: r["concurrency"] for h, r in rows.items()} == sizes else None
    rows = wait_for(lambda: listed(dict.fromkeys(NAMES, 2)), 15,
                    lambda: f"status --all never listed the three hosts\n{hosts.dump()}")
    assert all(r["pid"] == 1 for r in rows.values())  # each is its namespace's init
    assert all(0 <= r["heartbeat_age_s"] < 5 for r in rows.values())
    text = here.run_here([LITEQCTL, "--db", hosts.db, "status", "--all"])
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].split()[0] == "HOST"
    assert {line.split()[0] for line in text.stdout.splitlines()[1:]} == set(NAMES)

    # Scale host-b, from host-b, in the middle of the drain.
    out = started["host-b"].ctl("scale", "3")
    assert out.returncode == 0, out.stderr
    assert "now has 3 children" in out.stdout
    wait_for(lambda: listed({"host-a": 2, "host-b": 3, "host-c": 2}), 15,
             lambda: f"status --all never showed host-b at 3\n{hosts.dump()}")
    for name, h in started.items():
        st = json.loads(h.ctl("status", "--json").stdout)
        assert len(st["pools"][0]["children"]) == (3 if name == "host-b" else 2), name
        assert len(h.workers()) == (3 if name == "host-b" else 2), name
    _wait_done(hosts, ids, 60)
    runs = executions(log)
    assert set(runs) == set(ids) and set(runs.values()) == {1}


# ---- no secrets shown ------------------------------------------------------------------------

PASSWORD = "s3cret-Pa55"


def _with_password(url, port=None):
    """The URL with user root and PASSWORD (the shared server trusts any password)."""
    scheme, rest = url.split("://", 1)
    rest = rest.split("@", 1)[1] if "@" in rest.split("/", 1)[0] else rest
    if port is not None:
        host, tail = rest.split("/", 1)
        rest = f"{host.rsplit(':', 1)[0]}:{port}/{tail}"
    return f"{scheme}://root:{PASSWORD}@{rest}"


def test_a_password_in_the_url_is_shown_nowhere(hosts, app, monkeypatch):
    url = _with_password(hosts.db)
    d = hosts.start("--concurrency", "2", "--db", url, env={"LITEQ_DB": url})
    log = hosts.path("executions.txt")
    ids = app.work_on_host.starmap([(log, 0.0)] * 3)
    _wait_done(hosts, ids, 20)
    seen = {}

    # Process titles, as ps shows them, once the daemon has set them.
    def titles():
        procs = [d.ps] + d.children()
        found = {p.pid: d.title(p) for p in procs}
        return found if all(t.startswith("liteqd: ") for t in found.values()) else None
    for pid, title in wait_for(titles, 10, "the titles were never set").items():
        seen[f"title of {pid}"] = title
    assert len(seen) == 3
    # The control channel, and the database's list of daemons.
    for args in (["status"], ["status", "--json"], ["--db", url, "status", "--all"],
                 ["--db", url, "status", "--all", "--json"]):
        out = hosts.liteqctl(*args)
        assert out.returncode == 0, out.stderr
        seen["liteqctl " + " ".join(args)] = out.stdout + out.stderr
    assert "db=postgresql://root@" in seen[f"title of {d.pid}"]
    # The web panel.
    monitor = Monitor(hosts, "--db", url, "--token", "t").wait_listening()
    for path in ("/", "/pools"):
        code, _, body = monitor.request(path, headers={"Authorization": "Bearer t"})
        assert code == 200, body[:500]
        seen[f"GET {path}"] = body
    # A connection that fails: the error message, its repr and its whole traceback,
    # and the log of a daemon waiting for that server.
    nowhere = _with_password(hosts.db, port=_closed_port())
    waiting = hosts.start("--db", nowhere, env={"LITEQ_DB": nowhere}, ready=False)
    waiting.wait_event("db.unavailable")
    monkeypatch.setenv("LITEQ_DB", nowhere)
    backends.forget_backends()
    with pytest.raises(DatabaseError) as failed:
        app.work_on_host.delay(log)
    seen["str(error)"] = str(failed.value)
    seen["repr(error)"] = repr(failed.value)
    seen["traceback"] = "".join(traceback.format_exception(failed.value))
    # The logs, last: everything above has been logged by now.
    d.stop()
    waiting.stop()
    for daemon in (d, waiting):
        seen[f"{daemon.label} log"] = "\n".join(daemon.log_lines()) + daemon.stderr()
    seen["monitor log"] = monitor.stderr()
    shown = [where for where, text in seen.items() if PASSWORD in text]
    assert not shown, f"the password is shown in: {shown}\n" + "\n".join(
        f"--- {where}\n{seen[where][:2000]}" for where in shown)
    assert "daemon.ready" in seen[f"{d.label} log"]
    assert "db.unavailable" in seen[f"{waiting.label} log"]


def _closed_port() -> int:
    """A local TCP port where nothing listens (bound, then closed)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
