"""liteq.db: connections, schema, pragmas, migration of seed databases, bad database files.

SQLite only, every test (pytestmark): they are about SQLite itself (liteq 0.2's
liteq.db.get_conn, PRAGMAs, WAL, liteq 0.2 migration, a missing, read-only, locked or
corrupt file), so each takes conftest's `db_path` and reads the file with sqlite3.
"""

import calendar
import json
import multiprocessing
import os
import random
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

import liteq
from liteq.backends.sqlite.schema import SCHEMA_VERSION
from liteq import backends
from liteq.db import get_conn, init_db

from support.task_table import put_task, count_tasks

pytestmark = pytest.mark.sqlite_only

FORK = multiprocessing.get_context("fork")

SEED_SCHEMA = """
CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, payload TEXT NOT NULL, queue TEXT NOT NULL, status TEXT DEFAULT 'pending', priority INTEGER DEFAULT 0, attempts INTEGER DEFAULT 0, max_retries INTEGER DEFAULT 3, worker_id TEXT, run_at DATETIME DEFAULT CURRENT_TIMESTAMP, created_at DATETIME DEFAULT CURRENT_TIMESTAMP, finished_at DATETIME, result TEXT, error TEXT);
CREATE TABLE workers (worker_id TEXT PRIMARY KEY, hostname TEXT, queues TEXT, concurrency INTEGER, last_heartbeat DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE schedules (id INTEGER PRIMARY KEY AUTOINCREMENT, task_name TEXT NOT NULL, cron_expr TEXT NOT NULL, payload TEXT NOT NULL, queue TEXT DEFAULT 'default', enabled INTEGER DEFAULT 1, last_run DATETIME, next_run DATETIME);
CREATE INDEX idx_fetch ON tasks(status, queue, priority DESC, run_at);
"""


def _define_task():
    """A task object for enqueueing; defined once per call site (same code location)."""
    @liteq.task(name="db_probe")
    def db_probe(x):
        return x
    return db_probe


def _raw(path):
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    return conn


def _file_of(conn):
    return os.path.realpath(conn.execute("PRAGMA database_list").fetchone()[2])


# ---- get_conn / init_db -----------------------------------------------------


def test_get_conn_reads_liteq_db_at_each_call(db_path, monkeypatch):
    base = os.path.dirname(db_path)
    a, b = os.path.join(base, "a.db"), os.path.join(base, "b.db")
    monkeypatch.setenv("LITEQ_DB", a)
    conn = get_conn()
    try:
        assert _file_of(conn) == os.path.realpath(a)
        conn.execute("INSERT INTO tasks (name, payload, run_at, created_at) "
                     "VALUES ('only_in_a', '{}', 0, 0)")
        conn.commit()
    finally:
        conn.close()
    monkeypatch.setenv("LITEQ_DB", b)
    conn = get_conn()
    try:
        assert _file_of(conn) == os.path.realpath(b)
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0
    finally:
        conn.close()
    assert os.path.exists(a) and os.path.exists(b)
    assert count_tasks(a) == 1


def test_delay_follows_liteq_db_changes(db_path, monkeypatch, clean_registry):
    t = _define_task()
    base = os.path.dirname(db_path)
    a, b = os.path.join(base, "a.db"), os.path.join(base, "b.db")
    monkeypatch.setenv("LITEQ_DB", a)
    t.delay(1)
    t.delay(2)
    monkeypatch.setenv("LITEQ_DB", b)
    t.delay(3)
    assert count_tasks(a) == 2
    assert count_tasks(b) == 1


def test_default_database_is_liteq_db_in_cwd(db_path, monkeypatch):
    cwd = os.path.join(os.path.dirname(db_path), "workdir")
    os.mkdir(cwd)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("LITEQ_DB")
    conn = get_conn()
    try:
        assert _file_of(conn) == os.path.realpath(os.path.join(cwd, "liteq.db"))
    finally:
        conn.close()
    assert os.path.isfile(os.path.join(cwd, "liteq.db"))
    assert not os.path.exists(db_path)


