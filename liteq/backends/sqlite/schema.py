"""The SQLite schema: tables, indexes, and migrations (from liteq 0.2's files too).

The version lives in PRAGMA user_version; ensure_schema() brings any file up to
SCHEMA_VERSION under the write lock, so processes that start together migrate once.
"""

import sqlite3

from ...errors import DatabaseError
from ..ddl import ddl_allowed, not_ready
from ...timeutil import now
from . import seed_times

SCHEMA_VERSION = 6

# The tasks table as version 1 made it; later versions ALTER it (see _MIGRATIONS).
_TASKS_DDL = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    queue TEXT NOT NULL DEFAULT 'default',
    status TEXT NOT NULL DEFAULT 'pending',
    priority INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL DEFAULT 3,
    worker_id TEXT,
    run_at REAL NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT,
    timeout REAL,
    retry_delay REAL NOT NULL DEFAULT 1.0,
    retry_backoff REAL NOT NULL DEFAULT 2.0,
    retry_max_delay REAL NOT NULL DEFAULT 300.0
)"""

_WORKERS_DDL = """
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    hostname TEXT,
    queues TEXT,
    concurrency INTEGER,
    last_heartbeat REAL,
    pid INTEGER,
    process_started REAL,
    started_at REAL
)"""

# Dependencies: the child waits for every parent; position keeps depends_on's order
# (parent_results() reads the parents' results in it).
_TASK_DEPS_DDL = """
CREATE TABLE IF NOT EXISTS task_deps (
    child_id INTEGER NOT NULL,
    parent_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (child_id, parent_id)
) WITHOUT ROWID"""

_SCHEDULES_DDL = """
CREATE TABLE IF NOT EXISTS schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    task_name TEXT NOT NULL,
    cron_expr TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{"args":[],"kwargs":{}}',
    queue TEXT,
    priority INTEGER,
    max_retries INTEGER,
    tz TEXT,
    catchup TEXT NOT NULL DEFAULT 'coalesce',
    enabled INTEGER NOT NULL DEFAULT 1,
    next_run REAL,
    last_run REAL,
    created_at REAL,
    updated_at REAL
)"""

_INDEXES = (
    # The claim path: pending rows of a queue that wait for no parent, best priority
    # first, then due time.
    "CREATE INDEX IF NOT EXISTS idx_tasks_claim "
    "ON tasks(status, waiting_on, queue, priority DESC, run_at, id)",
    # Reclaim and "active tasks per worker".
    "CREATE INDEX IF NOT EXISTS idx_tasks_running_worker ON tasks(worker_id) WHERE status = 'running'",
    # Monitoring: failed/done lists sorted by finish time, and purge by age. Partial,
    # so an enqueue (a pending row) pays nothing for it.
    "CREATE INDEX IF NOT EXISTS idx_tasks_finished ON tasks(status, finished_at) "
    "WHERE status IN ('done', 'failed', 'cancelled')",
    "CREATE INDEX IF NOT EXISTS idx_schedules_due ON schedules(enabled, next_run)",
    # Unique tasks: one pending or running task per key. Rows without a key are not
    # in it, so a plain enqueue pays nothing for it. tasks.INSERT_UNIQUE names this
    # predicate in its ON CONFLICT target.
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_tasks_unique_key ON tasks(unique_key) "
    "WHERE unique_key IS NOT NULL AND status IN ('pending', 'running')",
    # A parent's outcome finds its children.
    "CREATE INDEX IF NOT EXISTS idx_task_deps_parent ON task_deps(parent_id)",
)

# Columns of liteq 0.2's tables that held text times (CURRENT_TIMESTAMP
# or isoformat()); migration turns them into epoch seconds.
_TIME_COLUMNS = {"run_at", "created_at", "started_at", "finished_at",
                 "last_heartbeat", "next_run", "last_run", "updated_at", "process_started"}

def _table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _epoch_expr(col: str) -> str:
    # Text times from liteq 0.2, read exactly by seed_times
    # (registered on the migrating connection by _migrate_v0_to_v1).
    return f"{seed_times.SQL_FUNCTION}({col})"


def _rebuild_table(conn: sqlite3.Connection, table: str, ddl: str,
                   defaults: dict[str, str]) -> None:
    """Copy an old table into the current schema, keeping rows and ids."""
    old_cols = set(_table_columns(conn, table))
    conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v0")
    conn.execute(ddl)
    new_cols = _table_columns(conn, table)
    exprs: list[str] = []
    for col in new_cols:
        if col in old_cols:
            expr = _epoch_expr(col) if col in _TIME_COLUMNS else col
            if col in defaults:
                expr = f"COALESCE({expr}, {defaults[col]})"
            exprs.append(expr)
        else:
            exprs.append(defaults.get(col, "NULL"))
    conn.execute(f"INSERT INTO {table} ({', '.join(new_cols)}) "
                 f"SELECT {', '.join(exprs)} FROM {table}_v0")
    conn.execute(f"DROP TABLE {table}_v0")


def _migrate_v0_to_v1(conn: sqlite3.Connection) -> None:
    """Bring a fresh file, or one made by liteq 0.2 (user_version 0), to v1."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    t = repr(now())
    seed_times.register(conn)
    # Old indexes referenced the old tables; drop them so names can be reused.
    for (idx,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index' "
                               "AND sql IS NOT NULL").fetchall():
        conn.execute(f"DROP INDEX IF EXISTS {idx}")
    if "tasks" in tables:
        _rebuild_table(conn, "tasks", _TASKS_DDL, {
            "created_at": t, "run_at": "created_at", "queue": "'default'",
            "status": "'pending'", "priority": "0", "attempts": "0", "max_retries": "3",
            "payload": "'{}'", "retry_delay": "1.0", "retry_backoff": "2.0",
            "retry_max_delay": "300.0",
        })
        # run_at fell back to created_at for rows that had none.
        conn.execute(f"UPDATE tasks SET run_at = COALESCE(created_at, {t}) WHERE run_at IS NULL")
    else:
        conn.execute(_TASKS_DDL)
    if "workers" in tables:
        _rebuild_table(conn, "workers", _WORKERS_DDL, {})
    else:
        conn.execute(_WORKERS_DDL)
    if "schedules" in tables:
        old = set(_table_columns(conn, "schedules"))
        if "name" not in old:
            # liteq 0.2 registered a schedule again on every start: keep one per
            # (task, cron, payload), and name the survivors uniquely.
            conn.execute("DELETE FROM schedules WHERE id NOT IN (SELECT MIN(id) FROM schedules "
                         "GROUP BY task_name, cron_expr, payload)")
            conn.execute("ALTER TABLE schedules ADD COLUMN name TEXT")
            conn.execute("UPDATE schedules SET name = CASE WHEN id = (SELECT MIN(id) FROM "
                         "schedules s2 WHERE s2.task_name = schedules.task_name) "
                         "THEN task_name ELSE task_name || '#' || id END")
        _rebuild_table(conn, "schedules", _SCHEDULES_DDL, {
            "payload": "'{\"args\":[],\"kwargs\":{}}'", "enabled": "1",
            "catchup": "'coalesce'", "created_at": t, "updated_at": t,
        })
    else:
        conn.execute(_SCHEDULES_DDL)


