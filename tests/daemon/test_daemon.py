"""liteqd behaviour: running tasks, pools, titles, logs, settings, bad input, recycling, scaling.

Real daemons (subprocesses in their own session), real forked children, a real
database on each backend (conftest's `db`) and real signals; see
tests/support/daemon_helpers.py. Every process is SIGKILLed and reaped in teardown, and
every wait has a deadline.
"""

import json
import os
import signal
import subprocess
import textwrap
import time
from collections import Counter

import pytest

from liteq import backends
from liteq.serialization import encode_payload

from support import APPS
from support.daemon_helpers import APP, FAST_ARGS, PYTHON, Daemon
from support.processes import cpu_seconds, is_gone, read_lines, wait_for
from support.task_table import put_task, iso_seconds, wait_all, wait_status

LITEQD = os.path.join(os.path.dirname(PYTHON), "liteqd")
LITEQ = os.path.join(os.path.dirname(PYTHON), "liteq")


# ---- basic -------------------------------------------------------------------------------

def test_sync_and_async_tasks_run_and_store_results(daemons, app):
    d = daemons.start("--concurrency", "2")
    t_sync = app.add.delay(2, 3)
    t_async = app.async_mul.delay(4, 5)
    st_sync = wait_status(t_sync, daemons=daemons)
    st_async = wait_status(t_async, daemons=daemons)
    assert st_sync["status"] == "done", st_sync
    assert st_sync["result"] == 5
    assert st_sync["attempts"] == 1
    assert st_async["status"] == "done", st_async
    assert st_async["result"]["product"] == 20
    assert "EventLoop" in st_async["result"]["loop"]
    assert d.alive()


def test_liteq_worker_cli_runs_tasks_from_two_queues(daemons, app):
    # liteq 0.2's own command line, exactly as its README shows it (log format left on auto:
    # stdout is a file, so the log is JSON).
    d = daemons.start(cmd=[LITEQ, "worker", "--app", APP, "--queues", "default,reports",
                           "--concurrency", "2", "--timeout", "60"])
    assert len(d.wait_children(2)) == 2
    t_default = app.add.delay(1, 1)
    t_reports = app.report.delay("q3")
    assert wait_status(t_default, daemons=daemons)["result"] == 2
    st = wait_status(t_reports, daemons=daemons)
    assert st["status"] == "done" and st["queue"] == "reports"
    assert st["result"] == "report q3"
    assert d.stop() == 0