def test_get_conn_works_as_context_manager_like_the_seed(db_path):
    conn = get_conn()
    try:
        with conn:
            conn.execute("INSERT INTO tasks (name, payload, run_at, created_at) "
                         "VALUES ('x', '{}', 0, 0)")
        rows = conn.execute("SELECT * FROM tasks WHERE status='pending'").fetchall()
        assert len(rows) == 1 and rows[0]["name"] == "x"
    finally:
        conn.close()
    assert count_tasks(db_path) == 1  # committed, visible to another connection


def test_init_db_is_idempotent_and_keeps_data(db_path, clean_registry):
    init_db()
    tid = _define_task().delay("kept")
    conn = _raw(db_path)
    try:
        schema1 = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()
    init_db()
    init_db()
    conn = _raw(db_path)
    try:
        schema3 = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        assert [tuple(r) for r in schema3] == [tuple(r) for r in schema1]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
    assert liteq.get_task_status(tid)["args"] == ["kept"]


def test_schema_is_created_on_first_use(db_path, clean_registry):
    assert not os.path.exists(db_path)
    tid = _define_task().delay(42)  # no init_db()
    assert isinstance(tid, int)
    status = liteq.get_task_status(tid)
    assert status["status"] == "pending" and status["args"] == [42]
    conn = _raw(db_path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"tasks", "workers", "schedules"} <= tables


def test_wal_mode_and_user_version(db_path):
    conn = get_conn()
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert SCHEMA_VERSION >= 1
        # A busy timeout is set (LITEQ_BUSY_TIMEOUT default 10 s).
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    finally:
        conn.close()


@pytest.mark.parametrize("value,expected", [("full", 2), ("FULL", 2), ("normal", 1), (None, 1)])
def test_liteq_sync_sets_synchronous(db_path, monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("LITEQ_SYNC", raising=False)
    else:
        monkeypatch.setenv("LITEQ_SYNC", value)
    conn = get_conn()
    try:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == expected
    finally:
        conn.close()


def test_liteq_sync_applies_to_store_connections(db_path, monkeypatch):
    monkeypatch.setenv("LITEQ_SYNC", "full")
    store = backends.open_backend(db_path)
    try:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        store.close()


def test_liteq_sync_bogus_is_a_config_error(db_path, monkeypatch, clean_registry):
    monkeypatch.setenv("LITEQ_SYNC", "bogus")
    with pytest.raises(liteq.ConfigError, match="LITEQ_SYNC"):
        get_conn()
    t = _define_task()
    backends.forget_backends()
    with pytest.raises(liteq.ConfigError, match="LITEQ_SYNC"):
        t.delay(1)


def test_liteq_busy_timeout_bogus_is_a_config_error(db_path, monkeypatch):
    monkeypatch.setenv("LITEQ_BUSY_TIMEOUT", "soon")
    with pytest.raises(liteq.ConfigError, match="LITEQ_BUSY_TIMEOUT"):
        get_conn()


def test_indexes_exist(db_path):
    init_db()
    conn = _raw(db_path)
    try:
        indexes = {r["name"]: r["tbl_name"] for r in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type='index'")}
        claim_cols = [r["name"] for r in conn.execute("PRAGMA index_info(idx_tasks_claim)")]
    finally:
        conn.close()
    for name, table in (("idx_tasks_claim", "tasks"), ("idx_tasks_running_worker", "tasks"),
                        ("idx_tasks_finished", "tasks"), ("idx_schedules_due", "schedules")):
        assert indexes.get(name) == table, (name, indexes)
    # The claim index leads with the columns the claim query filters and sorts by.
    assert claim_cols[:5] == ["status", "waiting_on", "queue", "priority", "run_at"]


# ---- migration of a seed database ---------------------------------------------


def _local(text):
    """Epoch seconds of a seed isoformat() time: naive, so local time."""
    return datetime.fromisoformat(text).timestamp()


def _utc(text):
    """Epoch seconds of a seed CURRENT_TIMESTAMP time: UTC."""
    text = text.replace("T", " ")
    frac = 0.0
    if "." in text:
        text, f = text.split(".")
        frac = float("0." + f)
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")) + frac


def _make_seed_db(path):
    raw = sqlite3.connect(path)
    raw.executescript(SEED_SCHEMA)
    before = time.time()
    # Defaults: run_at and created_at from CURRENT_TIMESTAMP (UTC text, no 'T').
    raw.execute("INSERT INTO tasks (id, name, payload, queue) VALUES (?,?,?,?)",
                (7, "send_email", json.dumps({"args": ["a@example.com"],
                                              "kwargs": {"subject": "Hi"}}), "emails"))
    # isoformat() times, with 'T' and microseconds; a finished task with a result.
    raw.execute(
        "INSERT INTO tasks (id, name, payload, queue, status, priority, attempts, max_retries, "
        "worker_id, run_at, created_at, finished_at, result) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (42, "generate_report", json.dumps({"args": [], "kwargs": {"report_id": 123}}),
         "reports", "done", 5, 1, 5, "w-old", "2026-01-01T10:00:00.250000",
         "2026-01-01T09:59:00", "2026-01-01T10:00:03", json.dumps({"report_id": 123})))
    raw.execute(
        "INSERT INTO tasks (id, name, payload, queue, status, attempts, max_retries, run_at, "
        "created_at, finished_at, error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (43, "flaky", json.dumps({"args": [1], "kwargs": {}}), "default", "failed", 4, 3,
         "2025-06-30 23:59:59", "2025-06-30 23:00:00", "2025-07-01 00:00:01", "boom"))
    raw.execute("INSERT INTO workers (worker_id, hostname, queues, concurrency) "
                "VALUES ('w-old', 'oldhost', 'default,emails', 4)")
    every5 = ("cleanup", "*/5 * * * *", '{"args": [], "kwargs": {}}')
    for _ in range(3):  # liteq 0.2 added the schedule again at every start
        raw.execute("INSERT INTO schedules (task_name, cron_expr, payload) VALUES (?,?,?)", every5)
    raw.execute("INSERT INTO schedules (task_name, cron_expr, payload, next_run) VALUES (?,?,?,?)",
                ("daily_backup", "0 2 * * *", '{"args": [], "kwargs": {}}', "2026-01-02 02:00:00"))
    raw.execute("INSERT INTO schedules (task_name, cron_expr, payload) VALUES (?,?,?)",
                ("cleanup", "0 * * * *", '{"args": [], "kwargs": {}}'))
    raw.commit()
    after = time.time()
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 0
    raw.close()
    return before, after


