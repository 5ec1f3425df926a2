"""The storage layer: the only module of LiteQ that speaks SQL.

Every operation the library, the daemon, the scheduler and the web panel need
is a method of `Store`. Each state change is an UPDATE guarded by the state it
expects (and the worker that owns the row), so a late writer can never
overwrite a task that was reclaimed or cancelled. Keep this surface narrow: a
second backend (PostgreSQL, with FOR UPDATE SKIP LOCKED) would implement these
same methods.

Times are epoch seconds (REAL); see liteq.timeutil.
"""

import functools
import os
import sqlite3
import threading
import time

from . import seed_times, settings
from .errors import DatabaseError, DatabaseLocked
from .timeutil import now

SCHEMA_VERSION = 1

TASK_STATUSES = ("pending", "running", "done", "failed", "cancelled")

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
    # The claim path: pending rows of a queue, best priority first, then due time.
    "CREATE INDEX IF NOT EXISTS idx_tasks_claim ON tasks(status, queue, priority DESC, run_at, id)",
    # Reclaim and "active tasks per worker".
    "CREATE INDEX IF NOT EXISTS idx_tasks_running_worker ON tasks(worker_id) WHERE status = 'running'",
    # Monitoring: failed/done lists sorted by finish time, and purge by age. Partial,
    # so an enqueue (a pending row) pays nothing for it.
    "CREATE INDEX IF NOT EXISTS idx_tasks_finished ON tasks(status, finished_at) "
    "WHERE status IN ('done', 'failed', 'cancelled')",
    "CREATE INDEX IF NOT EXISTS idx_schedules_due ON schedules(enabled, next_run)",
)

# Columns of the seed project's tables that held text times (CURRENT_TIMESTAMP
# or isoformat()); migration turns them into epoch seconds.
_TIME_COLUMNS = {"run_at", "created_at", "started_at", "finished_at",
                 "last_heartbeat", "next_run", "last_run", "updated_at", "process_started"}

_TASK_COLUMNS = ("id", "name", "queue", "status", "priority", "attempts", "max_retries",
                 "worker_id", "run_at", "created_at", "started_at", "finished_at",
                 "result", "error", "payload", "timeout")
_TASK_SELECT = ", ".join(_TASK_COLUMNS)

_CLAIM_RETURNING = ("id, name, payload, queue, priority, run_at, attempts, max_retries, "
                    "timeout, retry_delay, retry_backoff, retry_max_delay")

