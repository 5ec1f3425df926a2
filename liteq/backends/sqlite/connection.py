"""SQLite connections: LiteQ's pragmas, errors that name the file, transactions."""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar

from ... import settings
from ...errors import DatabaseError, DatabaseLocked
from ..ddl import ddl_allowed, not_ready
from .files import create_database_file, share_with_group
from .schema import SCHEMA_VERSION, ensure_schema

P = ParamSpec("P")
R = TypeVar("R")


class Conn(Protocol):
    """What LiteQ's SQL needs of a connection: an sqlite3.Connection, or the app's
    one as liteq.using() wraps it (borrowed.py)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> sqlite3.Cursor:
        """Run one statement."""
        ...

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        """Run one statement for each row of parameters."""
        ...

    @property
    def in_transaction(self) -> bool:
        """True inside an open transaction."""
        ...

    def rollback(self) -> None:
        """Roll back the open transaction."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class Store(Protocol):
    """What guarded() and batch() need of a backend."""

    @property
    def path(self) -> str:
        """The database file."""
        ...

    @property
    def busy_timeout(self) -> float | None:
        """The connection's busy timeout (s); None: LITEQ_BUSY_TIMEOUT."""
        ...

    @property
    def _conn(self) -> Conn:
        ...


S = TypeVar("S", bound=Store)


def explain(exc: sqlite3.Error, path: str, busy_timeout: float | None = None) -> DatabaseError:
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


def guarded(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Report sqlite3 failures of a backend method as LiteQ DatabaseErrors naming the file
    (the open transaction, if any, rolled back)."""
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except DatabaseError:
            raise
        except sqlite3.Error as exc:
            conn = self._conn  # pyright: ignore[reportPrivateUsage]
            try:
                if conn.in_transaction:
                    conn.rollback()
            except sqlite3.Error:
                pass   # a closed connection: nothing to roll back
            raise explain(exc, self.path, self.busy_timeout) from exc
    functools.update_wrapper(wrapper, method)
    return wrapper


def _switch_to_wal(conn: sqlite3.Connection, busy: float) -> None:
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


def open_connection(path: str, *, isolation_level: str | None = None,
                    busy_timeout: float | None = None) -> sqlite3.Connection:
    """Open a connection with LiteQ's pragmas (WAL, busy timeout, durability).

    busy_timeout defaults to LITEQ_BUSY_TIMEOUT; the daemon passes a short one so
    that a held lock delays its writes without stalling its supervision loop.
    """
    busy = settings.busy_timeout() if busy_timeout is None else busy_timeout
    sync = settings.sync_pragma()
    if os.path.isdir(path):
        raise DatabaseError(f"cannot open database {path}: it is a directory")
    on_disk = path not in ("", ":memory:") and not path.startswith("file:")
    if on_disk and not os.path.exists(path):
        create_database_file(path)  # 0660 whatever the umask, not SQLite's 0644 - umask
    conn: sqlite3.Connection | None = None
    try:
        # Any str (the annotation of connect() leaves out "", its own default).
        level: dict[str, Any] = {"isolation_level": isolation_level}
        conn = sqlite3.connect(path, timeout=busy, check_same_thread=False, **level)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy * 1000)}")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            _switch_to_wal(conn, busy)
        conn.execute(f"PRAGMA synchronous = {sync}")
        conn.execute("PRAGMA foreign_keys = ON")
        if on_disk:
            share_with_group(path)  # the -wal and -shm files exist by now
        return conn
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error) and not isinstance(exc, DatabaseError):
            raise explain(exc, path, busy_timeout) from exc
        raise


def open_with_schema(path: str, **options: Any) -> sqlite3.Connection:
    """open_connection(), then the schema brought up to date (closed again on failure).

    Under LITEQ_NO_DDL a file that does not exist is not created: SchemaNotReady.
    """
    if path not in ("", ":memory:") and not path.startswith("file:") \
            and not os.path.exists(path) and not ddl_allowed():
        raise not_ready(f"database {path} does not exist, so it", 0, SCHEMA_VERSION)
    conn = open_connection(path, **options)
    try:
        ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def row_dict(row: sqlite3.Row | None) -> dict[str, Any] | None:
    """A sqlite3.Row as a dict, or None."""
    return dict(row) if row is not None else None


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

    IMMEDIATE takes the write lock up front, so two writers never deadlock
    upgrading a read lock; the busy timeout makes the second one wait. Inside
    an open transaction (batch()) it joins that one instead.
    """

    __slots__ = ("conn", "outer")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.outer = False

    def __enter__(self) -> Conn:
        self.outer = self.conn.in_transaction
        if not self.outer:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if self.outer:
            return False
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.rollback()
        return False


class Batch(Transaction):
    """A batch() transaction whose sqlite3 errors become DatabaseErrors."""

    __slots__ = ("store",)

    def __init__(self, store: Store) -> None:
        super().__init__(store._conn)  # pyright: ignore[reportPrivateUsage]
        self.store = store

    def __enter__(self) -> Conn:
        try:
            return super().__enter__()
        except sqlite3.Error as exc:
            raise explain(exc, self.store.path, self.store.busy_timeout) from exc

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        try:
            return super().__exit__(exc_type, exc, tb)
        except sqlite3.Error as err:
            if self.conn.in_transaction:
                self.conn.rollback()
            raise explain(err, self.store.path, self.store.busy_timeout) from err

