"""The cron scheduler: registration, exactly-once firing, time zones, the loop, the CLI.

Every test that touches the queue runs on each backend (conftest's `db`); multi-process
tests fork real processes and kill whatever is left in `finally`.
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from liteq import core, register_schedule as top_level_register, backends, task
from liteq import scheduler
from liteq.app_loader import load_app
from liteq.errors import ConfigError
from liteq.scheduler import (Scheduler, disable_schedule, enable_schedule, fire_due,
                             list_schedules, next_fire_time, next_run_after,
                             register_schedule)

from support import REPO

UTC = ZoneInfo("UTC")


@pytest.fixture
def sched_db(db, clean_registry):
    """conftest's `db` (each backend) with the scheduler's registration cache cleared
    and the task registry restored afterwards."""
    scheduler._registered.clear()
    try:
        yield db
    finally:
        scheduler._registered.clear()


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _set_next_run(name, value):
    """Move a schedule's next_run through the storage compare-and-set (no SQL here)."""
    store = backends.get_backend()
    row = store.get_schedule(name)
    assert store.fire_schedule(row["id"], row["next_run"], value, []) == []


def _drive(name, start_ts, count):
    """Fire `name` `count` times from start_ts; returns the successive next_run values."""
    store = backends.get_backend()
    _set_next_run(name, start_ts)
    out = []
    at = start_ts
    for _ in range(count):
        fire_due(at=at)
        at = store.get_schedule(name)["next_run"]
        out.append(at)
    return out


def _tasks(name):
    return backends.get_backend().find_tasks(name=name, limit=100000)


# ---- exactly once across processes -------------------------------------------

def _fire_loop(deadline, last_at):
    code = 0
    try:
        while time.time() < deadline:
            at = time.time()
            fire_due(at=at)
            last_at.value = at
            time.sleep(0.05)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        # Skip the parent's atexit hooks and finalizers inherited through fork.
        os._exit(code)


