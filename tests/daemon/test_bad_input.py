"""Bad input: each case gets a clear error, and nothing is lost.

One test (or one parametrized group) per case of the bad-input checklist.
Some cases are also covered, in more depth, by tests/daemon/test_daemon.py, test_db.py and
test_task_api.py; here the row-level cases share one daemon run, and the start-up
cases are short-lived `liteqd` processes that must refuse to start.

Real databases (each backend: conftest's `db`; the file cases on SQLite alone), real
`liteqd` processes, a real read-only mount and a real full tmpfs where the machine
allows (root); see tests/support/daemon_helpers.py for the clean-up.
"""

import contextlib
import os
import sqlite3
import subprocess
import uuid

import pytest

import liteq
from liteq import control, backends
from liteq.serialization import encode_payload

from support import APPS
from support.daemon_helpers import PYTHON as PY
from support.task_table import (all_tasks, count_tasks, fresh_backend, put_task, status_counts,
                                task_row, wait_statuses)
from support.fault_helpers import FAULT_APP, executions

LIVE_DAEMON_LIMIT = 20  # seconds a refused start may take before the test calls it hung


@pytest.fixture
def app(fault_app):
    """This file's tasks: tests/apps/fault_app.py, run by the `lab` daemons."""
    return fault_app


def _liteqd(lab, *args, env=None, app_path=FAULT_APP, db=None):
    argv = [PY, "-m", "liteqd.cli", "--log-format", "json"]
    if app_path is not None:
        argv += ["--app", app_path]
    if db is not None:
        argv += ["--db", db]
    return lab.run(argv + [str(a) for a in args], env=env, timeout=LIVE_DAEMON_LIMIT)


def _assert_refused(res, *needles):
    """liteqd exited non-zero with a one-line error naming the problem, before forking."""
    assert res.returncode != 0, f"liteqd started anyway:\n{res.stdout}\n{res.stderr}"
    for needle in needles:
        assert needle in res.stderr, f"{needle!r} not in stderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    assert "child.spawned" not in res.stdout, res.stdout


def _pending_row(app):
    """A task waiting in the queue before a bad start: it must still be there after."""
    tid = app.add.delay(20, 22)
    backends.forget_backends()
    return tid


def _assert_untouched(lab, tid):
    row = task_row(lab.db, tid)
    assert (row["status"], row["attempts"]) == ("pending", 0), row


# ---- non-JSON args ---------------------------------------------------------------------------

def test_non_json_args_raise_type_error_naming_the_argument_and_write_nothing(lab, app):
    app.add.delay(1, 2)
    before = count_tasks(lab.db)
    cases = [
        (lambda: app.add.delay(1, object()), "positional argument 1"),
        (lambda: app.add.delay(a=1, b={1, 2}), "argument 'b'"),
        (lambda: app.add.delay(float("nan"), 1), "positional argument 0"),
        (lambda: app.add.apply_async((1, memoryview(b"bytes"))), "positional argument 1"),
        (lambda: app.add.apply_async((1, 2), {3: "x"}), "keyword 3"),
        (lambda: app.work.map(["ok", "ok", object(), "ok"]), "call 2"),
        (lambda: app.add.starmap([(1, 2), (3, lambda: 4)]), "call 1"),
        (lambda: app.add.schedule(60, 1, object()), "positional argument 1"),
    ]
    for call, needle in cases:
        with pytest.raises(TypeError) as info:
            call()
        msg = str(info.value)
        assert needle in msg and "JSON" in msg or needle in msg and "not a string" in msg, msg
        assert "'add'" in msg or "'work'" in msg, msg  # names the task too
    assert count_tasks(lab.db) == before, "a call that raised wrote a row"


# ---- bad rows: one daemon run ------------------------------------------------------------------

