"""`liteq db status`, `liteq db upgrade [--sql]` and LITEQ_NO_DDL (liteqd --no-ddl), on
both backends, with real CLI processes.

An out-of-date database is made by applying the real migrations of versions 1 and 2
only (the schema modules' own _MIGRATIONS), as LiteQ of that version left it.
"""

import json
import os
import signal
import sqlite3
import subprocess
import textwrap

import pytest

from liteq import backends
from liteq.backends.postgres import schema as pg_schema
from liteq.backends.sqlite import schema as lite_schema

from support.daemon_helpers import LITEQCTL, PYTHON
from support.processes import kill_group, wait_for
from support.task_table import task_row

LITEQ = os.path.join(os.path.dirname(PYTHON), "liteq")
LITEQD = os.path.join(os.path.dirname(PYTHON), "liteqd")
TARGET = lite_schema.SCHEMA_VERSION

APP = textwrap.dedent("""
    from liteq import task

    @task
    def add(a, b):
        return a + b
""")


def run(*argv, env=None, timeout=60):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def no_ddl_env(**extra):
    return {**os.environ, "LITEQ_NO_DDL": "1", **extra}


def _exists(db):
    return backends.is_postgres(db) or os.path.exists(backends.sqlite_path(db))


def _make_v2(db):
    """The tables as LiteQ's schema version 2 made them."""
    if backends.is_postgres(db):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(pg_schema._MIGRATIONS_DDL)
            for v in (1, 2):
                for ddl in pg_schema._MIGRATIONS[v]:
                    conn.execute(ddl)
                conn.execute("INSERT INTO liteq_migrations (version) VALUES (%s)", (v,))
    else:
        conn = sqlite3.connect(backends.sqlite_path(db), isolation_level=None)
        try:
            for v in (0, 1):
                lite_schema._MIGRATIONS[v](conn)
            conn.execute("PRAGMA user_version = 2")
        finally:
            conn.close()


def _schema_of(db):
    """What the schema consists of, comparable between two databases."""
    if backends.is_postgres(db):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            cols = conn.execute(
                "SELECT table_name, column_name, data_type, column_default, is_nullable "
                "FROM information_schema.columns WHERE table_schema = current_schema() "
                "ORDER BY 1, 2").fetchall()
            idx = conn.execute(
                "SELECT indexname, replace(indexdef, current_schema() || '.', '') "
                "FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1").fetchall()
            stats = conn.execute("SELECT stxname FROM pg_statistic_ext s JOIN pg_namespace n "
                                 "ON n.oid = s.stxnamespace WHERE n.nspname = "
                                 "current_schema()").fetchall()
            versions = conn.execute("SELECT version FROM liteq_migrations "
                                    "ORDER BY 1").fetchall()
        return cols, idx, stats, versions
    conn = sqlite3.connect(backends.sqlite_path(db))
    try:
        objects = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                               "ORDER BY type, name").fetchall()
        return objects, conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def _apply_script(db, script):
    """Run the SQL a DBA was given, as they would (psql / the sqlite3 shell)."""
    if backends.is_postgres(db):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(script)
    else:
        conn = sqlite3.connect(backends.sqlite_path(db), isolation_level=None)
        try:
            conn.executescript(script)
        finally:
            conn.close()


def _twin(db, workdir):
    """A second, empty database of the same kind (a new schema on PostgreSQL)."""
    if backends.is_postgres(db):
        from support import pg_helpers
        name, url = pg_helpers.create_schema(pg_helpers.server_url())
        return url, lambda: pg_helpers.drop_schema(pg_helpers.server_url(), name)
    return os.path.join(workdir, "twin.db"), lambda: None


def _enqueue(db, env):
    code = "import sys; sys.path.insert(0, sys.argv[1]); import app; print(app.add.delay(1, 2))"
    return run(PYTHON, "-c", code, os.environ["APP_DIR"], env=dict(env, LITEQ_DB=db))


@pytest.fixture
def app_dir(workdir, monkeypatch):
    path = os.path.join(workdir, "app.py")
    with open(path, "w") as f:
        f.write(APP)
    monkeypatch.setenv("APP_DIR", workdir)
    return workdir


# ---- status and upgrade ---------------------------------------------------------------

