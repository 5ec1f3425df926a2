"""liteq.using(conn): tasks written in the app's own transaction exist if and only if
it commits, on both backends, with a real daemon where one runs them.

The app's connection is a plain psycopg 3 connection to the server (so its
search_path is not LiteQ's test schema) or a plain sqlite3 connection to the queue's
file, as an app would open them.
"""

import asyncio
import contextlib
import os
import select
import sqlite3
import threading
import time

import pytest

import liteq
from liteq import ConfigError, backends

from support import pg_helpers
from support.daemon_helpers import load_app_module
from support.task_table import count_tasks, task_row, task_rows, wait_all, wait_status

WAKE_TIMEOUT = 10.0


def _is_pg(db):
    return backends.is_postgres(db)


@contextlib.contextmanager
def app_connection(db, **options):
    """The app's own connection to the queue's database (closed afterwards)."""
    if _is_pg(db):
        import psycopg
        conn = psycopg.connect(pg_helpers.server_url(), **options)
    else:
        conn = sqlite3.connect(db, timeout=10, **options)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def wake_channel(db):
    """The daemon's end of the wake-up channel, opened by the test in its place."""
    channel = backends.get_backend(db).open_wake_channel(os.environ["LITEQ_SOCKET"])
    try:
        yield channel
    finally:
        channel.close()


def next_wake(channel):
    """Wait for the channel to become readable; returns drain()'s (due_now, due_later)."""
    readable, _, _ = select.select([channel], [], [], WAKE_TIMEOUT)
    assert readable, f"no wake-up within {WAKE_TIMEOUT} s"
    return channel.drain()


def search_path(conn):
    return conn.execute("SELECT current_setting('search_path')").fetchone()[0]


def test_a_rollback_leaves_no_task_and_wakes_nothing(db, clean_registry):
    app = load_app_module()
    with wake_channel(db) as channel, app_connection(db) as conn:
        before = search_path(conn) if _is_pg(db) else None
        with liteq.using(conn):
            # Due in 1000 s: its wake-up, if one were sent, would show as a later due time.
            doomed = app.add.apply_async((1, 2), countdown=1000)
            assert backends.get_backend().get_task(doomed)["status"] == "pending"
        conn.rollback()
        assert task_row(db, doomed) is None
        assert count_tasks(db) == 0
        if _is_pg(db):
            assert search_path(conn) == before  # the app's own search_path is back
        # A committed task's wake-up comes next on the channel; the rolled-back one's
        # would have come before it.
        with liteq.using(conn):
            kept = app.add.delay(2, 3)
            conn.commit()
        due_now, due_later = next_wake(channel)
    assert due_now and due_later is None, (due_now, due_later)
    assert task_row(db, kept)["status"] == "pending"