def _migrate_v1_to_v2(conn: sqlite3.Connection) -> None:
    """Version 2: tasks.unique_key (its partial unique index is in _INDEXES)."""
    conn.execute("ALTER TABLE tasks ADD COLUMN unique_key TEXT")


def _migrate_v2_to_v3(conn: sqlite3.Connection) -> None:
    """Version 3, dependencies: tasks.waiting_on (how many parents are not done yet; a
    task is claimed only at 0) and task_deps, one row per (child, parent) edge."""
    conn.execute("ALTER TABLE tasks ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0")
    conn.execute(_TASK_DEPS_DDL)
    # The claim index gains waiting_on (_INDEXES makes it again).
    conn.execute("DROP INDEX IF EXISTS idx_tasks_claim")


# The highest id a deleted task had; one row. SQLite hands out max(id) + 1, so once
# a purge or retention emptied the top of the table, the next task would get an
# old task's id again, and an id an app kept could name another task. Inserts take
# the id after this floor (NEXT_ID below), and a trigger raises it as rows go.
# (AUTOINCREMENT would do the same, at the price of writing sqlite_sequence on
# every insert: a fifth of the .delay() rate, and a table rebuild; this costs 2-5 %.)
_ID_FLOOR_DDL = "CREATE TABLE IF NOT EXISTS task_id_floor (id INTEGER NOT NULL)"
_ID_FLOOR_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS tasks_raise_id_floor AFTER DELETE ON tasks "
    "WHEN OLD.id > (SELECT id FROM task_id_floor) "
    "BEGIN UPDATE task_id_floor SET id = OLD.id; END")

