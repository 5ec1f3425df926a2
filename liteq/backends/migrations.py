"""The schema as an operator sees it: its version, and an upgrade on request.

`liteq db status` and `liteq db upgrade` call these. They open a bare connection
(no schema step on open), so they work on a database whose tables are missing or
old, and LITEQ_NO_DDL does not stop an upgrade asked for by name.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Generator
from typing import Any

from .. import settings
from ..errors import DatabaseError
from . import (_check_target, _postgres,  # pyright: ignore[reportPrivateUsage]
               identity_of, is_postgres, sqlite_path)


@contextlib.contextmanager
def _bare(target: str, create: bool) -> Generator[tuple[Any, Any], None, None]:
    """(schema module, connection) for `target`, without touching its schema. An SQLite
    file that does not exist is created only when `create`; otherwise the connection
    is None."""
    if is_postgres(target):
        _postgres()  # a clear ConfigError without the liteq[postgres] extra
        import psycopg

        from .postgres import schema as pg_schema
        from .postgres.connection import Connector
        connector = Connector(target)
        conn: psycopg.Connection[Any] | sqlite3.Connection = connector.connect()
        try:
            yield pg_schema, conn
        except psycopg.Error as exc:
            raise connector.error(exc) from exc
        finally:
            conn.close()
        return
    from .sqlite import schema as lite_schema
    from .sqlite.connection import explain, open_connection
    path = sqlite_path(target)
    if not create and not os.path.exists(path):
        yield lite_schema, None
        return
    conn = open_connection(path, isolation_level=None)
    try:
        yield lite_schema, conn
    except sqlite3.Error as exc:
        raise explain(exc, path) from exc
    finally:
        conn.close()


def _version(schema_mod: Any, conn: Any) -> int:
    if conn is None:
        return 0
    got: int | tuple[Any, int] = schema_mod.schema_version(conn)
    return int(got[1] if isinstance(got, tuple) else got)


def status(target: str | None = None) -> dict[str, Any]:
    """{database, backend, version, target, pending (versions not applied), up_to_date,
    exists}: the schema of `target` (default LITEQ_DB), read without changing it."""
    target = target or settings.db_path()
    _check_target(target)
    with _bare(target, create=False) as (mod, conn):
        version = _version(mod, conn)
        out: dict[str, Any] = {
            "database": identity_of(target),
            "backend": "postgresql" if is_postgres(target) else "sqlite",
            "exists": conn is not None, "version": version, "target": mod.SCHEMA_VERSION,
            "pending": list(range(version + 1, mod.SCHEMA_VERSION + 1)),
            "up_to_date": version == mod.SCHEMA_VERSION}
        if is_postgres(target):
            out["schema"] = mod.current_schema(conn)
        if version > mod.SCHEMA_VERSION:
            out["newer"] = True
        return out


def upgrade(target: str | None = None) -> dict[str, Any]:
    """Apply the pending migrations to `target` (default LITEQ_DB), creating the tables
    (and an SQLite file) if need be, whatever LITEQ_NO_DDL says; returns {database,
    backend, from, to, applied}."""
    target = target or settings.db_path()
    _check_target(target)
    with _bare(target, create=True) as (mod, conn):
        before, after = mod.migrate(conn)
        return {"database": identity_of(target),
                "backend": "postgresql" if is_postgres(target) else "sqlite",
                "from": before, "to": after, "applied": list(range(before + 1, after + 1))}


def upgrade_sql(target: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """(status(target), the statements an upgrade would run), changing nothing: for a
    DBA to review and apply. No statements when the schema is up to date."""
    target = target or settings.db_path()
    _check_target(target)
    with _bare(target, create=False) as (mod, conn):
        if conn is None:
            # A file that does not exist yet: the script that creates every table.
            conn = sqlite3.connect(":memory:", isolation_level=None)
            try:
                statements = mod.migration_sql(conn)
            finally:
                conn.close()
        else:
            statements = mod.migration_sql(conn)
    return status(target), statements


__all__ = ["status", "upgrade", "upgrade_sql", "DatabaseError"]