def test_a_committed_task_runs_with_the_apps_rows(db, daemons, app):
    daemons.start()
    with app_connection(db) as conn:
        conn.execute("CREATE TEMP TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
        with liteq.using(conn):
            conn.execute("INSERT INTO orders VALUES (1, 42)")
            task_id = app.add.delay(40, 2)
        conn.commit()
        assert conn.execute("SELECT total FROM orders").fetchone()[0] == 42
    st = wait_status(task_id, daemons=daemons)
    assert st["status"] == "done" and st["result"] == 42


def test_the_daemon_never_sees_the_task_before_the_commit(db, daemons, app, workdir):
    daemons.start()   # polls every 0.5 s besides its wake-ups
    trace = os.path.join(workdir, "ran.txt")
    with app_connection(db) as conn:
        with liteq.using(conn):
            task_id = app.record.delay(trace, 1)
        time.sleep(1.5)   # three poll intervals of the daemon, the transaction still open
        assert task_row(db, task_id) is None
        assert not os.path.exists(trace)
        conn.commit()
    assert wait_status(task_id, daemons=daemons)["status"] == "done"
    with open(trace) as f:
        assert f.read().split()[0] == "1"


def test_starmap_and_chain_in_the_transaction(db, daemons, app):
    daemons.start()
    with app_connection(db) as conn:
        with liteq.using(conn):
            dropped = app.add.starmap([(1, 1), (2, 2)]) + liteq.chain(app.add.s(1, 2),
                                                                  app.add.s(3, 4))
        conn.rollback()
        assert task_rows(db, dropped) == {}
        with liteq.using(conn):
            mapped = app.add.starmap([(1, 1), (2, 2), (3, 3)])
            chained = liteq.chain(app.add.s(1, 2), app.add.s(3, 4))
            assert task_rows(db, mapped + chained) == {}
        conn.commit()
    rows = wait_all(mapped + chained, daemons=daemons)
    assert [rows[i]["status"] for i in mapped + chained] == ["done"] * 5
    assert [liteq.get_task_status(i)["result"] for i in mapped] == [2, 4, 6]


def test_a_connection_in_autocommit_mode_is_refused(db, backend):
    options = {"autocommit": True} if _is_pg(db) else {"isolation_level": None}
    with app_connection(db, **options) as conn:
        with pytest.raises(ConfigError, match="autocommit"):
            with liteq.using(conn):
                pytest.fail("the block ran")
    assert count_tasks(db) == 0


def test_a_connection_to_another_database_is_refused(db, backend, workdir):
    if _is_pg(db):
        import psycopg
        other = pg_helpers.with_query(pg_helpers.server_url(), dbname="postgres")
        conn = psycopg.connect(other)
    else:
        conn = sqlite3.connect(os.path.join(workdir, "app.db"))
    try:
        with pytest.raises(ConfigError, match="not to LiteQ's database"):
            with liteq.using(conn):
                pytest.fail("the block ran")
    finally:
        conn.close()
    assert count_tasks(db) == 0


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_an_autocommit_connection_inside_a_transaction_block_is_used(db, clean_registry):
    app = load_app_module()
    with app_connection(db, autocommit=True) as conn:
        with conn.transaction(), liteq.using(conn):
            task_id = app.add.delay(1, 2)
            assert task_row(db, task_id) is None
        assert task_row(db, task_id)["status"] == "pending"


def test_other_threads_enqueue_on_their_own(db, clean_registry):
    app = load_app_module()
    ids = []
    with app_connection(db) as conn:
        with liteq.using(conn):
            worker = threading.Thread(target=lambda: ids.append(app.add.delay(5, 5)))
            worker.start()
            worker.join()
            inside = app.add.delay(1, 1)
            # The thread's task committed on LiteQ's own connection; this one waits.
            assert task_row(db, ids[0])["status"] == "pending"
            assert task_row(db, inside) is None
        conn.rollback()
    assert task_row(db, ids[0]) is not None and task_row(db, inside) is None


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_an_aborted_transaction_is_a_database_error(db, backend, clean_registry):
    import psycopg
    app = load_app_module()
    with app_connection(db) as conn:
        with liteq.using(conn):
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
            with pytest.raises(liteq.DatabaseError, match="aborted"):
                app.add.delay(1, 2)
        # Entering the block in a transaction already aborted: the same error.
        with pytest.raises(liteq.DatabaseError, match="aborted"):
            with liteq.using(conn):
                pytest.fail("the block ran")
    assert count_tasks(db) == 0


def test_adelay_in_the_block_joins_the_transaction(db, clean_registry):
    app = load_app_module()

    async def enqueue(conn):
        with liteq.using(conn):
            return await app.add.adelay(1, 2)

    with app_connection(db) as conn:
        dropped = asyncio.run(enqueue(conn))
        assert task_row(db, dropped) is None
        conn.rollback()
        assert count_tasks(db) == 0
        kept = asyncio.run(enqueue(conn))
        conn.commit()
    assert count_tasks(db) == 1 and task_row(db, kept)["status"] == "pending"


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_a_connection_already_on_liteqs_schema_is_used_as_it_is(db, clean_registry):
    import psycopg
    app = load_app_module()
    with psycopg.connect(db) as conn:   # LiteQ's URL: its schema leads the search_path
        before = search_path(conn)
        with liteq.using(conn):
            task_id = app.add.delay(1, 2)
        assert search_path(conn) == before
        conn.rollback()
        assert task_row(db, task_id) is None
        with liteq.using(conn):
            task_id = app.add.delay(1, 2)
        conn.commit()
    assert task_row(db, task_id)["status"] == "pending"


@pytest.mark.sqlite_only
def test_a_transaction_on_a_file_without_liteqs_tables_is_refused_at_once(db_path):
    # LiteQ's own connection would create the tables and wait for the app's write lock.
    with app_connection(db_path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO orders VALUES (1)")
        with pytest.raises(ConfigError, match="tables are not in"):
            with liteq.using(conn):
                pytest.fail("the block ran")
        conn.rollback()
        with liteq.using(conn):   # outside a transaction: LiteQ creates them first
            pass