def test_status_and_upgrade_of_a_new_database(db):
    out = run(LITEQ, "db", "status", "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert (st["version"], st["target"], st["up_to_date"]) == (0, TARGET, False)
    assert st["pending"] == list(range(1, TARGET + 1))
    assert st["database"] == backends.identity_of(db)
    assert st["exists"] == backends.is_postgres(db)
    assert _exists(db) == backends.is_postgres(db)      # status never creates an SQLite file
    text = run(LITEQ, "db", "status").stdout
    assert "version   0" in text and f"target    {TARGET}" in text and "liteq db upgrade" in text

    out = run(LITEQ, "db", "upgrade")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (f"upgraded {backends.identity_of(db)} "
                                  f"({'postgresql' if backends.is_postgres(db) else 'sqlite'}): "
                                  f"schema version 0 -> {TARGET}")
    st = json.loads(run(LITEQ, "db", "status", "--json").stdout)
    assert st["version"] == TARGET and st["up_to_date"] and st["pending"] == []
    assert "up to date" in run(LITEQ, "db", "status").stdout
    out = run(LITEQ, "db", "upgrade", "--json")
    assert json.loads(out.stdout)["applied"] == []
    assert "nothing to do" in run(LITEQ, "db", "upgrade").stdout
    assert "nothing to apply" in run(LITEQ, "db", "upgrade", "--sql").stdout


def test_upgrade_reports_from_and_to_of_an_old_database(db):
    _make_v2(db)
    st = json.loads(run(LITEQ, "db", "status", "--json").stdout)
    assert (st["version"], st["pending"]) == (2, list(range(3, TARGET + 1)))
    out = run(LITEQ, "db", "upgrade", "--json")
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert (done["from"], done["to"], done["applied"]) == (2, TARGET, list(range(3, TARGET + 1)))


def test_upgrade_sql_applied_by_hand_equals_the_upgrade(db, workdir):
    _make_v2(db)
    before = _schema_of(db)
    out = run(LITEQ, "db", "upgrade", "--sql")
    assert out.returncode == 0, out.stderr
    script = out.stdout
    assert script.startswith(f"-- LiteQ schema upgrade of {backends.identity_of(db)}")
    assert f"version 2 -> {TARGET}" in script.splitlines()[0]
    assert _schema_of(db) == before                     # --sql changed nothing
    assert json.loads(run(LITEQ, "db", "status", "--json").stdout)["version"] == 2

    twin, drop = _twin(db, workdir)
    try:
        _make_v2(twin)
        assert run(LITEQ, "db", "upgrade", "--db", twin).returncode == 0
        _apply_script(db, script)
        assert _schema_of(db) == _schema_of(twin)
    finally:
        drop()
    assert json.loads(run(LITEQ, "db", "status", "--json").stdout)["up_to_date"]


def test_upgrade_sql_of_a_new_database_creates_everything(db, workdir):
    out = run(LITEQ, "db", "upgrade", "--sql", "--json")
    assert out.returncode == 0, out.stderr
    statements = json.loads(out.stdout)["statements"]
    assert any("CREATE TABLE" in s and "tasks" in s for s in statements)
    if not backends.is_postgres(db):
        assert not _exists(db)
    twin, drop = _twin(db, workdir)
    try:
        assert run(LITEQ, "db", "upgrade", "--db", twin).returncode == 0
        _apply_script(db, run(LITEQ, "db", "upgrade", "--sql").stdout)
        assert _schema_of(db) == _schema_of(twin)
    finally:
        drop()


def test_db_command_errors(db, workdir):
    out = run(LITEQ, "db", "status", "--db", "mysql://x/y")
    assert out.returncode == 2 and "unknown database URL scheme" in out.stderr
    out = run(LITEQ, "db", "frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr
    out = run(LITEQ, "db", "upgrade", "--db", os.path.join(workdir, "no", "such", "dir.db"))
    assert out.returncode == 1 and "does not exist" in out.stderr


# ---- LITEQ_NO_DDL -------------------------------------------------------------------------

def test_no_ddl_app_refuses_a_missing_schema_and_works_after_upgrade(db, app_dir):
    out = _enqueue(db, no_ddl_env())
    assert out.returncode != 0
    assert "SchemaNotReady" in out.stderr and "liteq db upgrade" in out.stderr
    assert "LITEQ_NO_DDL" in out.stderr
    if not backends.is_postgres(db):
        assert not _exists(db)                           # not even an empty file
    else:
        assert json.loads(run(LITEQ, "db", "status", "--json").stdout)["version"] == 0
    # `liteq db upgrade` is the step LITEQ_NO_DDL asks for: it does not stop it.
    assert run(LITEQ, "db", "upgrade", env=no_ddl_env()).returncode == 0
    out = _enqueue(db, no_ddl_env())
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 1


def test_no_ddl_refuses_an_old_schema_naming_its_version(db, app_dir):
    _make_v2(db)
    out = _enqueue(db, no_ddl_env())
    assert out.returncode != 0
    assert "at schema version 2" in out.stderr and f"needs version {TARGET}" in out.stderr
    assert json.loads(run(LITEQ, "db", "status", "--json").stdout)["version"] == 2
    out = _enqueue(db, dict(os.environ, LITEQ_NO_DDL="0"))   # off: migrates as always
    assert out.returncode == 0, out.stderr
    assert json.loads(run(LITEQ, "db", "status", "--json").stdout)["up_to_date"]


def test_no_ddl_bad_value_is_a_clear_error(db, app_dir):
    out = _enqueue(db, no_ddl_env(LITEQ_NO_DDL="sometimes"))
    assert out.returncode != 0 and "LITEQ_NO_DDL must be 1 or 0" in out.stderr


def test_liteqd_no_ddl_exits_with_the_reason_then_runs_after_upgrade(db, app_dir, workdir):
    app = os.path.join(app_dir, "app.py")
    out = run(LITEQD, "--app", app, "--concurrency", "1", "--no-ddl", timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("liteqd: error: ") and "liteq db upgrade" in out.stderr
    assert _exists(db) == backends.is_postgres(db)      # no SQLite file was made
    # The variable does the same as the flag.
    out = run(LITEQD, "--app", app, "--concurrency", "1", env=no_ddl_env(), timeout=60)
    assert out.returncode == 1 and "liteq db upgrade" in out.stderr

    assert run(LITEQ, "db", "upgrade").returncode == 0
    log = open(os.path.join(workdir, "daemon.log"), "w")
    proc = subprocess.Popen([LITEQD, "--app", app, "--concurrency", "1", "--no-ddl"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: run(LITEQCTL, "ping", timeout=30).returncode == 0 or
                 proc.poll() is not None, 30, "liteqd --no-ddl never answered")
        assert proc.poll() is None, open(log.name).read()
        tid = int(_enqueue(db, no_ddl_env()).stdout)
        wait_for(lambda: task_row(db, tid)["status"] == "done", 30, "the task never ran")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            kill_group(proc)
        log.close()
