"""PostgreSQL connections: one per backend, shared by the threads of a process,
opened on demand and opened again after a loss; psycopg errors become LiteQ
errors whose messages never show the password.

Connections are in autocommit mode: a single statement is its own transaction
(one round trip), and several statements that must be atomic run inside an
explicit transaction (`Session.transaction()`, or `batch()` for a caller's group).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg.abc import Params, QueryNoTemplate
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from ...errors import (ConfigError, DatabaseError, DatabaseLocked, DatabaseRefused,
                       DatabaseUnavailable)
from . import url as urls

# SQLSTATEs that mean the server or the session went away, not that a statement
# failed: class 08 (connection exception), admin and crash shutdown, a server
# that is starting or stopping, and no connection slots left.
_GONE_CODES = {"57P01", "57P02", "57P03", "53300"}
_LOCK_CODES = {"55P03"}   # lock_not_available: the daemon's lock_timeout expired

# A failed connect carries no SQLSTATE (libpq keeps the server's error result to
# itself; psycopg's sqlstate and diag are empty), so the server's answer is
# recognised by its message, as PostgreSQL words it in English (lc_messages C or
# en, the default). These answers are final: waiting does not make a database
# exist or a password right. Anything else that fails a connect (refused, timed
# out, "the database system is starting up" 57P03, "too many clients" 53300, an
# answer in another language) is waited for.
_REFUSALS = (
    ("3D000", re.compile(r'database ".*" does not exist')),
    ("28P01", re.compile(r"password authentication failed for user")),
    ("28P01", re.compile(r"fe_sendauth: no password supplied")),
    ("28000", re.compile(r'role ".*" does not exist')),
    ("28000", re.compile(r'role ".*" is not permitted to log in')),
    ("28000", re.compile(r"no pg_hba\.conf entry for")),
    ("28000", re.compile(r"authentication failed for user")),
    ("42501", re.compile(r'permission denied for database ".*"')),
    ("55000", re.compile(r'database ".*" is not currently accepting connections')),
)


#: A statement as LiteQ passes it: built from its own constants, never from input
#: (psycopg's annotation asks for a LiteralString, which f-strings of them are not).
Query = str | bytes | pgsql.SQL | pgsql.Composed



def as_query(statement: Query) -> QueryNoTemplate:
    """`statement` as psycopg's execute() is annotated to take it."""
    return statement  # pyright: ignore[reportReturnType]


P = ParamSpec("P")
R = TypeVar("R")


