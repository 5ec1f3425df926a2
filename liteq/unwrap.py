"""The driver connection behind what an app hands to liteq.using().

    liteq.using(psycopg_conn)            # used as it is
    liteq.using(sqlite3_conn)            # used as it is
    liteq.using(sqlalchemy_connection)   # its DBAPI connection, in its transaction
    liteq.using(session)                 # SQLAlchemy Session (or scoped_session, such as
                                         # Flask-SQLAlchemy's db.session)
    liteq.using(django.db.connection)    # Django's connection, in transaction.atomic()

The frameworks are recognised by the module of the object's class, so this module
imports none of them: an object of SQLAlchemy's or Django's exists only when its
framework is already imported.
"""

from __future__ import annotations

from typing import Any, cast

from .errors import ConfigError

# SQLAlchemy drivers whose DBAPI connection is one liteq.using() takes.
SQLALCHEMY_DRIVERS = {("postgresql", "psycopg"), ("sqlite", "pysqlite")}
# Django database engines (vendors) whose connection liteq.using() takes.
DJANGO_VENDORS = ("postgresql", "sqlite")


def _qualname(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def unwrap(obj: Any) -> Any:
    """The DBAPI (driver) connection `obj` stands for, inside an open transaction when
    `obj` is a framework's connection or session; `obj` itself for anything else
    (the backend's borrow() checks that).

    ConfigError for a framework object that cannot be used: an Engine, an async
    connection, a driver other than psycopg 3 or sqlite3, or a Django connection in
    autocommit mode (outside transaction.atomic()).
    """
    module = type(obj).__module__ or ""
    if module.startswith("sqlalchemy.") or module == "sqlalchemy" \
            or module.startswith("flask_sqlalchemy."):
        return _sqlalchemy(obj)
    if module.startswith("django."):
        return _django(obj)
    return obj


# ---- SQLAlchemy ---------------------------------------------------------------------------

def _sqlalchemy(obj: Any) -> Any:
    import sqlalchemy
    from sqlalchemy import orm

    if isinstance(obj, orm.scoped_session):
        obj = cast("orm.Session", obj())   # this thread's (or this request's) Session
    if isinstance(obj, orm.Session):
        # connection() begins the session's transaction when none is open, so the
        # session's commit() (or rollback()) decides about LiteQ's rows too.
        obj = obj.connection()
    if isinstance(obj, sqlalchemy.Engine):
        raise ConfigError(
            "liteq.using() takes a SQLAlchemy Connection or Session, not the Engine: "
            "`with engine.begin() as conn, liteq.using(conn): ...` or "
            "`with liteq.using(session): ...`")
    if not isinstance(obj, sqlalchemy.Connection):
        raise ConfigError(
            f"liteq.using() takes a SQLAlchemy Connection or Session (synchronous); got "
            f"{_qualname(obj)}")
    dialect = obj.dialect
    if dialect.is_async:
        raise ConfigError(
            f"liteq.using() was given a connection of an async SQLAlchemy engine "
            f"({dialect.name}+{dialect.driver}, async): it takes a synchronous Connection "
            f"or Session, with the psycopg 3 driver (postgresql+psycopg://) or sqlite "
            f"(sqlite:///)")
    if (dialect.name, dialect.driver) not in SQLALCHEMY_DRIVERS:
        raise ConfigError(
            f"liteq.using() was given a SQLAlchemy connection through "
            f"{dialect.name}+{dialect.driver}: it takes the psycopg 3 driver "
            f"(postgresql+psycopg://) or sqlite (sqlite:///), whose connections LiteQ "
            f"can write through")
    if obj.closed or obj.invalidated:
        raise ConfigError("liteq.using() was given a closed SQLAlchemy connection")
    if not obj.in_transaction():
        # Without it, the Connection would not know LiteQ's writes opened a transaction
        # on its DBAPI connection and its commit() would not commit them.
        obj.begin()
    return obj.connection.dbapi_connection


# ---- Django ---------------------------------------------------------------------------------

def _django(obj: Any) -> Any:
    # django.db.connection is a proxy to this thread's connection of the "default"
    # alias; connections[alias] is the wrapper itself. Both answer these attributes.
    vendor = getattr(obj, "vendor", None)
    if vendor is None or not hasattr(obj, "ensure_connection"):
        raise ConfigError(f"liteq.using() takes django.db.connection (or "
                          f"connections[alias]); got {_qualname(obj)}")
    alias = getattr(obj, "alias", "default")
    if vendor not in DJANGO_VENDORS:
        raise ConfigError(
            f"liteq.using() was given Django's {alias!r} connection to a {vendor} "
            f"database: LiteQ writes through PostgreSQL and SQLite connections only; "
            f"use liteq.contrib.django.delay_on_commit() instead")
    if obj.get_autocommit():
        raise ConfigError(
            f"liteq.using() needs Django's {alias!r} connection inside a transaction, and "
            f"it is in autocommit mode: enqueue inside `with transaction.atomic():` (or "
            f"set ATOMIC_REQUESTS), or use liteq.contrib.django.delay_on_commit()")
    obj.ensure_connection()
    raw = obj.connection
    if vendor == "postgresql" and type(raw).__module__.startswith("psycopg2"):
        raise ConfigError(
            f"Django's {alias!r} connection uses psycopg2: liteq.using() writes through "
            f"psycopg 3 connections only (pip install 'psycopg[binary]', which Django "
            f"prefers when both are installed)")
    return raw