def test_three_schedulers_fire_each_occurrence_exactly_once(sched_db):
    @task()
    def tick():
        pass

    # croniter's optional seconds field is the 6th: every second.
    register_schedule(tick, "* * * * * */1", catchup="all")
    first = backends.get_backend().get_schedule("tick")["next_run"]
    ctx = multiprocessing.get_context("fork")
    deadline = time.time() + 4.5
    last = [ctx.Value("d", 0.0) for _ in range(3)]
    procs = [ctx.Process(target=_fire_loop, args=(deadline, v)) for v in last]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.time()) + 15)
        assert [p.exitcode for p in procs] == [0, 0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    # Every occurrence up to the latest moment any scheduler checked was fired
    # (that check saw it due, or found it already taken), and none after it.
    horizon = max(v.value for v in last)
    it = croniter("* * * * * */1", datetime.fromtimestamp(first - 1, UTC))
    expected = []
    t = it.get_next(float)
    while t <= horizon:
        expected.append(t)
        t = it.get_next(float)
    assert expected[0] == first and len(expected) >= 3
    run_ats = sorted(r["run_at"] for r in _tasks("tick"))
    assert len(run_ats) == len(set(run_ats)), "an occurrence was enqueued twice"
    assert run_ats == expected


# ---- next-run computation ----------------------------------------------------------

START = datetime(2024, 2, 27, 13, 7, 30, tzinfo=UTC)  # spans a leap day and month ends


@pytest.mark.parametrize("expr", [
    "0 */2 * * *",
    "0 9 * * 1",
    "*/5 * * * *",
    "0 0 1 * *",
    "0 0 L * *",          # last day of the month
    "0 9 * * 1#2",        # second Monday
    "0 0 * * L5",         # last Friday
    "*/15 9-17 * * mon-fri",
    "@daily",
    "0 12 1,15 * *",
    "* * * * * */10",     # seconds field
])
def test_next_runs_match_croniter(sched_db, expr):
    register_schedule("some.task", expr, name="s", tz="UTC")
    it = croniter(expr, START)
    expected = [it.get_next(float) for _ in range(6)]
    assert next_run_after(expr, START, tz="UTC") == expected[0]
    assert _drive("s", START.timestamp(), 6) == expected


def test_every_two_hours_is_not_hourly_and_weekday_is_honoured(sched_db):
    register_schedule("some.task", "0 */2 * * *", name="two", tz="UTC")
    runs = _drive("two", START.timestamp(), 8)
    assert {b - a for a, b in zip(runs, runs[1:])} == {7200.0}
    assert all(datetime.fromtimestamp(t, UTC).hour % 2 == 0 for t in runs)

    register_schedule("some.task", "0 9 * * 1", name="monday", tz="UTC")
    for t in _drive("monday", START.timestamp(), 4):
        d = datetime.fromtimestamp(t, UTC)
        assert (d.weekday(), d.hour, d.minute) == (0, 9, 0)


def test_zone_is_used_and_defaults_to_local(sched_db, monkeypatch):
    register_schedule("some.task", "0 9 * * *", name="ny", tz="America/New_York")
    row = backends.get_backend().get_schedule("ny")
    assert datetime.fromtimestamp(row["next_run"], ZoneInfo("America/New_York")).hour == 9

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    register_schedule("some.task", "0 2 * * *", name="local")
    row = backends.get_backend().get_schedule("local")
    assert row["tz"] is None
    local = datetime.fromtimestamp(row["next_run"], ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (2, 0)

    with pytest.raises(ValueError, match="Mars/Olympus"):
        register_schedule("some.task", "0 2 * * *", name="bad", tz="Mars/Olympus")


# ---- DST ---------------------------------------------------------------------------

def _local(ts, tz):
    return datetime.fromtimestamp(ts, ZoneInfo(tz))


@pytest.mark.parametrize("start", [datetime(2024, 3, 28), datetime(2024, 10, 24)])
def test_dst_daily_fixed_time_fires_once_per_day(sched_db, start):
    tz = "Europe/Berlin"
    register_schedule("some.task", "30 2 * * *", name="nightly", tz=tz)
    runs = _drive("nightly", start.replace(tzinfo=ZoneInfo(tz)).timestamp(), 7)
    assert all(b > a for a, b in zip(runs, runs[1:]))
    days = [_local(t, tz).date() for t in runs]
    # One run per local day: none skipped when 02:30 does not exist (spring),
    # none doubled when 02:30 happens twice (autumn).
    assert days == sorted(set(days)) and (days[-1] - days[0]).days == 6
    assert all(_local(t, tz).hour in (2, 3) for t in runs)


@pytest.mark.parametrize("start", [datetime(2024, 3, 9, 20), datetime(2024, 11, 2, 20)])
def test_dst_hourly_fires_every_real_hour(sched_db, start):
    tz = "America/New_York"
    register_schedule("some.task", "0 * * * *", name="hourly", tz=tz)
    runs = _drive("hourly", start.replace(tzinfo=ZoneInfo(tz)).timestamp(), 12)
    assert {b - a for a, b in zip(runs, runs[1:])} == {3600.0}
    assert all(_local(t, tz).minute == 0 for t in runs)


# ---- downtime catch-up ---------------------------------------------------------------

def test_downtime_coalesces_missed_runs_into_one(sched_db):
    register_schedule("some.task", "*/5 * * * *", name="c", tz="UTC")
    store = backends.get_backend()
    upcoming = store.get_schedule("c")["next_run"]
    _set_next_run("c", upcoming - 7 * 300)  # seven occurrences missed
    ids = fire_due(at=upcoming - 1)
    assert len(ids) == 1
    assert store.get_task(ids[0])["run_at"] == upcoming - 300  # stamped with the latest
    assert store.get_schedule("c")["next_run"] == upcoming
    assert fire_due(at=upcoming - 1) == []


def test_downtime_catchup_all_enqueues_each_missed_run_capped(sched_db):
    register_schedule("some.task", "*/5 * * * *", name="a", tz="UTC", catchup="all")
    store = backends.get_backend()
    upcoming = store.get_schedule("a")["next_run"]
    _set_next_run("a", upcoming - 7 * 300)
    ids = fire_due(at=upcoming - 1)
    assert [store.get_task(i)["run_at"] for i in ids] == [upcoming - k * 300
                                                          for k in range(7, 0, -1)]
    assert store.get_schedule("a")["next_run"] == upcoming

    _set_next_run("a", upcoming - 250 * 300)
    ids = fire_due(at=upcoming - 1)
    assert len(ids) == scheduler.MAX_CATCHUP
    assert [store.get_task(i)["run_at"] for i in ids] == [
        upcoming - k * 300 for k in range(scheduler.MAX_CATCHUP, 0, -1)]


# ---- registration --------------------------------------------------------------------

def test_register_is_idempotent_and_updates_in_place(sched_db):
    @task()
    def report(n):
        pass

    ids = {register_schedule(report, "0 2 * * *", 1) for _ in range(3)}
    ids.add(top_level_register(report, "0 2 * * *", 1))  # the lazy liteq.register_schedule
    assert len(ids) == 1
    assert len(list_schedules()) == 1
    store = backends.get_backend()
    _set_next_run("report", 1234.0)

    with pytest.warns(RuntimeWarning, match="name="):
        assert register_schedule(report, "0 2 * * *", 2, queue="q") in ids
    row = store.get_schedule("report")
    assert (row["next_run"], row["queue"]) == (1234.0, "q")  # same timing: kept
    assert list_schedules()[0]["args"] == [2]

    with pytest.warns(RuntimeWarning):
        assert register_schedule(report, "0 3 * * *", 2, queue="q") in ids
    row = store.get_schedule("report")
    assert row["cron_expr"] == "0 3 * * *" and row["next_run"] > time.time()
    assert len(list_schedules()) == 1

    assert register_schedule(report, "0 4 * * *", 3, name="report-4am") not in ids
    assert sorted(s["name"] for s in list_schedules()) == ["report", "report-4am"]


def test_register_on_import_in_two_processes_keeps_one_row(sched_db, tmp_path):
    (tmp_path / "sched_app.py").write_text(textwrap.dedent("""
        from liteq import task, register_schedule

        @task(queue="reports")
        def nightly(kind):
            return kind

        register_schedule(nightly, "0 2 * * *", "full", tz="UTC")
    """))
    cmd = [sys.executable, "-c", "import sched_app"]
    procs = []
    try:
        for _ in range(2):
            procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=_env(),
                                          stderr=subprocess.PIPE, text=True))
        for p in procs:
            _, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
        again = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True,
                               text=True, timeout=30)
        assert again.returncode == 0, again.stderr
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    rows = list_schedules()
    assert len(rows) == 1
    assert (rows[0]["name"], rows[0]["args"], rows[0]["cron_expr"]) == (
        "nightly", ["full"], "0 2 * * *")


