"""liteq.using() with SQLAlchemy: a Connection or a Session (an ORM one and a
scoped_session, as Flask-SQLAlchemy's db.session is) writes the task in its
transaction, on both backends, with a real daemon running what was committed.

The app's engine is a real SQLAlchemy engine on the queue's database: the psycopg 3
driver (postgresql+psycopg://) to the test server, not on LiteQ's schema, or
sqlite:/// on the queue's file.
"""

import contextlib
import os
import time

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

import liteq
from liteq import ConfigError, backends

from support import pg_helpers
from support.daemon_helpers import load_app_module
from support.task_table import count_tasks, task_row, wait_status


def _url(db, path=None):
    """The SQLAlchemy URL of the queue's database (or of another SQLite file)."""
    if path is None and backends.is_postgres(db):
        return "postgresql+psycopg://" + pg_helpers.server_url().split("://", 1)[1]
    return "sqlite:///" + os.path.abspath(path or db)


@contextlib.contextmanager
def engine_for(db, **options):
    """A real engine on the queue's database, disposed of afterwards."""
    engine = sa.create_engine(_url(db), **options)
    try:
        yield engine
    finally:
        engine.dispose()


class Base(orm.DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "lq_sa_orders"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    total: orm.Mapped[int]


@contextlib.contextmanager
def orders_table(engine):
    """The app's own table (dropped afterwards: the PostgreSQL one is in `public`)."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        yield
    finally:
        Base.metadata.drop_all(engine)


def test_a_connection_commits_or_rolls_back_the_task_with_its_rows(db, daemons, app):
    daemons.start()
    with engine_for(db) as engine, orders_table(engine):
        with engine.connect() as conn:
            with liteq.using(conn):
                conn.execute(sa.insert(Order).values(id=1, total=5))
                dropped = app.add.delay(1, 1)
            conn.rollback()
            assert task_row(db, dropped) is None
            with liteq.using(conn):
                conn.execute(sa.insert(Order).values(id=2, total=42))
                kept = app.add.delay(40, 2)
                assert task_row(db, kept) is None   # not committed yet
                conn.commit()
            assert conn.execute(sa.select(Order.id)).scalars().all() == [2]
    st = wait_status(kept, daemons=daemons)
    assert st["status"] == "done" and st["result"] == 42
    assert count_tasks(db) == 1   # (SQLite may give the rolled-back task's id again)


def test_a_session_commits_or_rolls_back_the_task_with_its_objects(db, daemons, app):
    daemons.start()
    with engine_for(db) as engine, orders_table(engine):
        with orm.Session(engine) as session:
            with liteq.using(session):
                session.add(Order(id=1, total=1))
                dropped = app.add.delay(1, 1)
            session.rollback()
            assert task_row(db, dropped) is None
            with liteq.using(session):
                session.add(Order(id=2, total=2))
                kept = app.add.delay(2, 2)
                session.commit()
            assert session.scalars(sa.select(Order.id)).all() == [2]
    assert wait_status(kept, daemons=daemons)["result"] == 4
    assert count_tasks(db) == 1


def test_a_scoped_session_is_used_like_flask_sqlalchemys(db, daemons, app, workdir):
    daemons.start()
    trace = os.path.join(workdir, "ran.txt")
    with engine_for(db) as engine, orders_table(engine):
        session = orm.scoped_session(orm.sessionmaker(engine))
        try:
            with liteq.using(session):
                session.add(Order(id=7, total=7))
                task_id = app.record.delay(trace, 7)
            # The session's transaction is open: no daemon sees the task (it polls
            # every 0.5 s), and it has not run.
            time.sleep(1.5)
            assert task_row(db, task_id) is None and not os.path.exists(trace)
            session.commit()
        finally:
            session.remove()
    assert wait_status(task_id, daemons=daemons)["status"] == "done"
    with open(trace) as f:
        assert f.read().split()[0] == "7"


def test_an_engine_is_refused_with_a_hint(db, backend, clean_registry):
    with engine_for(db) as engine:
        with pytest.raises(ConfigError, match="not the Engine"):
            with liteq.using(engine):
                pytest.fail("the block ran")


def test_an_autocommit_connection_is_refused(db, backend, clean_registry):
    load_app_module()
    with engine_for(db, isolation_level="AUTOCOMMIT") as engine, engine.connect() as conn:
        with pytest.raises(ConfigError, match="autocommit"):
            with liteq.using(conn):
                pytest.fail("the block ran")
    assert count_tasks(db) == 0


def test_a_connection_to_another_database_is_refused(db, backend, workdir):
    if backends.is_postgres(db):
        url = _url(db).rsplit("/", 1)[0] + "/postgres"
    else:
        url = _url(db, path=os.path.join(workdir, "app.db"))
    engine = sa.create_engine(url)
    try:
        with orm.Session(engine) as session:
            with pytest.raises(ConfigError, match="not to LiteQ's database"):
                with liteq.using(session):
                    pytest.fail("the block ran")
    finally:
        engine.dispose()
    assert count_tasks(db) == 0


def test_an_async_connection_is_refused(db, backend):
    from sqlalchemy.ext.asyncio import AsyncSession
    with engine_for(db) as engine:
        with pytest.raises(ConfigError, match="synchronous"):
            with liteq.using(AsyncSession()):
                pytest.fail("the block ran")


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_an_async_engines_connection_is_refused_by_name(db, backend):
    """An async engine's connection (psycopg's async driver) and the sync view of it
    are refused, naming what to use."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def check():
        engine = create_async_engine(_url(db))
        try:
            async with engine.connect() as aconn:
                with pytest.raises(ConfigError, match="synchronous"):
                    with liteq.using(aconn):
                        pytest.fail("the block ran")
                with pytest.raises(ConfigError, match=r"async SQLAlchemy engine.*"
                                                      r"postgresql\+psycopg://"):
                    with liteq.using(aconn.sync_connection):
                        pytest.fail("the block ran")
        finally:
            await engine.dispose()

    asyncio.run(check())


@pytest.mark.parametrize("where", ["same database", "another database"])
def test_delay_on_commit_enqueues_with_the_sessions_commit_only(db, daemons, app, workdir,
                                                                where):
    from liteq.contrib.sqlalchemy import delay_on_commit
    daemons.start()
    if where == "same database":
        engine = sa.create_engine(_url(db))
    else:   # the app's own SQLite file, not LiteQ's: enqueued after the commit
        engine = sa.create_engine(_url(db, path=os.path.join(workdir, "app.db")))
    try:
        with orders_table(engine), orm.Session(engine) as session:
            session.add(Order(id=1, total=1))
            dropped = delay_on_commit(session, app.add, 1, 1)
            session.rollback()
            session.add(Order(id=2, total=2))
            kept = delay_on_commit(session, app.add, 2, 2)
            if where == "same database":
                assert isinstance(kept, int) and isinstance(dropped, int)
            else:
                assert kept is None and dropped is None
            time.sleep(1.0)
            assert count_tasks(db) == 0        # nothing before the commit
            session.commit()
            assert count_tasks(db) == 1
    finally:
        engine.dispose()
    rows = [r for r in _all(db)]
    assert wait_status(rows[0]["id"], daemons=daemons)["result"] == 4


def _all(db):
    from support.task_table import all_tasks
    return all_tasks(db)
