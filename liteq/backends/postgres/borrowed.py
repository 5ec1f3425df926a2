"""PostgreSQL: LiteQ's writes on the app's own connection, inside its open transaction
(liteq.using). The task, its dependencies and its NOTIFY commit or roll back with the
app's rows: PostgreSQL delivers a NOTIFY only at the commit of its transaction.

The borrowed backend is a shallow copy of the process's backend whose session runs
on the app's psycopg connection. LiteQ's SQL names its tables without a schema, so
when the app's search_path (read as the block starts) does not begin with LiteQ's
schema, each operation puts LiteQ's schema on the transaction's search_path and
gives the app its own back afterwards.
"""

import copy

import psycopg
from psycopg.rows import dict_row

from ...errors import ConfigError
from ..base import Backend
from . import PostgresBackend
from .connection import is_gone

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

    def __init__(self, conn, connector, schema, needed) -> None:
        self.conn = conn
        self.connector = connector
        self.schema = schema
        self.needed = needed   # False: the app's own search_path finds LiteQ's tables
        self.depth = 0
        self.prev = None

    def acquire(self, blocking: bool = True) -> bool:
        if self.depth == 0 and self.needed:
            cur = self.conn.cursor(row_factory=dict_row)
            try:
                self.prev = cur.execute(_SWITCH, (self.schema,)).fetchone()["prev"]
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

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


class BorrowedSession:
    """The Session interface (connection.py) over the app's connection: statements return
    dict rows whatever the app's row factory, transaction() is a savepoint inside the
    app's transaction, and an error never closes or drops the app's connection."""

    depth = 0
    closed = False

    def __init__(self, conn, connector, schema, switch: bool = True) -> None:
        self._conn = conn
        self.connector = connector
        self.lock = _SchemaScope(conn, connector, schema, switch)

    def locked(self):
        """LiteQ's schema on the search_path for one operation."""
        return self.lock

    @property
    def conn(self):
        """The app's connection."""
        return self._conn

    @property
    def connected(self) -> bool:
        """True while the app's connection is open."""
        return not self._conn.closed

    def pid_on_server(self):
        """The server process serving the app's connection."""
        return self._conn.info.backend_pid

    def run(self, sql, params=None, prepare=None):
        """Execute one statement; returns its cursor, whose rows are dicts. Never prepared:
        the app's connection keeps no statement of LiteQ's."""
        return self._conn.cursor(row_factory=dict_row).execute(sql, params, prepare=False)

    def transaction(self):
        """A savepoint inside the app's transaction."""
        return self._conn.transaction()

    def failure(self, exc):
        """The LiteQ error for `exc`; the app's connection is left as it is."""
        return self.connector.error(exc, gone=is_gone(exc, self._conn))

    def drop(self) -> None:
        """Nothing: the connection is the app's."""

    def close(self) -> None:
        """Nothing: the connection is the app's."""


class BorrowedPostgresBackend(PostgresBackend):
    """A PostgresBackend whose writes go into the app's open transaction."""

    borrowed = True

    async def aenqueue(self, task) -> int:
        """enqueue() on the app's (synchronous) connection, in its transaction."""
        return self.enqueue(task)

    async def aget_task(self, task_id):
        """get_task() on the app's connection (it sees the transaction's own tasks)."""
        return self.get_task(task_id)

    def finish(self) -> None:
        """Nothing to do at the end of the block: the NOTIFY is sent at the commit."""

    def close(self) -> None:
        """Nothing: the connection is the app's, the process's backend stays open."""


def _server_of(conn):
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_SERVER + _APP_SCHEMA).fetchone()


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
    try:
        theirs = _server_of(conn)
        schema = theirs.pop("schema")
    except psycopg.Error as exc:
        raise backend._connector.error(exc, gone=is_gone(exc, conn)) from exc
    if theirs != server_identity(backend):
        raise ConfigError(
            f"liteq.using() was given a connection to database {theirs['db']!r} (port "
            f"{theirs['port']}), not to LiteQ's database {backend.identity} (LITEQ_DB): the "
            f"task must be written in the same database as the app's transaction")
    borrowed = copy.copy(backend)
    borrowed.__class__ = BorrowedPostgresBackend
    # The app's search_path is read once, here: when its first schema is LiteQ's, no
    # statement is needed around each operation (one round trip instead of three).
    borrowed._session = BorrowedSession(conn, backend._connector, backend.schema,
                                        switch=schema != backend.schema)
    return borrowed


def server_identity(backend):
    """(database, port, server start time) of LiteQ's own connection, asked once."""
    ident = getattr(backend, "_server_ident", None)
    if ident is None:
        with backend._session.locked():
            try:
                ident = backend._server_ident = backend._session.run(_SERVER).fetchone()
            except psycopg.Error as exc:
                raise backend._session.failure(exc) from exc
    return ident