@pytest.mark.parametrize("expr, reason", [
    ("61 * * * *", "out of range"),
    ("* * *", "3 field"),
    ("every day", "2 field"),
    ("0 0 31 2 *", "never matches"),
    ("0 0 * * 9", "out of range"),
    ("", "empty"),
])
def test_invalid_expression_raises_value_error(sched_db, expr, reason):
    with pytest.raises(ValueError) as info:
        register_schedule("some.task", expr, name="bad")
    assert repr(" ".join(expr.split())) in str(info.value) and reason in str(info.value)
    assert list_schedules() == []


def test_bad_arguments_and_options_are_rejected(sched_db):
    with pytest.raises(TypeError, match="positional argument 0"):
        register_schedule("some.task", "* * * * *", object())
    with pytest.raises(TypeError, match="'when'"):
        register_schedule("some.task", "* * * * *", when=memoryview(b"x"))
    with pytest.raises(ValueError, match="catchup"):
        register_schedule("some.task", "* * * * *", catchup="sometimes")
    with pytest.raises(TypeError, match="@task"):
        register_schedule(lambda: None, "* * * * *")
    assert list_schedules() == []


# ---- firing ---------------------------------------------------------------------------

def test_fired_task_uses_task_settings_unless_overridden(sched_db):
    @task(queue="mail", priority=4, max_retries=6, timeout=9, retry_delay=2.5)
    def send(to):
        pass

    register_schedule(send, "*/5 * * * *", "a@x", tz="UTC")
    register_schedule(send, "*/5 * * * *", "b@x", name="urgent", queue="fast",
                      priority=9, max_retries=0, tz="UTC")
    register_schedule("not.here", "*/5 * * * *", name="ghost", tz="UTC")
    at = backends.get_backend().get_schedule("send")["next_run"]
    ids = fire_due(at=at)
    assert len(ids) == 3
    rows = {r["queue"]: r for r in backends.get_backend().get_tasks(ids)}
    mail, fast, ghost = rows["mail"], rows["fast"], rows["default"]
    assert (mail["priority"], mail["max_retries"], mail["timeout"], mail["retry_delay"]) == (
        4, 6, 9, 2.5)
    assert (fast["priority"], fast["max_retries"], fast["timeout"]) == (9, 0, 9)
    assert (ghost["name"], ghost["priority"], ghost["max_retries"], ghost["timeout"]) == (
        "not.here", 0, 3, None)
    assert '"b@x"' in fast["payload"]