def _reason(exc: BaseException) -> str:
    """A psycopg error's message on one line."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return (text or type(exc).__name__)[:600]


class Connector:
    """How to reach one database: the URL, what LiteQ adds to it, and how it names it.

    Shared by a backend's session and its LISTEN channel.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.identity = urls.identity(url)
        self.secrets = urls.secrets_of(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ConfigError(f"cannot use the PostgreSQL URL {self.identity}: "
                              f"{self.scrub(_reason(exc))}") from None
        self.extra = urls.connect_options(params)

    def scrub(self, text: str) -> str:
        """`text` without the password."""
        return urls.scrub(text, self.secrets)

    def connect(self) -> psycopg.Connection[DictRow]:
        """A new autocommit connection whose rows are dicts; DatabaseUnavailable when the
        server cannot be reached (within connect_timeout)."""
        try:
            # (pyright cannot match the overload through **extra: libpq parameters only)
            return psycopg.connect(self.url, autocommit=True,  # pyright: ignore[reportReturnType]
                                   row_factory=dict_row,  # pyright: ignore[reportArgumentType]
                                   **self.extra)
        except psycopg.Error as exc:
            code = refusal_code(str(exc))
            if code is None:
                raise self.error(exc, gone=True) from exc
            raise DatabaseRefused(f"PostgreSQL database {self.identity} refused the "
                                  f"connection ({code}): {self.scrub(_reason(exc))}") from exc

    async def aconnect(self) -> psycopg.AsyncConnection[DictRow]:
        """connect() for asyncio code; its psycopg errors are the caller's to turn into
        LiteQ's."""
        # (pyright cannot match the overload through **extra: libpq parameters only)
        return await psycopg.AsyncConnection.connect(  # pyright: ignore[reportReturnType]
            self.url, autocommit=True,
            row_factory=dict_row,  # pyright: ignore[reportArgumentType]
            **self.extra)

    def error(self, exc: psycopg.Error, gone: bool = False) -> DatabaseError:
        """The LiteQ error for a psycopg error: DatabaseUnavailable when the connection is
        gone, DatabaseLocked for a lock wait that timed out, else DatabaseError.

        The psycopg error (kept as __cause__ by the caller) is scrubbed too.
        """
        exc.args = tuple(self.scrub(a) if isinstance(a, str) else a for a in exc.args)
        reason = self.scrub(_reason(exc))
        if gone:
            return DatabaseUnavailable(f"PostgreSQL database {self.identity} is unavailable: "
                                       f"{reason}")
        if getattr(exc, "sqlstate", None) in _LOCK_CODES:
            return DatabaseLocked(f"PostgreSQL database {self.identity}: {reason}")
        return DatabaseError(f"PostgreSQL database {self.identity}: {reason}")


def one(cursor: psycopg.Cursor[DictRow]) -> DictRow:
    """The row of a statement that always returns one (an aggregate, say)."""
    row = cursor.fetchone()
    assert row is not None
    return row


def refusal_code(message: str) -> str | None:
    """The SQLSTATE of a server's final refusal of a connection (wrong database, role,
    password, privilege) read from libpq's message; None for anything worth waiting for."""
    for code, pattern in _REFUSALS:
        if pattern.search(message):
            return code
    return None


def is_gone(exc: BaseException,
            conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None) -> bool:
    """True when `exc` (raised on `conn`) means the connection is lost."""
    if conn is None or conn.closed or conn.broken:
        return True
    code: str = getattr(exc, "sqlstate", None) or ""
    return code.startswith("08") or code in _GONE_CODES


def close_if_own(conn: psycopg.Connection[Any] | None, owner_pid: int) -> None:
    """Close `conn` when this process opened it (pid `owner_pid`); a forked child only
    forgets its parent's, whose session would end if it sent the close."""
    if conn is not None and owner_pid == os.getpid():
        try:
            conn.close()
        except Exception:  # a broken socket may fail to close: it is gone anyway
            pass


class Hold(Protocol):
    """What Session.locked() returns: a lock, or what stands for one (borrowed.py)."""

    def acquire(self, blocking: bool = ...) -> bool:
        """Take it (without blocking: False when it is taken)."""
        ...

    def release(self) -> None:
        """Give it back."""
        ...

    def __enter__(self) -> bool:
        ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, /) -> bool | None:
        ...


