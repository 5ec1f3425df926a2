"""The PostgreSQL schema: tables, indexes, and their versions.

The tables live in the connection's current schema (the first existing schema of
its search_path), so `?options=-csearch_path%3Dmyqueue` in the URL puts a queue
in the schema `myqueue`. Each applied version is a row of liteq_migrations.
ensure_schema() migrates under a transaction-scoped advisory lock keyed on the
schema, so daemons that start together migrate once, while queues in other
schemas (or databases: advisory locks are per database) never wait for it.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.rows import DictRow

from ...errors import DatabaseError
from ..ddl import ddl_allowed, not_ready
from .connection import as_query, one

Conn = psycopg.Connection[DictRow]

SCHEMA_VERSION = 6

# pg_advisory_xact_lock(LOCK_CLASS, hashtext(schema)): LiteQ's own key space.
LOCK_CLASS = 0x4C6951  # "LiQ"

_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS liteq_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

# payload and result are text, not jsonb: the daemon hands the child exactly the
# JSON text the producer wrote, and the hot path (enqueue, claim, record) pays
# no parse or normalisation (jsonb would also reorder keys and drop duplicates).
# Nothing queries inside them.
#
# Autovacuum: every task is inserted, updated at least twice (claimed, finished)
# and deleted by purge, so dead rows pile up fast. With the default scale factor
# (0.2) a table of ten million finished rows collects two million dead ones
# before a vacuum, and the claim index fills with entries of rows long gone.
# A 1 % threshold keeps that churn vacuumed in small, frequent passes; analyze
# at 2 % keeps the planner's view of the pending/finished mix current.
# With these, autovacuum takes the table at each of its rounds, so what bounds
# the dead rows is autovacuum_naptime, a server setting (1 min by default): the
# table holds about one naptime's churn. tests/bench_pg_bloat.py --cluster,
# pushing 1,000,000 tasks at 6,000 to 10,000 a second with retention, levels off
# at 220 to 245 MB with a 1 min naptime and 55 to 80 MB with 10 s. No table
# setting shortens that. On a server whose autovacuum is off, LiteQ vacuums by the same
# thresholds itself (vacuum.py).
#
# fillfactor stays at 100: every update of a task changes its status, which
# the partial indexes' WHERE clauses name, so no update can be HOT and free space
# kept on each page would only make the table bigger. (workers is the opposite:
# its heartbeat updates touch no indexed column, so they are HOT with room.)
# When autovacuum vacuums tasks: more dead rows than VACUUM_THRESHOLD plus
# VACUUM_SCALE_FACTOR times the live ones (vacuum.py applies the same rule when
# the server's autovacuum is off).
VACUUM_THRESHOLD = 1000
VACUUM_SCALE_FACTOR = 0.01

_TASKS_DDL = """
CREATE TABLE tasks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    payload text NOT NULL,
    queue text NOT NULL DEFAULT 'default',
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    priority integer NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    max_retries integer NOT NULL DEFAULT 3,
    worker_id text,
    run_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    result text,
    error text,
    timeout double precision,
    retry_delay double precision NOT NULL DEFAULT 1.0,
    retry_backoff double precision NOT NULL DEFAULT 2.0,
    retry_max_delay double precision NOT NULL DEFAULT 300.0
) WITH (autovacuum_vacuum_scale_factor = {scale}, autovacuum_vacuum_threshold = {threshold},
        autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02)