def test_bad_rows_fail_clearly_and_everything_else_runs(lab, app):
    """A non-JSON return value, an unknown task name, arguments that no longer match the
    function, a payload that is not JSON, and a negative scale request: each a clear
    error in the row (or the reply), and the good tasks around them all run once."""
    store = backends.get_backend()
    log = lab.path("executions.txt")
    quick = dict(retry_delay=0.01, retry_backoff=1.0)
    bad = {
        "result": app.returns_object.delay(),
        "unknown": put_task(store, "no_such_task", encode_payload("no_such_task", [1], {}),
                                 max_retries=1, **quick),
        "missing_arg": put_task(store, "add", encode_payload("add", [1], {}), max_retries=0),
        "extra_kwarg": put_task(store, "add", encode_payload("add", [1, 2], {"c": 3}),
                                     max_retries=0),
        "payload": put_task(store, "add", "{this is not json", max_retries=0),
    }
    good = app.work.starmap([(log,)] * 50)
    d = lab.daemon("--concurrency", "2")
    good += app.work.starmap([(log,)] * 50)
    with pytest.raises(control.ControlError, match="size"):
        control.scale(-1, path=lab.socket)
    rows = wait_statuses(lab.db, list(bad.values()) + good, timeout=30, dump=d.dump)
    err = {k: rows[v]["error"] for k, v in bad.items()}
    assert all(rows[v]["status"] == "failed" for v in bad.values()), rows
    assert "BadResult" in err["result"] and "JSON" in err["result"], err["result"]
    assert "object" in err["result"]
    assert rows[bad["result"]]["result"] is None
    assert "UnknownTask" in err["unknown"] and "'no_such_task'" in err["unknown"]
    assert "work" in err["unknown"]  # lists what is registered
    # No retry can fix an unknown name: it fails at its first attempt, and says so.
    assert rows[bad["unknown"]]["attempts"] == 1
    assert "not retried" in err["unknown"]
    for key in ("missing_arg", "extra_kwarg"):
        assert "ArgumentMismatch" in err[key] and "add(a, b)" in err[key], err[key]
    assert "missing a required argument: 'b'" in err["missing_arg"]
    assert "'c'" in err["extra_kwarg"]
    assert "BadPayload" in err["payload"] or "JSON" in err["payload"], err["payload"]
    assert all(rows[i]["status"] == "done" for i in good)
    runs = executions(log)
    assert sorted(runs) == sorted(good) and set(runs.values()) == {1}
    assert d.alive()
    assert len(d.workers()) == 2
    assert not d.events("child.exited", reason="crashed")
    assert control.status(include_queues=False, path=lab.socket)["pools"][0]["size"] == 2


# ---- a bad app -------------------------------------------------------------------------------

BROKEN_APPS = {
    "raises_on_import": ("from liteq import task\n\n@task\ndef fine():\n    return 1\n\n"
                         "raise RuntimeError('the config server is down')\n",
                         ["broken_app.py", "RuntimeError: the config server is down"]),
    "syntax_error": ("from liteq import task\n\ndef oops(:\n    pass\n",
                     ["broken_app.py", "SyntaxError"]),
    "no_tasks": ("X = 1\n", ["broken_app.py", "registers no tasks"]),
}


@pytest.mark.parametrize("case", ["missing_file", "missing_module", *BROKEN_APPS])
def test_bad_app_stops_liteqd_with_a_clear_error_and_touches_no_task(lab, app, case):
    tid = _pending_row(app)
    if case == "missing_file":
        path, needles = lab.path("no_such_tasks.py"), ["no_such_tasks.py", "does not exist"]
    elif case == "missing_module":
        path, needles = "no_such_pkg.tasks", ["no_such_pkg", "not found"]
    else:
        source, needles = BROKEN_APPS[case]
        path = lab.path("broken_app.py")
        with open(path, "w") as f:
            f.write(source)
    res = _liteqd(lab, "--concurrency", "2", app_path=path)
    _assert_refused(res, *needles)
    _assert_untouched(lab, tid)


# ---- a database path in a missing directory ----------------------------------------------------

@pytest.mark.sqlite_only
def test_database_in_a_missing_directory(lab, app, monkeypatch):
    """SQLite only: the database is a file whose directory does not exist."""
    missing = lab.path(os.path.join("no", "such", "dir"))
    db = os.path.join(missing, "queue.db")
    res = _liteqd(lab, "--concurrency", "1", db=db)
    _assert_refused(res, missing, "does not exist")
    monkeypatch.setenv("LITEQ_DB", db)
    backends.forget_backends()
    with pytest.raises(liteq.DatabaseError) as info:
        app.add.delay(1, 2)
    assert missing in str(info.value) and "does not exist" in str(info.value)
    with pytest.raises(liteq.DatabaseError, match="does not exist"):
        app.work.map(["x"])
    assert not os.path.exists(os.path.dirname(os.path.dirname(missing)))  # nothing created


# ---- a file that is not a database ---------------------------------------------------------------