def test_schedule_whose_task_raises_keeps_firing(sched_db):
    @task(max_retries=0)
    def flaky():
        raise RuntimeError("boom")

    register_schedule(flaky, "* * * * * *", tz="UTC")  # every second
    store = backends.get_backend()
    first = store.get_schedule("flaky")["next_run"]
    [tid] = fire_due(at=first)
    time.sleep(max(0.0, first - time.time()) + 0.01)  # until its run comes due
    [claimed] = store.claim("w1", ["default"], 1)
    try:
        core.TASK_REGISTRY[claimed["name"]].fn()
    except RuntimeError as exc:
        t = time.time()
        store.record_outcomes("w1", failed=[(claimed["id"], repr(exc), t, t)])
    assert store.get_task(tid)["status"] == "failed"

    [tid2] = fire_due(at=first + 300)
    assert tid2 != tid and store.get_task(tid2)["status"] == "pending"
    assert store.get_task(tid2)["run_at"] == first + 300


def test_corrupt_schedule_row_is_parked_not_retried(sched_db, capsys):
    # A row whose expression this croniter rejects (say, written by another
    # version) must not crash or spin a scheduler.
    store = backends.get_backend()
    store.upsert_schedule("broken", "x", "61 * * * *", '{"args":[],"kwargs":{}}', None,
                          None, None, None, "coalesce", True, 100.0)
    register_schedule("some.task", "*/5 * * * *", name="fine", tz="UTC")
    ok_at = store.get_schedule("fine")["next_run"]
    assert len(fire_due(at=ok_at)) == 1
    assert "broken" in capsys.readouterr().err
    assert store.get_schedule("broken")["next_run"] is None
    assert next_fire_time() == ok_at + 300


# ---- enable / disable / list ---------------------------------------------------------

def test_enable_disable_by_name_and_id(sched_db):
    register_schedule("some.task", "*/5 * * * *", name="one", tz="UTC")
    sid = register_schedule("some.task", "0 * * * *", name="two", tz="UTC")
    store = backends.get_backend()
    _set_next_run("one", 1000.0)  # disabled below for ages: long overdue

    assert disable_schedule("one") is True
    assert disable_schedule(sid) is True
    assert next_fire_time() is None
    assert fire_due() == []
    assert [s["enabled"] for s in list_schedules()] == [False, False]

    assert enable_schedule(store.get_schedule("one")["id"]) is True
    assert store.get_schedule("one")["next_run"] > time.time()  # no backlog
    assert enable_schedule("two") is True
    assert enable_schedule(str(sid)) is True  # an id given as text, as from a CLI
    assert next_fire_time() == min(r["next_run"] for r in store.list_schedules())
    assert disable_schedule("nope") is False and enable_schedule(999) is False