""".format(scale=VACUUM_SCALE_FACTOR, threshold=VACUUM_THRESHOLD)

_WORKERS_DDL = """
CREATE TABLE workers (
    worker_id text PRIMARY KEY,
    hostname text,
    queues text,
    concurrency integer,
    last_heartbeat timestamptz,
    pid integer,
    process_started timestamptz,
    started_at timestamptz
) WITH (fillfactor = 50)
"""

_SCHEDULES_DDL = """
CREATE TABLE schedules (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    task_name text NOT NULL,
    cron_expr text NOT NULL,
    payload text NOT NULL DEFAULT '{"args":[],"kwargs":{}}',
    queue text,
    priority integer,
    max_retries integer,
    tz text,
    catchup text NOT NULL DEFAULT 'coalesce',
    enabled boolean NOT NULL DEFAULT true,
    next_run timestamptz,
    last_run timestamptz,
    created_at timestamptz,
    updated_at timestamptz
)
"""

_INDEXES = (
    # The claim, exactly: pending rows of one queue in claim order (see tasks.CLAIM).
    "CREATE INDEX tasks_claim ON tasks (queue, priority DESC, run_at, id) "
    "WHERE status = 'pending'",
    # Reclaim and "active tasks per worker".
    "CREATE INDEX tasks_running ON tasks (worker_id) WHERE status = 'running'",
    # Monitor lists of finished tasks, newest finish first (reads.find_tasks's
    # order), and purge by age. Partial, so an enqueue (a pending row) pays nothing.
    "CREATE INDEX tasks_finished ON tasks (status, finished_at DESC NULLS LAST, id DESC) "
    "WHERE status IN ('done', 'failed', 'cancelled')",
    "CREATE INDEX schedules_due ON schedules (next_run) WHERE enabled",
)

# Version 2, unique tasks: at most one pending or running task per unique_key.
# Adding a nullable column without a default rewrites nothing. Rows without a key
# are not in the index, so a plain enqueue pays nothing for it; tasks.ENQUEUE_UNIQUE
# names this predicate in its ON CONFLICT target.
_UNIQUE_KEY = (
    "ALTER TABLE tasks ADD COLUMN unique_key text",
    "CREATE UNIQUE INDEX tasks_unique_key ON tasks (unique_key) "
    "WHERE unique_key IS NOT NULL AND status IN ('pending', 'running')",
)

# Version 3, dependencies: waiting_on counts a task's parents not done yet (a
# constant default: no rewrite), task_deps holds one row per (child, parent) edge,
# position keeping depends_on's order. The claim index gains waiting_on = 0, so a
# waiting task is never in it (tasks.CLAIM repeats this predicate exactly).
_DEPENDENCIES = (
    "ALTER TABLE tasks ADD COLUMN waiting_on integer NOT NULL DEFAULT 0",
    "CREATE TABLE task_deps (child_id bigint NOT NULL, parent_id bigint NOT NULL, "
    "position integer NOT NULL, PRIMARY KEY (child_id, parent_id))",
    "CREATE INDEX task_deps_parent ON task_deps (parent_id)",
    "DROP INDEX tasks_claim",
    "CREATE INDEX tasks_claim ON tasks (queue, priority DESC, run_at, id) "
    "WHERE status = 'pending' AND waiting_on = 0",
)

# Version 4, counts of big queues (counts.py): statistics of queue and status
# together (queues and statuses go together, one queue mostly done, another mostly
# pending, which the per-column statistics cannot see; the estimates of big groups
# are shared by the planner's figures), and an index of the pending tasks that
# wait for parents (tasks_claim has only the others), so both kinds of pending
# task are counted through an index. Only dependent tasks enter it.
_COUNTS = (
    "CREATE STATISTICS IF NOT EXISTS tasks_queue_status (mcv) ON queue, status FROM tasks",
    "CREATE INDEX tasks_waiting ON tasks (queue) WHERE status = 'pending' AND waiting_on > 0",
)

# Version 5, metrics and attempts (liteq/backends/stats.py says what each task_stats
# row means). task_stats is counted in the transaction that records the outcomes,
# so its counters only go up, whatever retention deletes; it is small, and its
# updates change no indexed column, so with room on each page they are HOT. Each
# cell is split into STAT_SHARDS rows (a writer picks one at random when it
# opens the backend; readers add them up), so daemons on several hosts seldom
# wait for each other's row locks on the same hot counter.
# task_errors keeps every failed attempt's error (tasks.error only the last); the
# deletes of tasks (prune, purge) delete their rows in the same statement. An
# upgraded queue keeps the last error each task holds; its counters start at zero.
_STATS = (
    "CREATE TABLE task_stats (queue text NOT NULL, name text NOT NULL, "
    "metric text NOT NULL, bucket integer NOT NULL, shard integer NOT NULL DEFAULT 0, "
    "count bigint NOT NULL DEFAULT 0, total double precision NOT NULL DEFAULT 0, "
    "PRIMARY KEY (queue, name, metric, bucket, shard)) "
    "WITH (fillfactor = 50)",
    "CREATE TABLE task_errors (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "task_id bigint NOT NULL, attempt integer NOT NULL, "
    "error text, finished_at timestamptz NOT NULL DEFAULT now())",
    "CREATE INDEX task_errors_task ON task_errors (task_id)",
    "INSERT INTO task_errors (task_id, attempt, error, finished_at) "
    "SELECT id, attempts, error, COALESCE(finished_at, started_at, created_at) "
    "FROM tasks WHERE error IS NOT NULL ORDER BY id",
)

STAT_SHARDS = 8

# version -> the statements that bring the schema from version - 1 to it.
# Version 6, rate limits: one GCRA bucket per rate-limited task name ("n:NAME") or
# queue ("q:QUEUE"), the theoretical time of its next start (backends/limits.py).
# Only claims of limited names and queues with due tasks touch it, under the
# key's advisory lock; its updates change no indexed column, so they are HOT with
# the room fillfactor leaves.
_RATE_LIMITS = (
    "CREATE TABLE rate_limits (key text PRIMARY KEY, tat double precision NOT NULL) "
    "WITH (fillfactor = 50)",
)

# version -> the statements that bring the schema from version - 1 to it.
_MIGRATIONS = {1: (_TASKS_DDL, _WORKERS_DDL, _SCHEDULES_DDL) + _INDEXES, 2: _UNIQUE_KEY,
               3: _DEPENDENCIES, 4: _COUNTS, 5: _STATS, 6: _RATE_LIMITS}


def _applied(conn: Conn, schema: str) -> int:
    """The schema's version (0: none), reading liteq_migrations only if it exists."""
    row = one(conn.execute("SELECT to_regclass(%s) IS NOT NULL AS present",
                           (sql.Identifier(schema, "liteq_migrations").as_string(conn),)))
    if not row["present"]:
        return 0
    version: int = one(conn.execute(sql.SQL("SELECT COALESCE(MAX(version), 0) AS v FROM {}")
                                    .format(sql.Identifier(schema, "liteq_migrations"))))["v"]
    return version