# The highest id handed out so far (the next task's is one more): past every id in
# the table and every one ever deleted. Every INSERT INTO tasks names its id so.
NEXT_ID = ("(SELECT MAX(COALESCE((SELECT MAX(id) FROM tasks), 0), "
           "COALESCE((SELECT id FROM task_id_floor), 0)))")


def _migrate_v3_to_v4(conn: sqlite3.Connection) -> None:
    """Version 4: ids are never reused (task_id_floor and its trigger); an upgraded
    file counts on from the highest id it holds."""
    conn.execute(_ID_FLOOR_DDL)
    conn.execute("INSERT INTO task_id_floor (id) SELECT COALESCE(MAX(id), 0) FROM tasks "
                 "WHERE NOT EXISTS (SELECT 1 FROM task_id_floor)")
    conn.execute(_ID_FLOOR_TRIGGER)


# Outcome statistics (liteq/backends/stats.py says what each row means): counted
# in the transaction that records the outcomes, so they only go up, whatever
# retention deletes. Small: one row per (queue, name, metric, bucket).
_TASK_STATS_DDL = """
CREATE TABLE IF NOT EXISTS task_stats (
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    metric TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    shard INTEGER NOT NULL DEFAULT 0,
    count INTEGER NOT NULL DEFAULT 0,
    total REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, name, metric, bucket, shard)
) WITHOUT ROWID"""

# Every failed attempt's error (tasks.error keeps only the last one); rows go with
# their task (the trigger), whoever deletes it.
_TASK_ERRORS_DDL = """
CREATE TABLE IF NOT EXISTS task_errors (
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    error TEXT,
    finished_at REAL NOT NULL
)"""
_TASK_ERRORS_INDEX = ("CREATE INDEX IF NOT EXISTS idx_task_errors_task "
                      "ON task_errors(task_id)")
_TASK_ERRORS_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS tasks_drop_errors AFTER DELETE ON tasks "
    "BEGIN DELETE FROM task_errors WHERE task_id = OLD.id; END")


def _migrate_v4_to_v5(conn: sqlite3.Connection) -> None:
    """Version 5: task_stats (counters and histograms that survive retention) and
    task_errors (each attempt's error). An upgraded file keeps the last error each
    task holds as its attempts' only one known; its counters start at zero."""
    conn.execute(_TASK_STATS_DDL)
    conn.execute(_TASK_ERRORS_DDL)
    conn.execute(_TASK_ERRORS_INDEX)
    conn.execute(_TASK_ERRORS_TRIGGER)
    conn.execute("INSERT INTO task_errors (task_id, attempt, error, finished_at) "
                 "SELECT id, attempts, error, COALESCE(finished_at, started_at, created_at) "
                 "FROM tasks WHERE error IS NOT NULL")


