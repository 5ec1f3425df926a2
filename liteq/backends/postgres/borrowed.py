"""PostgreSQL: LiteQ's writes on the app's own connection, inside its open transaction
(liteq.using). The task, its dependencies and its NOTIFY commit or roll back with the
app's rows: PostgreSQL delivers a NOTIFY only at the commit of its transaction.

The borrowed backend is a shallow copy of the process's backend whose session runs
on the app's psycopg connection. LiteQ's SQL names its tables without a schema, so
when the app's search_path (read as the block starts) does not begin with LiteQ's
schema, each operation puts LiteQ's schema on the transaction's search_path and
gives the app its own back afterwards.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, cast

import psycopg
from psycopg.abc import Params
from psycopg.rows import DictRow, dict_row

from ...errors import ConfigError, DatabaseError
from ..base import Backend
from . import PostgresBackend
from .connection import Connector, Query, as_query, is_gone, one

if TYPE_CHECKING:
    from ...taskspec import NewTask

_SERVER = ("SELECT current_database() AS db, inet_server_port() AS port, "
           "pg_postmaster_start_time() AS started")
_APP_SCHEMA = ", current_schema() AS schema"
_SWITCH = ("SELECT current_setting('search_path') AS prev, "
           "set_config('search_path', quote_ident(%s), true)")
_RESTORE = "SELECT set_config('search_path', %s, true)"


class _SchemaScope:
    """What BorrowedSession.locked() returns: LiteQ's schema on the search_path while
    held (nested holds keep the outermost's). No lock: the app's connection is the
    app's to share between its threads, as with any psycopg connection."""

    def __init__(self, conn: psycopg.Connection[Any], connector: Connector, schema: str,
                 needed: bool) -> None:
        self.conn = conn
        self.connector = connector
        self.schema = schema
        self.needed = needed   # False: the app's own search_path finds LiteQ's tables
        self.depth = 0
        self.prev: str | None = None

    def acquire(self, blocking: bool = True) -> bool:
        if self.depth == 0 and self.needed:
            cur = self.conn.cursor(row_factory=dict_row)
            try:
                self.prev = one(cur.execute(_SWITCH, (self.schema,)))["prev"]
            except psycopg.Error as exc:   # an aborted or lost transaction of the app's
                raise self.connector.error(exc, gone=is_gone(exc, self.conn)) from exc
        self.depth += 1
        return True

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.needed:
            try:
                self.conn.execute(_RESTORE, (self.prev,))
            except psycopg.Error:
                pass  # an aborted transaction: its rollback discards the local setting anyway

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> Literal[False]:
        self.release()
        return False


class BorrowedSession:
    """The Session interface (connection.py) over the app's connection: statements return
    dict rows whatever the app's row factory, transaction() is a savepoint inside the
    app's transaction, and an error never closes or drops the app's connection."""

    depth = 0
    closed = False

    def __init__(self, conn: psycopg.Connection[Any], connector: Connector, schema: str,
                 switch: bool = True) -> None:
        self._conn = conn
        self.connector = connector
        self.lock = _SchemaScope(conn, connector, schema, switch)

    def locked(self) -> _SchemaScope:
        """LiteQ's schema on the search_path for one operation."""
        return self.lock

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The app's connection."""
        return self._conn

    @property
    def connected(self) -> bool:
        """True while the app's connection is open."""
        return not self._conn.closed

    def pid_on_server(self) -> int:
        """The server process serving the app's connection."""
        return self._conn.info.backend_pid

    def run(self, sql: Query, params: Params | None = None,
            prepare: bool | None = None) -> psycopg.Cursor[DictRow]:
        """Execute one statement; returns its cursor, whose rows are dicts. Never prepared:
        the app's connection keeps no statement of LiteQ's."""
        return self._conn.cursor(row_factory=dict_row).execute(as_query(sql), params,
                                                                prepare=False)

    def transaction(self) -> AbstractContextManager[Any]:
        """A savepoint inside the app's transaction."""
        return self._conn.transaction()

    def failure(self, exc: psycopg.Error) -> DatabaseError:
        """The LiteQ error for `exc`; the app's connection is left as it is."""
        return self.connector.error(exc, gone=is_gone(exc, self._conn))

    def drop(self) -> None:
        """Nothing: the connection is the app's."""

    def close(self) -> None:
        """Nothing: the connection is the app's."""


class BorrowedPostgresBackend(PostgresBackend):
    """A PostgresBackend whose writes go into the app's open transaction."""

    borrowed = True

    async def aenqueue(self, task: NewTask) -> int:
        """enqueue() on the app's (synchronous) connection, in its transaction."""
        return self.enqueue(task)

    async def aget_task(self, task_id: int) -> dict[str, Any] | None:
        """get_task() on the app's connection (it sees the transaction's own tasks)."""
        row: dict[str, Any] | None = self.get_task(task_id)
        return row

    @classmethod
    def wrapping(cls, own: PostgresBackend,
                 conn: psycopg.Connection[Any]) -> BorrowedPostgresBackend:
        """A shallow copy of `own` (LiteQ's backend) whose session runs on `conn`;
        ConfigError when `conn` is on another database."""
        try:
            theirs = _server_of(conn)
            schema = theirs.pop("schema")
        except psycopg.Error as exc:
            raise own._connector.error(exc, gone=is_gone(exc, conn)) from exc
        if theirs != cls.server_identity(own):
            raise ConfigError(
                f"liteq.using() was given a connection to database {theirs['db']!r} (port "
                f"{theirs['port']}), not to LiteQ's database {own.identity} (LITEQ_DB): the "
                f"task must be written in the same database as the app's transaction")
        borrowed = cls.__new__(cls)
        vars(borrowed).update(vars(own))
        # The app's search_path is read once, here: when its first schema is LiteQ's, no
        # statement is needed around each operation (one round trip instead of three).
        borrowed._session = BorrowedSession(conn, own._connector, own.schema,
                                            switch=schema != own.schema)
        return borrowed

    @staticmethod
    def server_identity(own: PostgresBackend) -> DictRow:
        """(database, port, server start time) of LiteQ's own connection, asked once."""
        ident = own._server_ident
        if ident is None:
            with own._session.locked():
                try:
                    ident = own._server_ident = one(own._session.run(_SERVER))
                except psycopg.Error as exc:
                    raise own._session.failure(exc) from exc
        return ident

    def finish(self) -> None:
        """Nothing to do at the end of the block: the NOTIFY is sent at the commit."""

    def close(self) -> None:
        """Nothing: the connection is the app's, the process's backend stays open."""


def _server_of(conn: psycopg.Connection[Any]) -> DictRow:
    with conn.cursor(row_factory=dict_row) as cur:
        return one(cur.execute(_SERVER + _APP_SCHEMA))


def borrow(backend: Backend, conn: object) -> Backend:
    """A backend writing through the app's psycopg connection `conn`, in its transaction.

    ConfigError for anything else than a psycopg Connection, a connection in autocommit
    mode outside a transaction block, or one to another database than `backend`'s.
    """
    if not isinstance(conn, psycopg.Connection):
        raise ConfigError(f"liteq.using() on PostgreSQL takes a psycopg (3) Connection; "
                          f"got {type(conn).__module__}.{type(conn).__name__}")
    if conn.closed:
        raise ConfigError("liteq.using() was given a closed connection")
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if conn.autocommit and idle:
        raise ConfigError(
            "liteq.using() needs a connection inside a transaction, and this one is in "
            "autocommit mode: each task would commit on its own. Use a connection with "
            "autocommit=False, or enqueue inside `with conn.transaction():`")
    if not isinstance(backend, PostgresBackend):
        raise TypeError(f"not a PostgreSQL backend: {backend!r}")
    app_conn: psycopg.Connection[Any] = cast(Any, conn)   # (rows of the app's type)
    return BorrowedPostgresBackend.wrapping(backend, app_conn)