class DbSession(Protocol):
    """What the backend's operations use of their connection: a Session, or one on the
    app's own connection (borrowed.py)."""

    depth: int
    closed: bool

    def locked(self) -> Hold:
        """The lock to hold around an operation."""
        ...

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The connection."""
        ...

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        ...

    def pid_on_server(self) -> int | None:
        """The server process serving the connection, or None."""
        ...

    def run(self, sql: Query, params: Params | None = None,
            prepare: bool | None = None) -> psycopg.Cursor[DictRow]:
        """Execute one statement; returns its cursor (rows are dicts)."""
        ...

    def transaction(self) -> AbstractContextManager[Any]:
        """Several statements in one transaction."""
        ...

    def failure(self, exc: psycopg.Error) -> DatabaseError:
        """The LiteQ error for `exc`."""
        ...

    def drop(self) -> None:
        """Forget the connection."""
        ...

    def close(self) -> None:
        """Close for good."""
        ...


class Session:
    """The backend's connection: opened on first use, shared by threads under a lock,
    dropped when it is lost and opened again by the next call.

    on_connect(conn) runs on each new connection (schema check, settings). After
    a fork the child never touches the parent's connection: it starts afresh.
    """

    def __init__(self, connector: Connector,
                 on_connect: Callable[[psycopg.Connection[DictRow]], None]) -> None:
        self.connector = connector
        self.on_connect = on_connect
        self._fresh()

    def _fresh(self) -> None:
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self._conn: psycopg.Connection[DictRow] | None = None
        self.depth = 0            # nesting of batch() transactions
        self.closed = False

    def locked(self) -> threading.RLock:
        """The lock to hold around an operation (a new one in a forked child, whose
        inherited connection is left alone: closing it would end the parent's session)."""
        if self.pid != os.getpid():
            self._fresh()
        return self.lock

    @property
    def conn(self) -> psycopg.Connection[DictRow]:
        """The open connection, connecting first when there is none."""
        if self._conn is None:
            if self.closed:
                raise DatabaseError(f"the backend of {self.connector.identity} was closed")
            if self.depth:
                # Reconnecting here would run the rest of the batch outside its transaction.
                raise DatabaseUnavailable(
                    f"PostgreSQL database {self.connector.identity} is unavailable: the "
                    f"connection was lost inside a transaction, which was rolled back")
            conn = self.connector.connect()
            try:
                self.on_connect(conn)
            except psycopg.Error as exc:
                gone = is_gone(exc, conn)
                conn.close()
                raise self.connector.error(exc, gone=gone) from exc
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @property
    def connected(self) -> bool:
        """True while a connection is open (it may still turn out to be lost)."""
        return self._conn is not None

    def pid_on_server(self) -> int | None:
        """The server process serving the open connection, or None."""
        return None if self._conn is None else self._conn.info.backend_pid

    def run(self, sql: Query, params: Params | None = None,
            prepare: bool | None = None) -> psycopg.Cursor[DictRow]:
        """Execute one statement; returns its cursor (rows are dicts)."""
        return self.conn.execute(as_query(sql), params, prepare=prepare)

    def transaction(self) -> AbstractContextManager[Any]:
        """BEGIN ... COMMIT around several statements; inside a batch(), nothing more
        (the batch is the transaction)."""
        if self.depth:
            return contextlib.nullcontext()
        return self.conn.transaction()

    def failure(self, exc: psycopg.Error) -> DatabaseError:
        """The LiteQ error for `exc`; a lost connection is dropped so the next call
        opens a new one."""
        gone = is_gone(exc, self._conn)
        if gone:
            self.drop()
        return self.connector.error(exc, gone=gone)

    def drop(self) -> None:
        """Forget the connection (closing it if it is this process's)."""
        conn, self._conn = self._conn, None
        close_if_own(conn, self.pid)

    def close(self) -> None:
        """Close for good (a forked child only forgets the parent's connection)."""
        with self.locked():
            self.drop()
            self.closed = True


class Batch:
    """batch(): several operations of one thread in one transaction, rolled back on any
    error. Other threads wait until it ends. Nested batches join the outer one."""

    __slots__ = ("session", "tx", "lock")

    def __init__(self, session: DbSession) -> None:
        self.session = session
        self.tx: AbstractContextManager[Any] | None = None
        self.lock: Hold | None = None

    def __enter__(self) -> Batch:
        s = self.session
        lock = self.lock = s.locked()
        lock.acquire()
        try:
            if s.depth == 0:
                self.tx = s.conn.transaction()
                self.tx.__enter__()
            s.depth += 1
        except psycopg.Error as exc:
            lock.release()
            raise s.failure(exc) from exc
        except BaseException:
            lock.release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        s = self.session
        try:
            s.depth -= 1
            if s.depth == 0 and self.tx is not None:
                try:
                    self.tx.__exit__(exc_type, exc, tb)
                except psycopg.Error as err:
                    failure = s.failure(err)
                    if exc_type is None:   # else the caller's error says more
                        raise failure from err
        finally:
            if self.lock is not None:
                self.lock.release()
        return False


class Store(Protocol):
    """What guarded() needs of a backend."""

    @property
    def _session(self) -> DbSession:
        ...


S = TypeVar("S", bound=Store)


def guarded(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Run a backend method under the session's lock; psycopg errors become LiteQ
    DatabaseErrors (DatabaseUnavailable when the connection was lost)."""
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        session = self._session  # pyright: ignore[reportPrivateUsage]
        with session.locked():
            try:
                return method(self, *args, **kwargs)
            except psycopg.Error as exc:
                raise session.failure(exc) from exc
    functools.update_wrapper(wrapper, method)
    return wrapper