def test_an_operators_disable_survives_re_registration_at_import(sched_db):
    # The app registers at import; an operator disables; the app restarts and
    # registers again with the defaults: the schedule must stay disabled.
    register_schedule("some.task", "*/5 * * * *", name="nightly", tz="UTC")
    assert disable_schedule("nightly") is True
    register_schedule("some.task", "*/5 * * * *", name="nightly", tz="UTC")
    store = backends.get_backend()
    assert store.get_schedule("nightly")["enabled"] == 0
    assert fire_due(at=time.time() + 3600) == []
    # A new schedule starts enabled; explicit enabled=True/False still decide.
    register_schedule("some.task", "*/5 * * * *", name="fresh", tz="UTC")
    assert store.get_schedule("fresh")["enabled"] == 1
    register_schedule("some.task", "*/5 * * * *", name="nightly", tz="UTC", enabled=True)
    assert store.get_schedule("nightly")["enabled"] == 1
    assert store.get_schedule("nightly")["next_run"] > time.time()  # no backlog
    register_schedule("some.task", "*/5 * * * *", name="fresh", tz="UTC", enabled=False)
    assert store.get_schedule("fresh")["enabled"] == 0


def test_remove_schedule_deletes_the_row_and_leaves_its_tasks(sched_db):
    from liteq.scheduler import remove_schedule
    register_schedule("some.task", "* * * * * *", name="gone", tz="UTC")
    _set_next_run("gone", time.time() - 1)
    fired = fire_due()
    assert len(fired) == 1
    assert remove_schedule("gone") is True
    assert [s["name"] for s in list_schedules()] == []
    assert fire_due(at=time.time() + 60) == []
    assert backends.get_backend().get_task(fired[0]) is not None  # its task stays
    assert remove_schedule("gone") is False and remove_schedule(12345) is False


def test_list_schedules_keys(sched_db):
    register_schedule("some.task", "0 2 * * *", 1, flag=True, name="k", tz="UTC")
    [s] = list_schedules()
    for key in ("id", "name", "task_name", "cron_expr", "args", "kwargs", "queue",
                "enabled", "tz", "next_run", "last_run", "next_run_ts", "last_run_ts",
                "catchup", "priority", "max_retries"):
        assert key in s, key
    assert (s["task_name"], s["args"], s["kwargs"], s["enabled"], s["tz"]) == (
        "some.task", [1], {"flag": True}, True, "UTC")
    assert s["next_run"] == datetime.fromtimestamp(s["next_run_ts"]).astimezone().isoformat()
    assert s["last_run"] is None and s["last_run_ts"] is None
    fire_due(at=s["next_run_ts"])
    [s] = list_schedules()
    assert isinstance(s["last_run_ts"], float) and s["last_run"].startswith("20")


# ---- the Scheduler loop ---------------------------------------------------------------