@pytest.mark.sqlite_only
def test_file_that_is_not_a_database_is_refused_and_left_untouched(lab, app, db_path):
    """SQLite only: the database is a file of garbage."""
    garbage = b"GIF89a not a database \x00\xff" * 300
    with open(db_path, "wb") as f:
        f.write(garbage)
    res = _liteqd(lab, "--concurrency", "1")
    _assert_refused(res, db_path, "not a usable SQLite database")
    backends.forget_backends()
    for call in (lambda: app.add.delay(1, 2), lambda: app.work.map(["x"]),
                 lambda: liteq.get_task_status(1)):
        with pytest.raises(liteq.DatabaseError) as info:
            call()
        assert db_path in str(info.value) and "not a usable SQLite database" in str(info.value)
    with open(db_path, "rb") as f:
        assert f.read() == garbage, "the file was changed"


# ---- a read-only database -----------------------------------------------------------------------

PRODUCER = r'''
import sys
sys.path.insert(0, sys.argv[1])
import liteq, fault_app
try:
    fault_app.add.delay(1, 2)
except liteq.DatabaseError as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(3)
print("enqueued")
'''


@contextlib.contextmanager
def _read_only(directory, mode):
    """Make `directory` (and the database in it) read-only for this test's processes."""
    db = os.path.join(directory, "queue.db")
    if mode == "mount":
        if os.geteuid() != 0:
            pytest.skip("a read-only bind mount needs root")
        res = subprocess.run(["mount", "--bind", directory, directory], capture_output=True,
                             text=True, timeout=10)
        if res.returncode != 0:
            pytest.skip(f"mount --bind does not work here: {res.stderr.strip()}")
        try:
            res = subprocess.run(["mount", "-o", "remount,bind,ro", directory],
                                 capture_output=True, text=True, timeout=10)
            if res.returncode != 0:
                pytest.skip(f"cannot remount read-only here: {res.stderr.strip()}")
            yield
        finally:
            subprocess.run(["umount", directory], capture_output=True, timeout=30)
    elif mode == "immutable":
        if os.geteuid() != 0:
            pytest.skip("chattr +i needs root")
        res = subprocess.run(["chattr", "+i", db], capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            pytest.skip(f"chattr +i does not work on this file system: {res.stderr.strip()}")
        try:
            subprocess.run(["chattr", "+i", directory], check=True, timeout=10)
            yield
        finally:
            subprocess.run(["chattr", "-i", directory], timeout=10)
            subprocess.run(["chattr", "-i", db], timeout=10)
    else:  # plain file modes: enough for anyone but root
        if os.geteuid() == 0:
            pytest.skip("root ignores file modes; the mount and immutable variants cover root")
        os.chmod(db, 0o444)
        os.chmod(directory, 0o555)
        try:
            yield
        finally:
            os.chmod(directory, 0o755)
            os.chmod(db, 0o644)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("mode", ["mount", "immutable", "modes"])
def test_read_only_database_gives_a_clear_error_and_is_left_untouched(lab, app, mode):
    """SQLite only: a read-only database file (and directory, for -wal and -shm)."""
    directory = lab.path("ro")
    os.mkdir(directory)
    db = os.path.join(directory, "queue.db")
    store = backends.open_backend(db)
    put_task(store, "add", encode_payload("add", [1, 2], {}))
    store.close()  # the last connection closes: -wal and -shm are gone
    assert not os.path.exists(db + "-wal")
    with open(db, "rb") as f:
        original = f.read()
    with _read_only(directory, mode):
        res = _liteqd(lab, "--concurrency", "1", db=db)
        _assert_refused(res, db, "read-only")
        res = lab.run([PY, "-c", PRODUCER, APPS], env={"LITEQ_DB": db}, timeout=30)
        assert res.returncode == 3, (res.stdout, res.stderr)
        assert "DatabaseError" in res.stdout and db in res.stdout, res.stdout
        assert "read-only" in res.stdout, res.stdout
        with open(db, "rb") as f:
            assert f.read() == original, "the read-only database was changed"
    rows = [(r["name"], r["status"]) for r in all_tasks(db)]
    assert rows == [("add", "pending")]


# ---- a full disk --------------------------------------------------------------------------------

FULL_PRODUCER = r'''
import os, resource, signal, sys
sys.path.insert(0, sys.argv[1])
import liteq, fault_app
# Past the limit write() fails with EFBIG instead of killing us with SIGXFSZ.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
db = os.environ["LITEQ_DB"]
limit = max(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p)) + 65536
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
for name, call in (("delay", lambda: fault_app.work.delay("y" * 2_000_000)),
                   ("map", lambda: fault_app.work.map(["y" * 1_000_000] * 5))):
    try:
        call()
        print(f"{name}: written")
    except liteq.DatabaseError as exc:
        print(f"{name}: {type(exc).__name__}: {exc}")
'''


def _fill(path):
    """Write a file until the file system is full; returns its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    size = 0
    try:
        while True:
            size += os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == 28, exc  # ENOSPC
    try:
        while True:  # the last partial block
            size += os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)
    return size


def _assert_consistent(db, earlier):
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = dict(conn.execute("SELECT id, payload FROM tasks").fetchall())
    finally:
        conn.close()
    for tid, payload in earlier.items():
        assert rows.get(tid) == payload, f"row {tid} changed"
    return rows


@pytest.mark.sqlite_only
def test_full_disk_rlimit_fsize_child_gets_a_clear_error(lab, app, db_path):
    """SQLite only: a file size limit just above the database file's size (where no tmpfs
    can be mounted, this is the full-disk case); the producer enqueues large payloads."""
    ids = app.work.starmap([(f"row {n}",) for n in range(50)])
    earlier = {r["id"]: r["payload"] for r in all_tasks(db_path)}
    backends.forget_backends()
    res = lab.run([PY, "-c", FULL_PRODUCER, APPS], timeout=60)
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(": ", 1) for line in res.stdout.splitlines())
    for name in ("delay", "map"):
        assert lines[name].startswith("DatabaseError: cannot write database"), res.stdout
        assert db_path in lines[name], res.stdout
    rows = _assert_consistent(db_path, earlier)
    assert sorted(rows) == sorted(ids), "a partial write is visible"
    tid = app.add.delay(1, 1)  # writable again without the limit
    assert liteq.get_task_status(tid)["status"] == "pending"


@pytest.mark.sqlite_only
def test_full_disk_tmpfs_clear_error_db_consistent_and_daemon_recovers(lab, app, monkeypatch):
    """SQLite only: the database file is on a full tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the RLIMIT_FSIZE variant covers this case")
    disk = lab.path("disk")
    os.mkdir(disk)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk],
                         capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        db = os.path.join(disk, "queue.db")
        monkeypatch.setenv("LITEQ_DB", db)
        backends.forget_backends()
        log = lab.path("executions.txt")
        d = lab.daemon("--concurrency", "2", "--db", db, env={"LITEQ_DB": db})
        first = app.work.starmap([(log,)] * 30)
        wait_statuses(db, first, "done", timeout=30, dump=d.dump)
        earlier = {r["id"]: r["payload"] for r in all_tasks(db)}

        _fill(os.path.join(disk, "filler"))
        with pytest.raises(liteq.DatabaseError) as info:
            app.work.delay("y" * 500_000)
        assert db in str(info.value) and "full" in str(info.value), info.value
        with pytest.raises(liteq.DatabaseError, match="full"):
            app.work.map(["y" * 200_000] * 5)
        # The daemon lives on through it, answering, retrying its writes.
        assert control.ping(path=lab.socket)["pong"] is True
        d.wait_event("db.retrying", timeout=10)
        assert d.alive()
        rows = _assert_consistent(db, earlier)
        assert sorted(rows) == sorted(first)

        os.unlink(os.path.join(disk, "filler"))
        later = app.work.starmap([(log,)] * 30)
        wait_statuses(db, later, "done", timeout=30, dump=d.dump)
        runs = executions(log)
        assert sorted(runs) == sorted(first + later) and set(runs.values()) == {1}
        assert d.alive()
        d.stop()
    finally:
        for daemon in lab.daemons:
            daemon.kill_everything()  # nothing may hold the mount open
        backends.forget_backends()
        subprocess.run(["umount", disk], capture_output=True, timeout=30)