def test_worker_class_runs_a_task_and_exits_0_on_sigterm(daemons, app):
    script = daemons.path("run_worker.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(f"""\
            import sys
            sys.path.insert(0, {APPS!r})
            import daemon_app  # registers the tasks in this process
            from liteq.worker import Worker
            sys.exit(Worker(queues=["default", "reports"], concurrency=2).run())
            """))
    d = daemons.start(cmd=[PYTHON, script])
    assert len(d.wait_children(2)) == 2
    t1 = app.add.delay(20, 22)
    t2 = app.report.delay("w")
    assert wait_status(t1, daemons=daemons)["result"] == 42
    assert wait_status(t2, daemons=daemons)["result"] == "report w"
    assert d.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("case", ["no_tasks", "bad_database"])
def test_worker_class_raises_on_errors_so_the_script_fails(daemons, case):
    # It used to print the error and return 2, so a script that ends with
    # Worker(...).run(), as liteq 0.2's README does, exited 0.
    script = daemons.path("run_worker.py")
    setup = ("import sys\nsys.path.insert(0, %r)\nimport daemon_app\n" % APPS
             if case == "bad_database" else "")
    db = daemons.workdir if case == "bad_database" else daemons.db  # a directory
    with open(script, "w") as f:
        f.write(setup + "from liteq.worker import Worker\n"
                f"Worker(queues=['default'], concurrency=1, db={db!r}).run()\n")
    res = daemons.run([PYTHON, script], timeout=60)
    assert res.returncode != 0, (res.stdout, res.stderr)
    needle = "registers no tasks" if case == "no_tasks" else "is a directory"
    error = "ConfigError" if case == "no_tasks" else "DatabaseError"
    assert needle in res.stderr and error in res.stderr, res.stderr
    assert "child.spawned" not in res.stdout


def test_task_scheduled_one_second_ahead_starts_after_a_second(daemons, app):
    daemons.start("--concurrency", "1")
    t1 = app.add.schedule(1, 1, 2)
    t2 = app.add.apply_async((3, 4), countdown=1)
    for tid in (t1, t2):
        st = wait_status(tid, timeout=10, daemons=daemons)
        assert st["status"] == "done", st
        waited = iso_seconds(st["started_at"]) - iso_seconds(st["created_at"])
        assert 0.99 <= waited < 3.0, (tid, waited, st)


# ---- retries -----------------------------------------------------------------------------

def test_task_failing_twice_then_succeeding_ends_done_after_three_attempts(daemons, app):
    daemons.start("--concurrency", "1")
    counter = daemons.path("flaky.txt")
    tid = app.flaky.delay(counter, 2)
    st = wait_status(tid, daemons=daemons)
    assert st["status"] == "done", st
    assert st["attempts"] == 3
    assert st["result"] == 3
    assert len(read_lines(counter)) == 3


def test_task_without_retries_fails_once_with_error_and_traceback(daemons, app):
    d = daemons.start("--concurrency", "1")
    tid = app.always_fail.delay("the disk is on fire")
    st = wait_status(tid, daemons=daemons)
    assert st["status"] == "failed", st
    assert st["attempts"] == 1
    assert "ValueError: the disk is on fire" in st["error"]
    assert "Traceback (most recent call last)" in st["error"]
    assert "always_fail" in st["error"]  # the frame of the task function
    failed = d.wait_event("task.failed", task_id=tid)
    assert failed["attempt"] == 1 and not d.events("task.retrying", task_id=tid)


# ---- pools -------------------------------------------------------------------------------

def test_flood_on_one_pool_does_not_starve_another(daemons, app):
    d = daemons.start("--pool", "emails:emails:1", "--pool", "reports:reports:2")
    pools = d.events("daemon.starting")[0]["pools"]
    assert {p["name"]: p["size"] for p in pools} == {"emails": 1, "reports": 2}
    flood = [app.slow_report.delay(1.5) for _ in range(8)]
    wait_for(lambda: len(d.events("task.started", name="slow_report")) >= 2, 10)
    email = app.send_email.delay("a@example.com")
    st = wait_status(email, timeout=10, daemons=daemons)
    assert st["status"] == "done" and st["result"] == "sent to a@example.com"
    # The e-mail did not wait for the flood: most of the reports have not even started.
    rows = backends.get_backend().get_tasks(flood)
    waiting = [r for r in rows if r["status"] == "pending"]
    assert len(waiting) >= 4, [r["status"] for r in rows]
    email_pid = d.events("task.started", task_id=email)[0]["pid"]
    report_pids = {e["pid"] for e in d.events("task.started", name="slow_report")}
    assert email_pid not in report_pids


# ---- process titles ----------------------------------------------------------------------

def test_process_titles_show_supervisor_idle_and_running_children(daemons, app):
    d = daemons.start("--concurrency", "2")
    assert Daemon.title(d.ps).startswith("liteqd: supervisor")
    tid = app.slow.delay(3)
    started = d.wait_event("task.started", task_id=tid)

    def titles():
        got = {c.pid: Daemon.title(c) for c in d.workers()}
        running = [t for t in got.values() if t.endswith(f"running slow#{tid}")]
        idle = [t for t in got.values() if t.endswith(" idle")]
        return got if running and idle else None
    got = wait_for(titles, 5, message=f"titles never showed the running task: "
                   f"{[Daemon.title(c) for c in d.children()]}")
    assert got[started["pid"]] in (f"liteqd: worker 1 running slow#{tid}",
                                   f"liteqd: worker 2 running slow#{tid}")
    idle = [t for pid, t in got.items() if pid != started["pid"]]
    assert idle and idle[0] in ("liteqd: worker 1 idle", "liteqd: worker 2 idle")
    # Slots are numbered 1..N, one each.
    slots = sorted(t.split()[2] for t in got.values())
    assert slots == ["1", "2"]


def test_supervisor_title_counts_busy_children_of_each_pool(daemons, app):
    d = daemons.start("--concurrency", "2")
    d.wait_children(2)

    def title_is(expected):
        return wait_for(lambda: Daemon.title(d.ps) == expected, 10,
                        message=f"supervisor title {Daemon.title(d.ps)!r}, not {expected!r}")
    db = backends.identity_of(daemons.db)   # the queue's name, never a password
    title_is(f"liteqd: supervisor [default busy 0/2] db={db}")   # two idle children
    tid = app.slow.delay(2)
    d.wait_event("task.started", task_id=tid)
    title_is(f"liteqd: supervisor [default busy 1/2] db={db}")
    assert wait_status(tid, daemons=daemons)["status"] == "done"
    title_is(f"liteqd: supervisor [default busy 0/2] db={db}")
    assert d.stop() == 0


# ---- logs --------------------------------------------------------------------------------

def test_json_logs_carry_task_fields(daemons, app):
    d = daemons.start("--concurrency", "2")
    ok = app.add.delay(1, 2)
    bad = app.always_fail.delay("nope")
    wait_status(ok, daemons=daemons)
    wait_status(bad, daemons=daemons)
    assert d.stop() == 0
    lines = d.log_lines()
    assert len(lines) >= 6
    for line in lines:
        ev = json.loads(line)  # every line is one JSON object
        assert isinstance(ev, dict) and "event" in ev and "timestamp" in ev, line
    started = d.events("task.started", task_id=ok)
    done = d.events("task.succeeded", task_id=ok)
    assert len(started) == 1 and len(done) == 1
    for ev in (started[0], done[0]):
        assert ev["name"] == "add" and ev["queue"] == "default" and ev["attempt"] == 1
    assert isinstance(done[0]["duration_ms"], (int, float)) and done[0]["duration_ms"] >= 0
    failed = d.events("task.failed", task_id=bad)
    assert len(failed) == 1
    assert failed[0]["name"] == "always_fail" and failed[0]["attempt"] == 1
    assert failed[0]["queue"] == "default" and "duration_ms" in failed[0]
    assert "ValueError: nope" in failed[0]["error"]
    names = [json.loads(line)["event"] for line in lines]
    assert names[-1] == "daemon.stopped"
    for expected in ("daemon.starting", "child.spawned", "daemon.ready", "daemon.stopping",
                     "child.exited"):
        assert expected in names


# ---- settings ----------------------------------------------------------------------------

def test_liteq_concurrency_env_sets_the_number_of_children(daemons):
    # Through the `liteqd` console script this time.
    d = daemons.start(cmd=[LITEQD, "--app", APP, *FAST_ARGS], env={"LITEQ_CONCURRENCY": "3"})
    assert len(d.wait_children(3)) == 3
    assert len(d.events("child.spawned")) == 3
    assert d.events("daemon.starting")[0]["pools"][0]["size"] == 3


@pytest.mark.parametrize("args, env, needle", [
    ([], {"LITEQ_CONCURRENCY": "abc"}, "LITEQ_CONCURRENCY"),
    (["--concurrency", "0"], {}, "--concurrency"),
    (["--timeout", "0"], {}, "--timeout"),
    (["--concurrency", "two"], {}, "--concurrency"),
    ([], {"LITEQ_TIMEOUT": "-5"}, "LITEQ_TIMEOUT"),
])
def test_malformed_setting_exits_nonzero_naming_it(daemons, args, env, needle):
    proc = subprocess.run([PYTHON, "-m", "liteqd.cli", "--app", APP, "--log-format", "json",
                           *args], env=daemons.env(env), capture_output=True, text=True,
                          timeout=30, cwd=daemons.workdir, start_new_session=True)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "child.spawned" not in proc.stdout


# ---- a bad app ---------------------------------------------------------------------------

def _run_bad_app(daemons, app_path, timeout=5):
    d = daemons.make("--concurrency", "2", app=app_path).start()
    t0 = time.monotonic()
    code = d.wait(timeout)
    return d, code, time.monotonic() - t0


def test_missing_app_file_exits_nonzero_without_forking(daemons):
    missing = daemons.path("no_such_tasks.py")
    d, code, _ = _run_bad_app(daemons, missing)
    assert code != 0
    assert "no_such_tasks.py" in d.stderr() and "does not exist" in d.stderr()
    assert d.events("child.spawned") == []
    assert d.seen == {}


def test_app_that_raises_on_import_exits_nonzero_without_forking(daemons):
    bad = daemons.path("broken_tasks.py")
    with open(bad, "w") as f:
        f.write("from liteq import task\n\n@task\ndef fine():\n    return 1\n\n"
                "raise RuntimeError('the config server is down')\n")
    d, code, _ = _run_bad_app(daemons, bad)
    assert code != 0
    err = d.stderr()
    assert "broken_tasks.py" in err
    assert "RuntimeError: the config server is down" in err
    assert d.events("child.spawned") == []
    assert d.seen == {}


@pytest.mark.sqlite_only
def test_corrupt_database_file_exits_nonzero_with_a_clear_error(daemons, db_path):
    """SQLite only: the database is a file of garbage."""
    with open(db_path, "wb") as f:
        f.write(b"this is not a database\n" * 400)
    d, code, _ = _run_bad_app(daemons, APP)
    assert code != 0
    assert "not a usable SQLite database" in d.stderr() and "queue.db" in d.stderr()
    assert "Traceback" not in d.stderr()
    assert d.events("child.spawned") == []


# ---- bad rows ----------------------------------------------------------------------------

def test_unknown_task_name_fails_at_once_and_others_still_run(daemons, app):
    d = daemons.start("--concurrency", "2")
    store = backends.get_backend()
    ghost = put_task(store, "no_such_task", encode_payload("no_such_task", [1], {}),
                          max_retries=2, retry_delay=0.05, retry_backoff=1.0)
    others = [app.add.delay(i, i) for i in range(5)]
    st = wait_status(ghost, daemons=daemons)
    assert st["status"] == "failed", st
    assert st["attempts"] == 1  # a retry cannot fix it (max_retries=2 notwithstanding)
    assert "UnknownTask" in st["error"] and "'no_such_task'" in st["error"]
    assert "not retried" in st["error"]
    assert d.events("task.retrying", task_id=ghost) == []
    rows = wait_all(others, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values())
    assert d.alive()


def test_arguments_that_no_longer_match_fail_naming_the_function(daemons, app):
    d = daemons.start("--concurrency", "1")
    store = backends.get_backend()
    tid = put_task(store, "add", encode_payload("add", [1], {"c": 3}), max_retries=0)
    st = wait_status(tid, daemons=daemons)
    assert st["status"] == "failed", st
    assert "ArgumentMismatch" in st["error"]
    assert "add(a, b)" in st["error"]
    assert wait_status(app.add.delay(1, 1))["result"] == 2
    assert d.alive()


def test_non_json_return_value_fails_with_a_clear_error(daemons, app):
    d = daemons.start("--concurrency", "1")
    tid = app.returns_object.delay()
    st = wait_status(tid, daemons=daemons)
    assert st["status"] == "failed", st
    assert st["attempts"] == 1
    assert "JSON" in st["error"] and "object" in st["error"]
    assert st["result"] is None
    assert d.alive()


def test_daemon_timeout_applies_to_tasks_without_their_own(daemons, app):
    d = daemons.start("--concurrency", "1", "--timeout", "1")
    store = backends.get_backend()
    tid = put_task(store, "slow", encode_payload("slow", [60], {}), max_retries=0)
    st = wait_status(tid, timeout=10, daemons=daemons)
    assert st["status"] == "failed", st
    assert "timed out after 1 s" in st["error"]
    # The row is written before that loop turn's log lines: wait for the event.
    assert d.wait_event("task.failed", task_id=tid)["timed_out"] is True
    assert wait_status(app.add.delay(1, 2), daemons=daemons)["result"] == 3


# ---- idle CPU ----------------------------------------------------------------------------

def test_idle_daemon_does_not_busy_wait(daemons):
    d = daemons.start("--concurrency", "2")
    time.sleep(1.0)  # settle after start-up
    procs = [d.ps] + d.children()
    before = [cpu_seconds(p) for p in procs]
    time.sleep(2.0)
    after = [cpu_seconds(p) for p in procs]
    used = [round(a - b, 3) for a, b in zip(after, before)]
    assert used[0] < 0.2, f"supervisor used {used[0]} s of CPU in 2 s idle"
    assert all(u < 0.2 for u in used[1:]), f"children used {used[1:]} s of CPU in 2 s idle"
    assert d.alive()


# ---- recycling ---------------------------------------------------------------------------

def test_max_tasks_per_child_recycles_children_and_runs_every_task_once(daemons, app):
    d = daemons.start("--concurrency", "2", "--max-tasks-per-child", "5")
    log = daemons.path("executions.txt")
    ids = [app.record.delay(log, n) for n in range(30)]
    rows = wait_all(ids, timeout=30, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values())
    runs = [line.split() for line in read_lines(log)]
    counts = Counter(int(n) for n, _ in runs)
    assert sorted(counts) == list(range(30))
    assert set(counts.values()) == {1}, {n: c for n, c in counts.items() if c != 1}
    per_pid = Counter(pid for _, pid in runs)
    assert len(per_pid) > 2, per_pid
    assert max(per_pid.values()) <= 5, per_pid
    assert d.events("child.recycling", reason="max_tasks")
    assert len(d.wait_children(2)) == 2


def test_max_memory_per_child_replaces_the_child_and_loses_nothing(daemons, app):
    d = daemons.start("--concurrency", "1", "--max-memory-per-child", "150")
    log = daemons.path("executions.txt")
    before = [app.record.delay(log, n) for n in range(3)]
    big = app.hog.delay(300)
    after = [app.record.delay(log, n) for n in range(3, 8)]
    rows = wait_all(before + [big] + after, timeout=30, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    assert rows[big]["attempts"] == 1
    counts = Counter(int(line.split()[0]) for line in read_lines(log))
    assert counts == Counter(range(8))
    recycled = d.wait_event("child.recycling", reason="max_memory")
    hog_pid = d.events("task.started", task_id=big)[0]["pid"]
    assert recycled["pid"] == hog_pid
    assert recycled["rss_bytes"] > 150 * 1024 * 1024
    wait_for(lambda: is_gone(hog_pid), 10)
    # Tasks after the hog ran in the fresh child.
    later_pids = {int(line.split()[1]) for line in read_lines(log)
                  if int(line.split()[0]) >= 3}
    assert hog_pid not in later_pids
    assert len(d.wait_children(1)) == 1


# ---- scaling with signals ----------------------------------------------------------------

def test_sigttin_adds_and_sigttou_removes_a_child(daemons, app):
    d = daemons.start("--concurrency", "2")
    first = d.wait_children(2)
    d.send(signal.SIGTTIN)
    three = d.wait_children(3)
    assert first < three
    assert d.wait_event("pool.scaled", size=3)["previous"] == 2
    d.send(signal.SIGTTOU)
    d.wait_event("pool.scaled", size=2)
    two = d.wait_children(2)
    assert two < three
    d.send(signal.SIGTTOU)
    d.wait_event("pool.scaled", size=1)
    assert len(d.wait_children(1)) == 1
    assert wait_status(app.add.delay(2, 2), daemons=daemons)["result"] == 4
    assert d.alive()