def test_scheduler_run_in_thread_fires_and_stops(sched_db):
    register_schedule("some.task", "* * * * * *", name="every-second")
    lines = []
    # A long check interval: the loop must sleep until the next fire time, not it.
    sched = Scheduler(check_interval=60, log=lambda event, **f: lines.append(event))
    thread = threading.Thread(target=sched.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(_tasks("some.task")) < 2:
            time.sleep(0.05)
        assert len(_tasks("some.task")) >= 2
        assert "schedule.fired" in lines
    finally:
        sched.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_import_liteq_does_not_import_croniter(sched_db):
    code = ("import sys, liteq\n"
            "from liteq import task\n"
            "@task()\n"
            "def f(): pass\n"
            "f.delay()\n"
            "bad = [m for m in ('croniter', 'liteq.scheduler') if m in sys.modules]\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr


# ---- CLI and app loading ----------------------------------------------------------------

_CLI = "import sys; from liteq.cli import main; sys.exit(main(['scheduler', *sys.argv[1:]]))"


def test_cli_fires_and_exits_cleanly_on_sigterm(sched_db, tmp_path):
    app = tmp_path / "cli_app.py"
    app.write_text(textwrap.dedent("""
        from liteq import task, register_schedule

        @task(queue="cron")
        def ping():
            return "pong"

        register_schedule(ping, "* * * * * *")
    """))
    env = _env()
    env.pop("LITEQ_DB")  # the database comes from --db
    proc = subprocess.Popen([sys.executable, "-c", _CLI, "--app", str(app), "--interval", "1",
                             "--db", sched_db], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not _tasks("ping"):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert _tasks("ping")[0]["queue"] == "cron"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        # One JSON object per line (stdout is a pipe), with the fields of liteqd's events.
        events = [json.loads(line) for line in out.splitlines()]
        assert events[0]["event"] == "scheduler.started" and events[-1]["event"] == \
            "scheduler.stopped"
        fired = [e for e in events if e["event"] == "schedule.fired"]
        assert fired and fired[0]["name"] == "ping" and "task" not in fired[0]
        assert datetime.fromisoformat(fired[0]["next_run"]).tzinfo is not None
        assert all("timestamp" in e and e["level"] == "info" for e in events)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)


def test_cli_takes_the_app_from_liteq_app(sched_db, tmp_path):
    app = tmp_path / "env_app.py"
    app.write_text(textwrap.dedent("""
        from liteq import task, register_schedule

        @task()
        def tick():
            return 1

        register_schedule(tick, "* * * * * *")
    """))
    env = dict(_env(), LITEQ_APP=str(app), LITEQ_LOG_FORMAT="console")
    proc = subprocess.Popen([sys.executable, "-c", _CLI, "--interval", "1"], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not _tasks("tick"):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert _tasks("tick")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        # LITEQ_LOG_FORMAT=console: readable lines, not JSON.
        assert "schedule.fired" in out and not out.lstrip().startswith("{")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    env.pop("LITEQ_APP")
    out = subprocess.run([sys.executable, "-c", _CLI], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "no app given" in out.stderr and "LITEQ_APP" in out.stderr


def test_cli_reports_missing_or_broken_app(sched_db, tmp_path):
    missing = tmp_path / "nope" / "tasks.py"
    out = subprocess.run([sys.executable, "-c", _CLI, "--app", str(missing)], env=_env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert str(missing) in out.stderr and "does not exist" in out.stderr

    broken = tmp_path / "broken_app.py"
    broken.write_text("import liteq\nraise RuntimeError('app is broken here')\n")
    out = subprocess.run([sys.executable, "-c", _CLI, "--app", str(broken)], env=_env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "broken_app.py" in out.stderr and "app is broken here" in out.stderr


def test_load_app_file_and_module(clean_registry, tmp_path, monkeypatch):
    pkg = tmp_path / "pkgapp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "jobs.py").write_text("VALUE = 42\n")
    (tmp_path / "file_app.py").write_text("from pkgapp.jobs import VALUE\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = ("file_app", "pkgapp", "pkgapp.jobs")
    try:
        assert load_app(str(tmp_path / "file_app.py")).VALUE == 42
        assert load_app(str(tmp_path / "file_app.py")) is sys.modules["file_app"]
        assert load_app("pkgapp.jobs").VALUE == 42
        with pytest.raises(ConfigError, match="pkgapp.nothing"):
            load_app("pkgapp.nothing")
        with pytest.raises(ConfigError, match="does not exist"):
            load_app("missing_dir/tasks.py")
    finally:
        for name in names:
            sys.modules.pop(name, None)