# ---- malformed LITEQ_* values ------------------------------------------------------------------

SQLITE_VARIABLES = [("LITEQ_SYNC", "bogus"), ("LITEQ_BUSY_TIMEOUT", "x")]


def _assert_liteqd_refuses_variable(lab, app, var, value):
    tid = _pending_row(app)
    res = lab.run([PY, "-m", "liteqd.cli", "--app", FAULT_APP], env={var: value},
                  timeout=LIVE_DAEMON_LIMIT)
    _assert_refused(res, var, value)
    _assert_untouched(lab, tid)


@pytest.mark.parametrize("var, value", [
    ("LITEQ_CONCURRENCY", "abc"),
    ("LITEQ_TIMEOUT", "-1"),
    ("LITEQ_POOLS", "garbage"),
    ("LITEQ_KILL_GRACE", "soon"),
    ("LITEQ_MAX_TASKS_PER_CHILD", "-3"),
    ("LITEQ_NO_SCHEDULER", "maybe"),
    ("LITEQ_LOG_LEVEL", "loud"),
])
def test_malformed_liteq_variable_stops_liteqd_naming_it(lab, app, var, value):
    _assert_liteqd_refuses_variable(lab, app, var, value)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("var, value", SQLITE_VARIABLES)
def test_malformed_sqlite_variable_stops_liteqd_naming_it(lab, app, var, value):
    """SQLite only: these variables tune SQLite connections (PRAGMA synchronous, busy timeout)."""
    _assert_liteqd_refuses_variable(lab, app, var, value)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("var, value", SQLITE_VARIABLES)