def test_seed_database_is_migrated_in_place(db_path):
    before, after = _make_seed_db(db_path)

    first = liteq.get_task_status(7)  # the first open migrates

    conn = _raw(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        rows = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM tasks")}
        types = conn.execute(
            "SELECT DISTINCT typeof(run_at), typeof(created_at) FROM tasks").fetchall()
        fin_type = conn.execute("SELECT typeof(finished_at) FROM tasks WHERE id = 42").fetchone()[0]
        workers = [dict(r) for r in conn.execute("SELECT * FROM workers")]
        schedules = [dict(r) for r in conn.execute("SELECT * FROM schedules ORDER BY id")]
        index_names = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        conn.close()

    assert sorted(rows) == [7, 42, 43]
    assert [tuple(t) for t in types] == [("real", "real")]
    assert fin_type == "real"

    # The CURRENT_TIMESTAMP task: names, payload and status kept; times are now epoch numbers.
    assert first["name"] == "send_email" and first["queue"] == "emails"
    assert first["status"] == "pending"
    assert first["args"] == ["a@example.com"] and first["kwargs"] == {"subject": "Hi"}
    assert before - 2 <= rows[7]["created_at"] <= after + 2
    assert before - 2 <= rows[7]["run_at"] <= after + 2
    assert datetime.fromisoformat(first["run_at"]).timestamp() == pytest.approx(rows[7]["run_at"])

    done = liteq.get_task_status(42)
    assert (done["name"], done["queue"], done["status"], done["priority"], done["attempts"],
            done["max_retries"], done["worker_id"]) == (
        "generate_report", "reports", "done", 5, 1, 5, "w-old")
    assert done["kwargs"] == {"report_id": 123}
    assert done["result"] == {"report_id": 123}
    assert rows[42]["run_at"] == pytest.approx(_local("2026-01-01T10:00:00.250000"), abs=0.01)
    assert rows[42]["created_at"] == pytest.approx(_local("2026-01-01T09:59:00"), abs=0.01)
    assert rows[42]["finished_at"] == pytest.approx(_local("2026-01-01T10:00:03"), abs=0.01)

    failed = liteq.get_task_status(43)
    assert failed["status"] == "failed" and failed["error"] == "boom"
    assert failed["args"] == [1] and failed["attempts"] == 4
    assert rows[43]["run_at"] == pytest.approx(_utc("2025-06-30 23:59:59"), abs=0.01)

    # Workers keep their rows, with an epoch heartbeat.
    assert [w["worker_id"] for w in workers] == ["w-old"]
    assert isinstance(workers[0]["last_heartbeat"], float)
    assert before - 2 <= workers[0]["last_heartbeat"] <= after + 2

    # Three identical 'cleanup */5' rows collapse to one; distinct schedules stay.
    keys = [(s["task_name"], s["cron_expr"], s["payload"]) for s in schedules]
    assert len(keys) == len(set(keys)) == 3
    assert sorted((s["task_name"], s["cron_expr"]) for s in schedules) == [
        ("cleanup", "*/5 * * * *"), ("cleanup", "0 * * * *"), ("daily_backup", "0 2 * * *")]
    assert len({s["name"] for s in schedules}) == 3
    backup = next(s for s in schedules if s["task_name"] == "daily_backup")
    assert backup["next_run"] == pytest.approx(_utc("2026-01-02 02:00:00"), abs=0.01)

    # liteq 0.2's index is gone, ours are in place.
    assert "idx_fetch" not in index_names
    assert "idx_tasks_claim" in index_names


def test_migrated_pending_task_comes_due_and_ids_continue(db_path, clean_registry):
    _make_seed_db(db_path)
    store = backends.open_backend(db_path)
    try:
        claimed = store.claim("w-new", ["emails"], 10)
        assert [r["id"] for r in claimed] == [7]  # text times compare correctly now
        new_id = _define_task().delay("after migration")
        assert new_id > 43
    finally:
        store.close()
    # Opening again changes nothing.
    conn = _raw(db_path)
    try:
        snapshot = [tuple(r) for r in conn.execute("SELECT * FROM tasks ORDER BY id")]
    finally:
        conn.close()
    init_db()
    conn = _raw(db_path)
    try:
        assert [tuple(r) for r in conn.execute("SELECT * FROM tasks ORDER BY id")] == snapshot
    finally:
        conn.close()


# liteq 0.2's released schema (PyPI liteq 0.2.1, liteq/db.py init_db), verbatim.
SEED_021_SCHEMA = """
CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, payload TEXT NOT NULL, queue TEXT NOT NULL, status TEXT DEFAULT 'pending', priority INTEGER DEFAULT 0, attempts INTEGER DEFAULT 0, max_retries INTEGER DEFAULT 3, worker_id TEXT, run_at DATETIME DEFAULT CURRENT_TIMESTAMP, created_at DATETIME DEFAULT CURRENT_TIMESTAMP, started_at DATETIME, finished_at DATETIME, result TEXT, error TEXT, timeout INTEGER);
CREATE TABLE workers (worker_id TEXT PRIMARY KEY, hostname TEXT, queues TEXT, concurrency INTEGER, last_heartbeat DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE schedules (id INTEGER PRIMARY KEY AUTOINCREMENT, task_name TEXT NOT NULL, cron_expr TEXT NOT NULL, payload TEXT NOT NULL, queue TEXT NOT NULL, enabled INTEGER DEFAULT 1, last_run DATETIME, next_run DATETIME, created_at DATETIME DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_fetch ON tasks(status, queue, priority DESC, run_at);
"""

_EMPTY_PAYLOAD = '{"args": [], "kwargs": {}}'


def _migrate_in_zone(path, tz):
    """Migrate liteq 0.2 database at `path` in a fresh process whose local zone is `tz`
    (the C library reads TZ once per process); returns get_task_status() of every task."""
    script = ("import json, liteq\nfrom liteq.db import init_db\ninit_db()\n"
              "print(json.dumps({i: liteq.get_task_status(i) for i in %s}))")
    conn = _raw(path)
    ids = [r[0] for r in conn.execute("SELECT id FROM tasks")]
    conn.close()
    out = subprocess.run([sys.executable, "-c", script % ids], capture_output=True, text=True,
                         env=dict(os.environ, LITEQ_DB=path, TZ=tz), timeout=60)
    assert out.returncode == 0, out.stderr
    return {int(k): v for k, v in json.loads(out.stdout).items()}


def _exact_utc(stored):
    """A stored epoch as an aware UTC datetime, to the microsecond (rounding as Python does)."""
    return datetime.fromtimestamp(stored, timezone.utc)


def _micros(aware):
    """Whole microseconds since the epoch of an aware datetime: no float involved."""
    return (aware - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


def test_seed_text_times_migrate_exactly_to_the_microsecond(db_path):
    # julianday() kept milliseconds and added float noise: 06:24:49 came back as
    # 06:24:49.000010 and .903616 as .903993.
    raw = sqlite3.connect(db_path)
    raw.executescript(SEED_021_SCHEMA)
    rng = random.Random(15)
    expected = {}
    for i in range(1, 201):
        base = datetime(2026, 11, 30, 6, 24, 49) + timedelta(seconds=rng.randrange(10**8))
        local_run = base.replace(microsecond=rng.randrange(10**6))   # isoformat(), 'T'
        utc_created = base.replace(microsecond=0)                     # CURRENT_TIMESTAMP
        raw.execute("INSERT INTO tasks (id, name, payload, queue, run_at, created_at) "
                    "VALUES (?,?,?,?,?,?)", (i, "t", _EMPTY_PAYLOAD, "default",
                                            local_run.isoformat(), str(utc_created)))
        expected[i] = (local_run.replace(tzinfo=timezone.utc),
                       utc_created.replace(tzinfo=timezone.utc))
    raw.execute("INSERT INTO tasks (id, name, payload, queue, run_at, created_at) "
                "VALUES (201, 't', ?, 'default', '2026-11-30T06:24:49.903616', "
                "'2026-11-30 06:24:49')", (_EMPTY_PAYLOAD,))
    expected[201] = (datetime(2026, 11, 30, 6, 24, 49, 903616, timezone.utc),
                     datetime(2026, 11, 30, 6, 24, 49, tzinfo=timezone.utc))
    raw.commit()
    raw.close()

    statuses = _migrate_in_zone(db_path, "UTC")

    conn = _raw(db_path)
    rows = {r["id"]: r for r in conn.execute("SELECT id, run_at, created_at FROM tasks")}
    conn.close()
    for i, (run_at, created_at) in expected.items():
        assert _exact_utc(rows[i]["run_at"]) == run_at, i
        assert _exact_utc(rows[i]["created_at"]) == created_at, i
        # The float nearest to the exact value: nothing was lost on the way.
        assert rows[i]["run_at"] == _micros(run_at) / 10**6, i
        assert rows[i]["created_at"] == _micros(created_at) / 10**6, i
    assert statuses[201]["created_at"] == "2026-11-30T06:24:49+00:00"
    assert statuses[201]["run_at"] == "2026-11-30T06:24:49.903616+00:00"


def test_seed_text_forms_with_an_offset_numbers_and_garbage():
    from liteq.backends.sqlite.seed_times import seed_text_to_epoch as read
    noon_utc = _micros(datetime(2026, 11, 30, 12, tzinfo=timezone.utc)) / 10**6
    for text in ("2026-11-30T21:00:00+09:00", "2026-11-30 07:00:00-05:00",
                 "2026-11-30T12:00:00Z", "2026-11-30 12:00:00", "2026-11-30T17:30+0530"):
        assert read(text) == noon_utc, text
    assert read("2026-11-30T12:00:00.5Z") == noon_utc + 0.5
    assert read(1700000000.25) == 1700000000.25 and read(17) == 17
    for garbage in (None, "", "soon", "2026-13-01 00:00:00", "2026-11-30T25:00:00"):
        assert read(garbage) is None, garbage


@pytest.mark.parametrize("tz", ["Asia/Tokyo", "America/New_York", "Australia/Adelaide"])
def test_seed_times_are_read_in_the_zone_they_were_written_in(db_path, tz):
    # liteq 0.2 stored CURRENT_TIMESTAMP (UTC, ' ') and isoformat() of a naive
    # datetime.now() (local time, 'T') side by side; each keeps its meaning.
    zone = ZoneInfo(tz)
    raw = sqlite3.connect(db_path)
    raw.executescript(SEED_021_SCHEMA)
    before = time.time()
    # my_task.schedule(datetime.now() + timedelta(minutes=10)) in liteq 0.2, on this host:
    in_ten = (datetime.now(zone).replace(tzinfo=None) + timedelta(minutes=10)).isoformat()
    raw.execute("INSERT INTO tasks (id, name, payload, queue, run_at) VALUES (1, 'later', ?, "
                "'default', ?)", (_EMPTY_PAYLOAD, in_ten))
    after = time.time()
    # A finished task (CURRENT_TIMESTAMP times) and a retry (isoformat() run_at, in
    # July: daylight saving time in New York, none in Tokyo).
    raw.execute("INSERT INTO tasks (id, name, payload, queue, status, run_at, created_at, "
                "started_at, finished_at) VALUES (2, 'done', ?, 'default', 'done', "
                "'2026-11-30T15:35:36.232345', '2026-11-30 06:24:49', '2026-11-30 06:24:50', "
                "'2026-11-30 06:24:51.5')", (_EMPTY_PAYLOAD,))
    raw.execute("INSERT INTO tasks (id, name, payload, queue, attempts, run_at, created_at) "
                "VALUES (3, 'retry', ?, 'default', 1, '2026-07-01T12:00:00.903616', "
                "'2026-07-01 02:59:00')", (_EMPTY_PAYLOAD,))
    raw.execute("INSERT INTO workers (worker_id, last_heartbeat) VALUES ('w', "
                "'2026-11-30 06:24:49')")
    raw.execute("INSERT INTO schedules (task_name, cron_expr, payload, queue, last_run, "
                "next_run, created_at) VALUES ('cleanup', '*/5 * * * *', ?, 'default', "
                "'2026-11-30T17:00:00', '2026-11-30T17:05:00', '2026-11-30 08:00:00')",
                (_EMPTY_PAYLOAD,))
    raw.commit()
    raw.close()

    statuses = _migrate_in_zone(db_path, tz)

    conn = _raw(db_path)
    tasks = {r["id"]: r for r in conn.execute("SELECT * FROM tasks")}
    worker = conn.execute("SELECT * FROM workers").fetchone()
    schedule = conn.execute("SELECT * FROM schedules").fetchone()
    conn.close()

    def local(*fields):
        return datetime(*fields, tzinfo=zone)

    def utc(*fields):
        return datetime(*fields, tzinfo=timezone.utc)

    # Ten minutes from when it was scheduled, not hours off.
    assert before + 600 - 0.001 <= tasks[1]["run_at"] <= after + 600 + 0.001
    assert datetime.fromisoformat(statuses[1]["run_at"]) == \
        datetime.fromisoformat(in_ten).replace(tzinfo=zone)
    assert _exact_utc(tasks[2]["run_at"]) == local(2026, 11, 30, 15, 35, 36, 232345)
    assert _exact_utc(tasks[2]["created_at"]) == utc(2026, 11, 30, 6, 24, 49)
    assert _exact_utc(tasks[2]["started_at"]) == utc(2026, 11, 30, 6, 24, 50)
    assert _exact_utc(tasks[2]["finished_at"]) == utc(2026, 11, 30, 6, 24, 51, 500000)
    assert _exact_utc(tasks[3]["run_at"]) == local(2026, 7, 1, 12, 0, 0, 903616)
    assert _exact_utc(tasks[3]["created_at"]) == utc(2026, 7, 1, 2, 59)
    assert _exact_utc(worker["last_heartbeat"]) == utc(2026, 11, 30, 6, 24, 49)
    assert _exact_utc(schedule["last_run"]) == local(2026, 11, 30, 17, 0)
    assert _exact_utc(schedule["next_run"]) == local(2026, 11, 30, 17, 5)
    assert _exact_utc(schedule["created_at"]) == utc(2026, 11, 30, 8, 0)
    # get_task_status() shows the same instants, in the host's zone.
    assert datetime.fromisoformat(statuses[2]["run_at"]) == local(2026, 11, 30, 15, 35, 36,
                                                                  232345)
    assert datetime.fromisoformat(statuses[3]["run_at"]).utcoffset() == \
        local(2026, 7, 1, 12).utcoffset()


def test_newer_schema_version_is_refused(db_path):
    init_db()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(liteq.DatabaseError, match="newer"):
        backends.open_backend(db_path)


# ---- bad database inputs ------------------------------------------------------


def test_missing_directory_names_the_directory(db_path, monkeypatch, clean_registry):
    missing_dir = os.path.join(os.path.dirname(db_path), "no", "such", "dir")
    monkeypatch.setenv("LITEQ_DB", os.path.join(missing_dir, "q.db"))
    t = _define_task()
    with pytest.raises(liteq.DatabaseError) as info:
        t.delay(1)
    assert missing_dir in str(info.value)
    assert "does not exist" in str(info.value)
    with pytest.raises(liteq.DatabaseError, match="does not exist"):
        get_conn()
    assert not os.path.exists(missing_dir)


def test_file_that_is_not_a_database(db_path, clean_registry):
    garbage = b"this is not sqlite\x00\xff" * 500
    with open(db_path, "wb") as f:
        f.write(garbage)
    t = _define_task()
    with pytest.raises(liteq.DatabaseError) as info:
        t.delay(1)
    # LiteQ's own error, never the driver's; the driver's is kept as the cause.
    assert not isinstance(info.value, sqlite3.Error)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    msg = str(info.value)
    assert db_path in msg
    assert "not a" in msg and "SQLite database" in msg
    with pytest.raises(liteq.DatabaseError, match="not a"):
        liteq.get_task_status(1)
    with pytest.raises(liteq.DatabaseError, match="not a"):
        get_conn()
    with open(db_path, "rb") as f:
        assert f.read() == garbage  # left untouched


def test_path_that_is_a_directory(db_path, monkeypatch):
    d = os.path.join(os.path.dirname(db_path), "adir")
    os.mkdir(d)
    monkeypatch.setenv("LITEQ_DB", d)
    with pytest.raises(liteq.DatabaseError, match="directory"):
        get_conn()


def _readonly_child(path, conn_out):
    """In a forked child: drop root, then try to enqueue; report the outcome."""
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        backends.forget_backends()
        os.environ["LITEQ_DB"] = path

        @liteq.task(name="ro_probe")
        def ro_probe(x):
            return x

        try:
            tid = ro_probe.delay(1)
            conn_out.send(("ok", tid, ""))
        except Exception as exc:  # report anything, including a raw sqlite3 error
            conn_out.send(("error", type(exc).__name__,
                           f"{isinstance(exc, liteq.DatabaseError)}|{exc}"))
    except BaseException as exc:
        conn_out.send(("setup", type(exc).__name__, str(exc)))
    finally:
        conn_out.close()


def test_read_only_database(db_path, clean_registry):
    init_db()
    _define_task().delay("existing")
    backends.forget_backends()  # closes the last connection: -wal/-shm go away
    base = os.path.dirname(db_path)
    sub = os.path.join(base, "ro")
    os.mkdir(sub)
    path = os.path.join(sub, "queue.db")
    os.rename(db_path, path)
    for extra in ("-wal", "-shm"):
        assert not os.path.exists(db_path + extra)
    with open(path, "rb") as f:
        original = f.read()
    os.chmod(path, 0o444)
    os.chmod(sub, 0o555)
    as_root = os.geteuid() == 0
    if not as_root:
        # chmod alone makes the database read-only for us.
        with pytest.raises(liteq.DatabaseError, match="read-only|permission"):
            put_task(backends.open_backend(path), "x", "{}")
        return
    # As root chmod does not stop writes: hand the files to 'nobody' and drop to it.
    os.chmod(base, 0o755)
    os.chown(sub, 65534, 65534)
    os.chown(path, 65534, 65534)
    parent_end, child_end = FORK.Pipe(duplex=False)
    proc = FORK.Process(target=_readonly_child, args=(path, child_end))
    proc.start()
    try:
        child_end.close()
        if not parent_end.poll(20):
            pytest.fail("read-only child did not report within 20 s")
        kind, name, detail = parent_end.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    if kind == "setup":
        pytest.skip(f"cannot drop privileges to uid 65534 here: {name}: {detail}")
    assert kind == "error", f"enqueue into a read-only database succeeded: {name}"
    is_liteq_error, _, msg = detail.partition("|")
    assert is_liteq_error == "True", f"raw {name} leaked: {msg}"
    assert path in msg
    assert "read-only" in msg or "permission" in msg, msg
    with open(path, "rb") as f:
        assert f.read() == original


def _hold_write_lock(path, ready, release, hold_s):
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        release.wait(hold_s)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_locked_database_raises_database_locked(db_path, monkeypatch, clean_registry):
    t = _define_task()
    t.delay("before")
    backends.forget_backends()
    monkeypatch.setenv("LITEQ_BUSY_TIMEOUT", "0.5")
    rows_before = count_tasks(db_path)
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_write_lock, args=(db_path, ready, release, 15))
    holder.start()
    try:
        assert ready.wait(10), "lock holder did not start"
        start = time.monotonic()
        with pytest.raises(liteq.DatabaseLocked) as info:
            t.delay("while locked")
        waited = time.monotonic() - start
        assert isinstance(info.value, liteq.DatabaseError)
        assert "LITEQ_BUSY_TIMEOUT" in str(info.value)
        assert holder.is_alive()  # it gave up while the lock was still held
        assert waited >= 0.3  # it did wait for the busy timeout, not fail at once
        # Bulk enqueue is refused the same way, writing nothing.
        with pytest.raises(liteq.DatabaseLocked):
            t.map([1, 2, 3])
        release.set()
        holder.join(10)
        assert holder.exitcode == 0
        assert count_tasks(db_path) == rows_before  # no partial row
        tid = t.delay("after")
        assert liteq.get_task_status(tid)["args"] == ["after"]
        assert count_tasks(db_path) == rows_before + 1
    finally:
        release.set()
        holder.join(10)
        if holder.is_alive():
            holder.kill()
            holder.join(5)


# ---- several processes opening the same database at once ------------------------------


def _open_and_enqueue(path, start, n, out):
    try:
        backends.forget_backends()
        os.environ["LITEQ_DB"] = path

        @liteq.task(name="first_open")
        def first_open(i):
            return i

        start.wait(10)
        ids = [first_open.delay(n, i) for i in range(20)]
        out.send(("ok", ids))
    except BaseException as exc:
        out.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        out.close()


def _race_first_open(path, nprocs=4):
    start = FORK.Event()
    procs, pipes = [], []
    try:
        for n in range(nprocs):
            r, w = FORK.Pipe(duplex=False)
            p = FORK.Process(target=_open_and_enqueue, args=(path, start, n, w))
            p.start()
            w.close()
            procs.append(p)
            pipes.append(r)
        start.set()
        results = []
        for r in pipes:
            assert r.poll(30), "a process did not report within 30 s"
            results.append(r.recv())
        return results
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


def test_processes_creating_a_fresh_database_at_once(db_path):
    """Several app processes starting together on a new file all succeed. (Switching a
    fresh file to WAL does not wait on the busy handler, so this once failed at once
    with "database is locked".) The race is timing-dependent: several rounds."""
    base = os.path.dirname(db_path)
    for round_ in range(16):
        path = os.path.join(base, f"fresh-{round_}.db")
        results = _race_first_open(path, nprocs=6)
        assert [kind for kind, _ in results] == ["ok"] * 6, (round_, results)
        ids = [i for _, got in results for i in got]
        assert len(set(ids)) == 6 * 20
        assert count_tasks(path) == 6 * 20


def test_processes_opening_a_seed_database_at_once_migrate_it_once(db_path):
    _make_seed_db(db_path)
    results = _race_first_open(db_path)
    assert [kind for kind, _ in results] == ["ok"] * 4, results
    conn = _raw(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = dict(conn.execute("SELECT id, name FROM tasks WHERE id IN (7, 42, 43)").fetchall())
        assert conn.execute("SELECT COUNT(*) FROM schedules").fetchone()[0] == 3
    finally:
        conn.close()
    assert names == {7: "send_email", 42: "generate_report", 43: "flaky"}
    assert count_tasks(db_path) == 3 + 80