def _check_newer(version: int, schema: str) -> None:
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"the LiteQ tables in schema {schema!r} are at version {version}, newer than "
            f"this LiteQ understands ({SCHEMA_VERSION}); upgrade LiteQ")


def current_schema(conn: Conn) -> str:
    """The schema the connection's tables live in (the first existing one of its
    search_path); DatabaseError when none of them exists."""
    schema: str | None = one(conn.execute("SELECT current_schema() AS s"))["s"]
    if schema is None:
        path = one(conn.execute("SHOW search_path"))["search_path"]
        raise DatabaseError(f"no schema to create the LiteQ tables in: none of the "
                            f"search_path ({path}) exists; create it first")
    return schema


def schema_version(conn: Conn) -> tuple[str, int]:
    """(the schema, the version of its LiteQ tables; 0: none yet)."""
    schema = current_schema(conn)
    return schema, _applied(conn, schema)


def ensure_schema(conn: Conn, allow_ddl: bool | None = None) -> str:
    """Create or migrate the tables to SCHEMA_VERSION in the connection's current schema;
    returns that schema's name. Safe to call from any number of processes at once.

    allow_ddl None follows LITEQ_NO_DDL: when it is set, tables that are missing or
    older are a SchemaNotReady error naming `liteq db upgrade` instead.
    """
    schema, version = schema_version(conn)
    _check_newer(version, schema)
    if version == SCHEMA_VERSION:
        return schema
    if not ddl_allowed(allow_ddl):
        raise not_ready(f"schema {schema!r} of the PostgreSQL database", version,
                        SCHEMA_VERSION)
    migrate(conn)
    return schema


def migrate(conn: Conn) -> tuple[int, int]:
    """Bring the tables to SCHEMA_VERSION under the advisory lock, whatever LITEQ_NO_DDL
    says (`liteq db upgrade`); returns (version before, version after)."""
    schema = current_schema(conn)
    with conn.transaction():
        conn.execute(_LOCK, (LOCK_CLASS,))
        # Another process may have migrated while this one waited for the lock.
        conn.execute(as_query(_MIGRATIONS_DDL))
        version = before = _applied(conn, schema)
        _check_newer(version, schema)
        while version < SCHEMA_VERSION:
            version += 1
            for ddl in _MIGRATIONS[version]:
                conn.execute(as_query(ddl))
            conn.execute("INSERT INTO liteq_migrations (version) VALUES (%s)", (version,))
    return before, max(version, before)


_LOCK = "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))"


def migration_sql(conn: Conn) -> list[str]:
    """The statements migrate() would run, for a DBA to apply (empty when up to date).

    The script pins search_path to the queue's schema, so it creates the tables
    where LiteQ will look for them whoever runs it, and takes the same advisory lock.
    """
    schema, version = schema_version(conn)
    _check_newer(version, schema)
    if version == SCHEMA_VERSION:
        return []
    out = ["BEGIN", f"SET LOCAL search_path TO {sql.Identifier(schema).as_string(conn)}",
           _LOCK.replace("%s", str(LOCK_CLASS)), _MIGRATIONS_DDL.strip()]
    for v in range(version + 1, SCHEMA_VERSION + 1):
        out += [ddl.strip() for ddl in _MIGRATIONS[v]]
        out.append(f"INSERT INTO liteq_migrations (version) VALUES ({v})")
    out.append("COMMIT")
    return out