_INSERT_TASK = (
    "INSERT INTO tasks (name, payload, queue, priority, max_retries, run_at, created_at, "
    "timeout, retry_delay, retry_backoff, retry_max_delay) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


# Outcome updates apply only while the row is still running for this worker.
_GUARD = "WHERE id = ? AND status = 'running' AND worker_id = ?"
_RECORD_DONE = ("UPDATE tasks SET status = 'done', result = ?, error = NULL, started_at = ?, "
                "finished_at = ? " + _GUARD)
_RECORD_FAILED = ("UPDATE tasks SET status = 'failed', error = ?, started_at = ?, "
                  "finished_at = ? " + _GUARD)
_RECORD_RETRY = ("UPDATE tasks SET status = 'pending', error = ?, started_at = ?, "
                 "worker_id = NULL, run_at = ? " + _GUARD)


def _filters(**columns):
    """A WHERE clause and its parameters for the columns given a value (None = any)."""
    where = [f"{col} = ?" for col, val in columns.items() if val is not None]
    params = [val for val in columns.values() if val is not None]
    return ("WHERE " + " AND ".join(where)) if where else "", params


def _explain(exc: sqlite3.Error, path: str, busy_timeout=None) -> DatabaseError:
    """Turn a raw sqlite3 error into one that names the database and the problem.

    busy_timeout is the one the connection really had (the daemon's is short);
    None means it came from LITEQ_BUSY_TIMEOUT.
    """
    msg = str(exc)
    low = msg.lower()
    if "locked" in low or "busy" in low:
        busy = (f"{settings.busy_timeout():g} s (LITEQ_BUSY_TIMEOUT)" if busy_timeout is None
                else f"{busy_timeout:g} s")
        return DatabaseLocked(
            f"database {path} is locked by another writer; gave up after the busy timeout "
            f"of {busy}")
    if "unable to open" in low:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            return DatabaseError(f"cannot open database {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK) or (os.path.exists(path)
                                              and not os.access(path, os.W_OK)):
            # A read-only file, directory or mount: WAL mode needs to write the file
            # and to create its -wal and -shm files beside it.
            return DatabaseError(f"database {path} is read-only; LiteQ needs to write to it "
                                 f"and to create its -wal and -shm files in {parent} ({msg})")
        return DatabaseError(f"cannot open database {path}: permission denied or not a file ({msg})")
    if "not a database" in low or "malformed" in low:
        return DatabaseError(f"{path} is not a usable SQLite database ({msg})")
    if "readonly" in low or "read-only" in low:
        return DatabaseError(f"database {path} is read-only; LiteQ needs to write to it ({msg})")
    if "disk is full" in low or "disk i/o" in low:
        return DatabaseError(f"cannot write database {path}: {msg}")
    return DatabaseError(f"database {path}: {msg}")


def _guarded(method):
    """Report sqlite3 failures of a Store method as LiteQ DatabaseErrors naming the file."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except DatabaseError:
            raise
        except sqlite3.Error as exc:
            if self._conn is not None and self._conn.in_transaction:
                try:
                    self._conn.rollback()
                except sqlite3.Error:
                    pass
            raise _explain(exc, self.path, self.busy_timeout) from exc
    return wrapper


def _switch_to_wal(conn, busy):
    """PRAGMA journal_mode = WAL, retried until the busy timeout.

    The switch needs an exclusive lock, and SQLite returns SQLITE_BUSY at once
    (without calling the busy handler) when other connections are opening the
    same fresh file, so processes that start together would fail with "database
    is locked" instead of waiting. Usually another one has switched it meanwhile.
    """
    deadline = time.monotonic() + busy
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            low = str(exc).lower()
            if ("locked" not in low and "busy" not in low) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def open_connection(path: str, *, isolation_level=None, busy_timeout=None) -> sqlite3.Connection:
    """Open a connection with LiteQ's pragmas (WAL, busy timeout, durability).

    busy_timeout defaults to LITEQ_BUSY_TIMEOUT; the daemon passes a short one so
    that a held lock delays its writes without stalling its supervision loop.
    """
    busy = settings.busy_timeout() if busy_timeout is None else busy_timeout
    sync = settings.sync_pragma()
    if os.path.isdir(path):
        raise DatabaseError(f"cannot open database {path}: it is a directory")
    conn = None
    try:
        conn = sqlite3.connect(path, timeout=busy, isolation_level=isolation_level,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy * 1000)}")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            _switch_to_wal(conn, busy)
        conn.execute(f"PRAGMA synchronous = {sync}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error) and not isinstance(exc, DatabaseError):
            raise _explain(exc, path, busy_timeout) from exc
        raise


def _table_columns(conn, table):
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _epoch_expr(col):
    # Text times from the seed project, read exactly by liteq.seed_times
    # (registered on the migrating connection by _migrate_v0_to_v1).
    return f"{seed_times.SQL_FUNCTION}({col})"


def _rebuild_table(conn, table, ddl, defaults):
    """Copy an old table into the current schema, keeping rows and ids."""
    old_cols = set(_table_columns(conn, table))
    conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v0")
    conn.execute(ddl)
    new_cols = _table_columns(conn, table)
    exprs = []
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


def _migrate_v0_to_v1(conn):
    """Bring a fresh file, or one made by the seed project (user_version 0), to v1."""
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
            # The seed registered a schedule again on every start: keep one per
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


_MIGRATIONS = {0: _migrate_v0_to_v1}


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create or migrate the schema to SCHEMA_VERSION; safe to call any number of times."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"database schema version {version} is newer than this LiteQ understands "
            f"({SCHEMA_VERSION}); upgrade LiteQ")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
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


def _row_dict(row):
    return dict(row) if row is not None else None


class Store:
    """All queue operations on one SQLite database file."""

    def __init__(self, path=None, busy_timeout=None):
        self.path = path or settings.db_path()
        self.busy_timeout = busy_timeout
        self._conn = None
        self._conn = self._open()

    @_guarded
    def _open(self):
        conn = open_connection(self.path, busy_timeout=self.busy_timeout)
        ensure_schema(conn)
        return conn

    def close(self):
        """Close the connection; the Store must not be used afterwards."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self):
        return _Transaction(self._conn)

    def batch(self):
        """Run several operations in one transaction: `with store.batch(): ...`.

        The daemon records a round of outcomes and claims the next tasks in one
        commit. On an error everything in the batch is rolled back.
        """
        return _GuardedBatch(self)

    # ---- enqueue -------------------------------------------------------

    @_guarded
    def enqueue(self, name, payload, queue="default", priority=0, max_retries=3,
                run_at=None, timeout=None, retry_delay=1.0, retry_backoff=2.0,
                retry_max_delay=300.0) -> int:
        """Insert one pending task and commit; returns its id."""
        t = now()
        cur = self._conn.execute(_INSERT_TASK, (
            name, payload, queue, priority, max_retries, t if run_at is None else run_at, t,
            timeout, retry_delay, retry_backoff, retry_max_delay))
        return cur.lastrowid

    @_guarded
    def enqueue_many(self, name, args_json, count, queue="default", priority=0,
                     max_retries=3, run_at=None, timeout=None, retry_delay=1.0,
                     retry_backoff=2.0, retry_max_delay=300.0) -> list:
        """Insert `count` tasks of one kind in one transaction; returns their ids in order.

        args_json is a JSON array with one element per task, that task's list of
        positional arguments. SQLite splits it with json_each (which walks the array
        in order), so no per-row Python work is done here.
        """
        if count <= 0:
            return []
        t = now()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO tasks (name, payload, queue, priority, max_retries, run_at, "
                "created_at, timeout, retry_delay, retry_backoff, retry_max_delay) "
                "SELECT ?, '{\"args\":' || value || ',\"kwargs\":{}}', ?, ?, ?, ?, ?, ?, ?, ?, ? "
                "FROM json_each(?)",
                (name, queue, priority, max_retries, t if run_at is None else run_at, t,
                 timeout, retry_delay, retry_backoff, retry_max_delay, args_json))
            last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        # Under the write lock rowids are handed out as max(rowid)+1, one after another.
        return list(range(last - count + 1, last + 1))

    # ---- claim and outcomes (daemon side) ------------------------------

    def _priority_levels(self, conn, queue):
        """Priority levels that have pending tasks in `queue`, highest first.

        Each step is one index seek, so walking the levels costs O(levels * log n).
        """
        level = conn.execute("SELECT MAX(priority) FROM tasks WHERE status = 'pending' "
                             "AND queue = ?", (queue,)).fetchone()[0]
        while level is not None:
            yield level
            level = conn.execute("SELECT MAX(priority) FROM tasks WHERE status = 'pending' "
                                 "AND queue = ? AND priority < ?", (queue, level)).fetchone()[0]

    @_guarded
    def claim(self, worker_id, queues, limit, at=None, backlog=False) -> list:
        """Mark up to `limit` due pending tasks of `queues` as running for this worker.

        Tasks go by priority desc, then due time, then id, claimed by one
        UPDATE ... RETURNING in one transaction. Candidates are found per queue and
        priority level with index range scans on run_at, so tasks due later (however
        many) are never scanned. With backlog=True (the caller's last claim came back
        full) a single UPDATE ... LIMIT is used instead: with plenty due, it stops
        after `limit` rows and saves the per-level lookups.
        """
        if limit <= 0 or not queues:
            return []
        t = now() if at is None else at
        if backlog:
            return self._claim_backlog(worker_id, queues, limit, t)
        with self._write() as conn:
            candidates = []
            for queue in queues:
                found = 0
                for level in self._priority_levels(conn, queue):
                    rows = conn.execute(
                        "SELECT id, priority, run_at FROM tasks WHERE status = 'pending' "
                        "AND queue = ? AND priority = ? AND run_at <= ? "
                        "ORDER BY run_at, id LIMIT ?", (queue, level, t, limit - found)
                    ).fetchall()
                    candidates.extend(rows)
                    found += len(rows)
                    if found >= limit:
                        break  # lower levels cannot beat what this queue already has
            if not candidates:
                return []
            candidates.sort(key=lambda r: (-r[1], r[2], r[0]))
            ids = [r[0] for r in candidates[:limit]]
            marks = ",".join("?" * len(ids))
            # "+status" keeps the planner on the primary key: with a million pending
            # rows the status index would be a full scan.
            rows = conn.execute(
                f"UPDATE tasks SET status = 'running', worker_id = ?, attempts = attempts + 1, "
                f"started_at = ? WHERE id IN ({marks}) AND +status = 'pending' "
                f"RETURNING {_CLAIM_RETURNING}", (worker_id, t, *ids)).fetchall()
        # RETURNING gives no order guarantee; restore the claim order.
        rows = [dict(r) for r in rows]
        rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))
        return rows

    def _claim_backlog(self, worker_id, queues, limit, t):
        marks = ",".join("?" * len(queues))
        with self._write() as conn:
            rows = conn.execute(
                f"UPDATE tasks SET status = 'running', worker_id = ?, attempts = attempts + 1, "
                f"started_at = ? WHERE id IN (SELECT id FROM tasks WHERE status = 'pending' "
                f"AND queue IN ({marks}) AND run_at <= ? "
                f"ORDER BY priority DESC, run_at, id LIMIT ?) RETURNING {_CLAIM_RETURNING}",
                (worker_id, t, *queues, t, limit)).fetchall()
        rows = [dict(r) for r in rows]
        rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))
        return rows

    @_guarded
    def record_outcomes(self, worker_id, done=(), failed=(), retry=()) -> int:
        """Record finished attempts in one transaction; returns how many rows changed.

        done:   (task_id, result_json, started_at, finished_at)
        failed: (task_id, error_text, started_at, finished_at)
        retry:  (task_id, error_text, started_at, run_at)
        Each update only applies while the row is still running for this worker.
        """
        changed = 0
        with self._write() as conn:
            for sql, rows in ((_RECORD_DONE, done), (_RECORD_FAILED, failed),
                              (_RECORD_RETRY, retry)):
                if rows:
                    # Every kind is (task_id, text, started_at, time): one shape.
                    changed += conn.executemany(
                        sql, [(text, s, t, tid, worker_id) for tid, text, s, t in rows]
                    ).rowcount
        return changed

    @_guarded
    def release(self, worker_id, task_ids) -> int:
        """Return claimed tasks that never started to pending, uncounting the attempt."""
        if not task_ids:
            return 0
        with self._write() as conn:
            cur = conn.executemany(
                "UPDATE tasks SET status = 'pending', worker_id = NULL, "
                "attempts = MAX(attempts - 1, 0), started_at = NULL "
                "WHERE id = ? AND status = 'running' AND worker_id = ?",
                [(tid, worker_id) for tid in task_ids])
            return cur.rowcount

    @_guarded
    def next_due(self, queues):
        """The earliest run_at among pending tasks of these queues, or None."""
        conn = self._conn
        earliest = None
        for queue in queues:
            for level in self._priority_levels(conn, queue):
                first = conn.execute(
                    "SELECT MIN(run_at) FROM tasks WHERE status = 'pending' AND queue = ? "
                    "AND priority = ?", (queue, level)).fetchone()[0]
                if first is not None and (earliest is None or first < earliest):
                    earliest = first
        return earliest

    # ---- workers and reclaim -------------------------------------------

    @_guarded
    def heartbeat(self, worker_id, hostname, queues, concurrency, pid, process_started,
                  started_at=None) -> None:
        """Insert or refresh this daemon's row in `workers`."""
        t = now()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO workers (worker_id, hostname, queues, concurrency, last_heartbeat, "
                "pid, process_started, started_at) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT(worker_id) DO UPDATE SET hostname = excluded.hostname, "
                "queues = excluded.queues, concurrency = excluded.concurrency, "
                "last_heartbeat = excluded.last_heartbeat, pid = excluded.pid, "
                "process_started = excluded.process_started",
                (worker_id, hostname, queues, concurrency, t, pid, process_started,
                 started_at or t))

    @_guarded
    def remove_worker(self, worker_id) -> None:
        """Delete a worker's row (on clean shutdown)."""
        with self._write() as conn:
            conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    @_guarded
    def list_workers(self) -> list:
        """Every row of `workers`, newest heartbeat first."""
        return [dict(r) for r in self._conn.execute(
            "SELECT * FROM workers ORDER BY last_heartbeat DESC")]

    @_guarded
    def reclaim(self, dead_worker_ids=(), stale_before=None, reason="worker died") -> list:
        """Give back the running tasks of dead workers, in one atomic statement.

        A worker is dead when it is named in `dead_worker_ids`, its heartbeat is older
        than `stale_before`, or it has no row at all. Tasks with attempts left go back
        to pending; the rest fail with `reason`. Dead worker rows are deleted.
        Returns [(task_id, new_status)].
        """
        t = now()
        dead = list(dead_worker_ids)
        marks = ",".join("?" * len(dead)) or "NULL"
        stale = -1.0 if stale_before is None else stale_before
        dead_clause = (f"worker_id IN ({marks}) OR worker_id IN (SELECT worker_id FROM workers "
                       f"WHERE last_heartbeat < ?) OR worker_id IS NULL OR worker_id NOT IN "
                       f"(SELECT worker_id FROM workers)")
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE tasks SET "
                "status = CASE WHEN attempts > max_retries THEN 'failed' ELSE 'pending' END, "
                "error = CASE WHEN attempts > max_retries THEN ? ELSE error END, "
                "finished_at = CASE WHEN attempts > max_retries THEN ? ELSE NULL END, "
                "run_at = CASE WHEN attempts > max_retries THEN run_at ELSE ? END, "
                "worker_id = NULL "
                f"WHERE status = 'running' AND ({dead_clause}) "
                "RETURNING id, status",
                (reason + ", and the task has no retries left", t, t, *dead, stale)).fetchall()
            conn.execute(f"DELETE FROM workers WHERE worker_id IN ({marks}) "
                         "OR last_heartbeat < ?", (*dead, stale))
        return [(r["id"], r["status"]) for r in rows]

    # ---- reading --------------------------------------------------------

    @_guarded
    def get_task(self, task_id):
        """One task row as a dict (raw columns), or None."""
        return _row_dict(self._conn.execute(
            f"SELECT {_TASK_SELECT} FROM tasks WHERE id = ?", (task_id,)).fetchone())

    @_guarded
    def get_tasks(self, task_ids) -> list:
        """Rows for several ids (missing ids are skipped)."""
        ids = list(task_ids)
        out = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out.extend(dict(r) for r in self._conn.execute(
                f"SELECT {_TASK_SELECT} FROM tasks WHERE id IN ({marks})", chunk))
        return out

    @_guarded
    def find_tasks(self, status=None, queue=None, name=None, limit=50, offset=0,
                   order="id") -> list:
        """Tasks matching optional filters, newest first (order 'id' or 'finished')."""
        clause, params = _filters(status=status, queue=queue, name=name)
        sort = "finished_at DESC, id DESC" if order == "finished" else "id DESC"
        return [dict(r) for r in self._conn.execute(
            f"SELECT {_TASK_SELECT} FROM tasks {clause} ORDER BY {sort} LIMIT ? OFFSET ?",
            (*params, int(limit), int(offset)))]

    @_guarded
    def count_tasks(self, status=None, queue=None, name=None) -> int:
        """How many tasks match the optional filters."""
        clause, params = _filters(status=status, queue=queue, name=name)
        return self._conn.execute(f"SELECT COUNT(*) FROM tasks {clause}", params).fetchone()[0]

    @_guarded
    def queue_stats(self) -> list:
        """[{queue, status, count}] over all tasks."""
        return [dict(r) for r in self._conn.execute(
            "SELECT queue, status, COUNT(*) AS count FROM tasks "
            "GROUP BY status, queue ORDER BY queue, status")]

    @_guarded
    def list_queues(self) -> list:
        """Every queue name that has tasks or schedules, sorted."""
        return [r[0] for r in self._conn.execute(
            "SELECT DISTINCT queue FROM tasks UNION SELECT DISTINCT queue FROM schedules "
            "WHERE queue IS NOT NULL ORDER BY 1")]

    @_guarded
    def finish_window(self):
        """(earliest started_at, latest finished_at) over done tasks: a drain's span."""
        row = self._conn.execute("SELECT MIN(started_at), MAX(finished_at) FROM tasks "
                                 "WHERE status = 'done'").fetchone()
        return row[0], row[1]

    @_guarded
    def oldest_pending(self) -> list:
        """[{queue, oldest_run_at}]: the earliest due time of pending tasks per queue."""
        return [dict(r) for r in self._conn.execute(
            "SELECT queue, MIN(run_at) AS oldest_run_at FROM tasks WHERE status = 'pending' "
            "GROUP BY queue ORDER BY queue")]

    @_guarded
    def finished_buckets(self, since, bucket) -> list:
        """[{slot, status, count}]: tasks that finished since `since`, per `bucket` seconds.

        slot n covers [since + n*bucket, since + (n+1)*bucket). Statuses are done,
        failed and cancelled (the terms of idx_tasks_finished, so it is a range scan).
        """
        return [dict(r) for r in self._conn.execute(
            "SELECT CAST((finished_at - ?) / ? AS INTEGER) AS slot, status, COUNT(*) AS count "
            "FROM tasks WHERE status IN ('done', 'failed', 'cancelled') AND finished_at >= ? "
            "GROUP BY slot, status ORDER BY slot", (since, float(bucket), since))]

    @_guarded
    def active_workers(self, since) -> list:
        """Workers whose heartbeat is newer than `since`, with their running-task counts."""
        return [dict(r) for r in self._conn.execute(
            "SELECT w.worker_id, w.hostname, w.queues, w.concurrency, w.last_heartbeat, "
            "w.pid, (SELECT COUNT(*) FROM tasks t WHERE t.status = 'running' "
            "AND t.worker_id = w.worker_id) AS active_tasks "
            "FROM workers w WHERE w.last_heartbeat >= ? ORDER BY w.worker_id", (since,))]

    # ---- operator actions ----------------------------------------------

    @_guarded
    def cancel(self, task_id) -> bool:
        """Cancel a pending task; False when it is not pending."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE tasks SET status = 'cancelled', finished_at = ? "
                "WHERE id = ? AND status = 'pending'", (now(), task_id))
            return cur.rowcount == 1

    @_guarded
    def retry_failed(self, task_id=None, queue=None, name=None) -> int:
        """Put failed (or cancelled, when named by id) tasks back to pending, attempts reset.

        With task_id, that one task; else every failed task matching queue/name.
        """
        t = now()
        with self._write() as conn:
            if task_id is not None:
                cur = conn.execute(
                    "UPDATE tasks SET status = 'pending', attempts = 0, run_at = ?, "
                    "worker_id = NULL, finished_at = NULL "
                    "WHERE id = ? AND status IN ('failed', 'cancelled')", (t, task_id))
                return cur.rowcount
            clause, params = _filters(status="failed", queue=queue, name=name)
            cur = conn.execute(
                "UPDATE tasks SET status = 'pending', attempts = 0, run_at = ?, "
                f"worker_id = NULL, finished_at = NULL {clause}", (t, *params))
            return cur.rowcount

    @_guarded
    def purge(self, older_than, statuses=("done", "failed", "cancelled")) -> int:
        """Delete finished tasks that finished more than `older_than` seconds ago."""
        marks = ",".join("?" * len(statuses))
        with self._write() as conn:
            cur = conn.execute(
                f"DELETE FROM tasks WHERE status IN ({marks}) AND finished_at < ?",
                (*statuses, now() - older_than))
            return cur.rowcount

    # ---- schedules --------------------------------------------------------

    @_guarded
    def upsert_schedule(self, name, task_name, cron_expr, payload, queue, priority,
                        max_retries, tz, catchup, enabled, next_run) -> int:
        """Create a schedule, or update the one of that name; returns its id.

        next_run is only reset when the timing (cron or tz) changes, so re-registering
        at every import never skips or repeats an occurrence. enabled=None keeps an
        existing row's state (an operator's disable survives restarts); a new row
        starts enabled.
        """
        t = now()
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO schedules (name, task_name, cron_expr, payload, queue, priority, "
                "max_retries, tz, catchup, enabled, next_run, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET task_name = excluded.task_name, "
                "payload = excluded.payload, queue = excluded.queue, "
                "priority = excluded.priority, max_retries = excluded.max_retries, "
                "catchup = excluded.catchup, enabled = COALESCE(?, schedules.enabled), "
                "next_run = CASE WHEN schedules.cron_expr IS NOT excluded.cron_expr "
                "OR schedules.tz IS NOT excluded.tz OR schedules.next_run IS NULL "
                "THEN excluded.next_run ELSE schedules.next_run END, "
                "cron_expr = excluded.cron_expr, tz = excluded.tz, "
                "updated_at = excluded.updated_at RETURNING id",
                (name, task_name, cron_expr, payload, queue, priority, max_retries, tz,
                 catchup, 0 if enabled is False else 1, next_run, t, t,
                 None if enabled is None else int(bool(enabled)))).fetchone()
            return row[0]

    @_guarded
    def list_schedules(self) -> list:
        """Every schedule row, by name."""
        return [dict(r) for r in self._conn.execute("SELECT * FROM schedules ORDER BY name")]

    @_guarded
    def get_schedule(self, name):
        """One schedule row by name, or None."""
        return _row_dict(self._conn.execute(
            "SELECT * FROM schedules WHERE name = ?", (name,)).fetchone())

    @_guarded
    def set_schedule_enabled(self, name_or_id, enabled, next_run=None) -> bool:
        """Enable or disable a schedule by name or id; enabling may set a fresh next_run."""
        col = "id" if isinstance(name_or_id, int) else "name"
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE schedules SET enabled = ?, next_run = COALESCE(?, next_run), "
                f"updated_at = ? WHERE {col} = ?",
                (1 if enabled else 0, next_run, now(), name_or_id))
            return cur.rowcount == 1

    @_guarded
    def delete_schedule(self, schedule_id) -> bool:
        """Delete a schedule row by id; False when there was none."""
        with self._write() as conn:
            return conn.execute("DELETE FROM schedules WHERE id = ?",
                                (schedule_id,)).rowcount == 1

    @_guarded
    def due_schedules(self, at) -> list:
        """Enabled schedules whose next_run has come."""
        return [dict(r) for r in self._conn.execute(
            "SELECT * FROM schedules WHERE enabled = 1 AND next_run <= ? ORDER BY next_run",
            (at,))]

    @_guarded
    def next_schedule_time(self):
        """The earliest next_run of any enabled schedule, or None."""
        return self._conn.execute(
            "SELECT MIN(next_run) FROM schedules WHERE enabled = 1").fetchone()[0]

    @_guarded
    def park_schedule(self, schedule_id, expected_next_run) -> bool:
        """Clear the next_run of a schedule whose next time cannot be computed (a bad
        cron or zone in the row), so it stops coming due instead of being retried in
        a loop. Registering or enabling it again sets a fresh next_run. Guarded like
        fire_schedule: False when another scheduler changed the row first."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE schedules SET next_run = NULL, updated_at = ? "
                "WHERE id = ? AND next_run = ?", (now(), schedule_id, expected_next_run))
            return cur.rowcount == 1

    @_guarded
    def fire_schedule(self, schedule_id, expected_next_run, new_next_run, task_rows):
        """Advance a schedule from expected_next_run to new_next_run and enqueue its tasks,
        atomically. The compare-and-set makes any number of schedulers fire each
        occurrence once. Returns the new task ids, or None when another scheduler won."""
        t = now()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE schedules SET next_run = ?, last_run = ? "
                "WHERE id = ? AND next_run = ? AND enabled = 1",
                (new_next_run, t, schedule_id, expected_next_run))
            if cur.rowcount != 1:
                return None
            ids = []
            for r in task_rows:
                ids.append(conn.execute(_INSERT_TASK, (
                    r[0], r[1], r[2], r[3], r[4], t if r[5] is None else r[5], t,
                    r[6], r[7], r[8], r[9])).lastrowid)
            return ids


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

    IMMEDIATE takes the write lock up front, so two writers never deadlock
    upgrading a read lock; the busy timeout makes the second one wait. Inside
    an open transaction (Store.batch()) it joins that one instead.
    """

    __slots__ = ("conn", "outer")

    def __init__(self, conn):
        self.conn = conn
        self.outer = False

    def __enter__(self):
        self.outer = self.conn.in_transaction
        if not self.outer:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if self.outer:
            return False
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.rollback()
        return False


class _GuardedBatch(_Transaction):
    """A Store.batch() transaction whose sqlite3 errors become DatabaseErrors."""

    __slots__ = ("store",)

    def __init__(self, store):
        super().__init__(store._conn)
        self.store = store

    def __enter__(self):
        try:
            return super().__enter__()
        except sqlite3.Error as exc:
            raise _explain(exc, self.store.path, self.store.busy_timeout) from exc

    def __exit__(self, exc_type, exc, tb):
        try:
            return super().__exit__(exc_type, exc, tb)
        except sqlite3.Error as err:
            if self.conn.in_transaction:
                self.conn.rollback()
            raise _explain(err, self.store.path, self.store.busy_timeout) from err


_local = threading.local()


def get_store(path=None) -> Store:
    """The calling thread's Store for `path` (default: LITEQ_DB, read now).

    Stores are cached per thread and per process: a forked child never reuses its
    parent's connection.
    """
    path = path or settings.db_path()
    pid = os.getpid()
    cache = getattr(_local, "stores", None)
    if cache is None or _local.pid != pid:
        cache = _local.stores = {}
        _local.pid = pid
    store = cache.get(path)
    if store is None:
        store = cache[path] = Store(path)
    return store


def forget_stores() -> None:
    """Drop this thread's cached Stores (after a fork, or when LITEQ_DB changes in tests)."""
    cache = getattr(_local, "stores", None) or {}
    for store in cache.values():
        try:
            store.close()
        except sqlite3.Error:
            pass
    _local.stores = {}
    _local.pid = os.getpid()