def test_malformed_liteq_variable_refuses_delay_naming_it(lab, app, monkeypatch, var, value):
    """SQLite only: these variables tune SQLite connections (PRAGMA synchronous, busy timeout)."""
    app.add.delay(1, 1)
    before = count_tasks(lab.db)
    monkeypatch.setenv(var, value)
    backends.forget_backends()
    with pytest.raises(liteq.ConfigError, match=var):
        app.add.delay(1, 2)
    monkeypatch.delenv(var)
    assert count_tasks(lab.db) == before


# ---- an invalid cron expression -------------------------------------------------------------

@pytest.mark.parametrize("expr", ["not a cron", "61 * * * *", "*/0 * * * *", "* * *", ""])
def test_invalid_cron_expression_is_a_value_error_and_writes_nothing(lab, app, expr):
    backends.get_backend()  # the schema exists, so "nothing written" can be checked
    with pytest.raises(ValueError, match="cron"):
        liteq.register_schedule(app.add, expr, 1, 2, name=f"bad-{uuid.uuid4().hex[:6]}")
    with fresh_backend(lab.db) as backend:
        assert backend.list_schedules() == []


# ---- a negative or zero concurrency ----------------------------------------------------------

@pytest.mark.parametrize("args, env, needle", [
    (["--concurrency", "0"], None, "--concurrency"),
    (["--concurrency", "-2"], None, "--concurrency"),
    ([], {"LITEQ_CONCURRENCY": "0"}, "LITEQ_CONCURRENCY"),
    (["--pool", "mail:emails:0"], None, "needs from 1 to 512 children"),
    (["--pool", "mail:emails:-1"], None, "needs from 1 to 512 children"),
    (["--concurrency", "100000"], None, "--concurrency must be from 1 to 512"),
])
def test_zero_or_negative_concurrency_is_refused(lab, app, args, env, needle):
    tid = _pending_row(app)
    res = _liteqd(lab, *args, env=env)
    _assert_refused(res, needle)
    _assert_untouched(lab, tid)


# ---- a timeout of 0 -------------------------------------------------------------------------

@pytest.mark.parametrize("args, env, needle", [
    (["--timeout", "0"], None, "--timeout"),
    (["--timeout", "-5"], None, "--timeout"),
    ([], {"LITEQ_TIMEOUT": "0"}, "LITEQ_TIMEOUT"),
])
def test_timeout_of_zero_is_refused_by_liteqd(lab, app, args, env, needle):
    res = _liteqd(lab, "--concurrency", "1", *args, env=env)
    _assert_refused(res, needle, "> 0")


def test_timeout_of_zero_is_refused_by_the_task_api(lab, app):
    app.add.delay(1, 1)
    before = count_tasks(lab.db)
    with pytest.raises(ValueError, match="timeout"):
        liteq.task(timeout=0)(lambda: None)
    with pytest.raises(ValueError, match="timeout"):
        liteq.task(timeout=-1, name="negative_timeout")(lambda: None)
    with pytest.raises(ValueError, match="timeout"):
        app.add.apply_async((1, 2), timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        app.add.starmap([(1, 2)], timeout=0)
    assert count_tasks(lab.db) == before
    assert "negative_timeout" not in liteq.TASK_REGISTRY
    assert status_counts(lab.db) == {"pending": before}