# One GCRA bucket per rate-limited task name ("n:NAME") or queue ("q:QUEUE"): the
# theoretical time of its next start (liteq/backends/limits.py). Read and written
# only by claims of limited names and queues that have due tasks.
_RATE_LIMITS_DDL = """
CREATE TABLE IF NOT EXISTS rate_limits (
    key TEXT PRIMARY KEY,
    tat REAL NOT NULL
) WITHOUT ROWID"""


def _migrate_v5_to_v6(conn: sqlite3.Connection) -> None:
    """Version 6: rate limits' buckets (rate_limits)."""
    conn.execute(_RATE_LIMITS_DDL)


_MIGRATIONS = {0: _migrate_v0_to_v1, 1: _migrate_v1_to_v2, 2: _migrate_v2_to_v3,
               3: _migrate_v3_to_v4, 4: _migrate_v4_to_v5, 5: _migrate_v5_to_v6}


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version (PRAGMA user_version; 0: no LiteQ tables yet)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_newer(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"database schema version {version} is newer than this LiteQ understands "
            f"({SCHEMA_VERSION}); upgrade LiteQ")


def ensure_schema(conn: sqlite3.Connection, allow_ddl: bool | None = None) -> None:
    """Create or migrate the schema to SCHEMA_VERSION; safe to call any number of times.

    allow_ddl None follows LITEQ_NO_DDL: when it is set, a file that needs creating or
    migrating is a SchemaNotReady error naming `liteq db upgrade` instead.
    """
    version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    _check_newer(version)
    if not ddl_allowed(allow_ddl):
        raise not_ready(f"database {_file_of(conn)}", version, SCHEMA_VERSION)
    migrate(conn)


def _file_of(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return (row[2] if row is not None else "") or ":memory:"


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the file to SCHEMA_VERSION under the write lock, whatever LITEQ_NO_DDL says
    (`liteq db upgrade`); returns (version before, version after)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = before = schema_version(conn)
        _check_newer(version)
        if version == SCHEMA_VERSION:
            conn.execute("COMMIT")
            return before, version
        while version < SCHEMA_VERSION:
            _MIGRATIONS[version](conn)
            version += 1
        for ddl in _INDEXES:
            conn.execute(ddl)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return before, SCHEMA_VERSION


# Statements the recording of migration_sql() leaves out: reads, and the transaction
# it wraps around the whole script itself.
_NOT_RECORDED = ("SELECT", "BEGIN", "COMMIT", "ROLLBACK", "PRAGMA TABLE_INFO",
                 "PRAGMA USER_VERSION", "PRAGMA DATABASE_LIST", "--")


def migration_sql(conn: sqlite3.Connection) -> list[str]:
    """The statements that migrate() would run on this file, without running them.

    The migrations are Python functions (the first reads which tables a file from liteq
    0.2 has), so they run on a scratch copy of the file's schema in memory,
    its rows left out, and every statement that changes something is recorded.
    Empty when the file is up to date.
    """
    version = schema_version(conn)
    _check_newer(version)
    if version == SCHEMA_VERSION:
        return []
    scratch = sqlite3.connect(":memory:", isolation_level=None)
    try:
        # Tables first, then what refers to them (indexes, triggers, views).
        for _, sql in conn.execute(
                "SELECT type, sql FROM sqlite_master WHERE sql IS NOT NULL "
                "AND name NOT LIKE 'sqlite_%' "
                "ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, rowid").fetchall():
            scratch.execute(sql)
        scratch.execute(f"PRAGMA user_version = {version}")
        recorded: list[str] = []
        scratch.set_trace_callback(recorded.append)
        migrate(scratch)
        scratch.set_trace_callback(None)
    finally:
        scratch.close()
    return ["BEGIN IMMEDIATE", *(s.strip() for s in recorded if _changes(s)), "COMMIT"]


def _changes(statement: str) -> bool:
    """True for a recorded statement that changes the file (PRAGMA user_version = N
    does; reading it does not)."""
    up = statement.strip().upper()
    if up.startswith("PRAGMA USER_VERSION"):
        return "=" in up
    return not up.startswith(_NOT_RECORDED)
