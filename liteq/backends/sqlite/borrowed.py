"""SQLite: LiteQ's writes on the app's own sqlite3 connection to the queue's file,
inside its transaction (liteq.using).

sqlite3 has no commit hook, so the wake-up datagram cannot ride on the commit. The
borrowed backend only notes the due time; when the `using` block ends with the
transaction closed and the last task enqueued in it present (so it was committed,
not rolled back), it wakes the daemon. A commit after the block is found by the
daemon's fallback poll (--poll-interval, 1 s by default) instead.
"""

from __future__ import annotations

import os
import sqlite3
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from ...errors import ConfigError, DatabaseError
from ..base import Backend
from . import SQLiteBackend
from . import wake
from .connection import Conn, explain

if TYPE_CHECKING:
    from ...taskspec import NewTask, NewTasks


class _RowConnection:
    """The app's connection as LiteQ's code uses it: sqlite3.Row rows whatever the
    app's row_factory, and no rollback of the app's transaction on LiteQ's error (a
    failed statement undoes only itself; the app decides about the rest)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = (), /) -> sqlite3.Cursor:
        """Run one statement; rows are sqlite3.Rows."""
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute(sql, params)

    def executemany(self, sql: str, rows: Any, /) -> sqlite3.Cursor:
        """Run one statement for each row of parameters."""
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        return cur.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        """True inside the app's open transaction."""
        return self.conn.in_transaction

    def rollback(self) -> None:
        """Nothing: the app decides about its transaction."""

    def close(self) -> None:
        """Nothing: the connection is the app's."""


class _Savepoint:
    """A write of several statements inside the app's transaction (begun here if the
    app has written nothing yet): all of them, or none, and never a COMMIT."""

    __slots__ = ("conn",)

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def __enter__(self) -> Conn:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("SAVEPOINT liteq_write")
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        if exc_type is not None:
            self.conn.execute("ROLLBACK TO liteq_write")
        self.conn.execute("RELEASE liteq_write")
        return False


class BorrowedSQLiteBackend(SQLiteBackend):
    """An SQLiteBackend whose writes go into the app's transaction."""

    borrowed = True
    _due: float | None
    _pending: bool
    _last: int | None   # the last task enqueued in the block

    @classmethod
    def wrapping(cls, own: SQLiteBackend, conn: sqlite3.Connection) -> BorrowedSQLiteBackend:
        """A shallow copy of `own` (LiteQ's backend) that writes through `conn`."""
        borrowed = cls.__new__(cls)
        vars(borrowed).update(vars(own))
        borrowed._conn = _RowConnection(conn)
        borrowed._due, borrowed._pending, borrowed._last = None, False, None
        return borrowed

    def _write(self) -> _Savepoint:
        return _Savepoint(self._conn)

    def notify(self, due: float | None = None) -> None:
        """Note the due time; the wake-up waits for the commit (see finish)."""
        self._due = due if self._due is None or due is None else min(due, self._due)
        self._pending = True

    def enqueue(self, task: NewTask) -> int:
        """SQLiteBackend.enqueue in the app's transaction."""
        self._last = super().enqueue(task)
        return self._last

    def enqueue_chain(self, tasks: list[NewTask]) -> list[int]:
        """SQLiteBackend.enqueue_chain in the app's transaction."""
        ids = super().enqueue_chain(tasks)
        self._last = ids[-1] if ids else self._last
        return ids

    def enqueue_many(self, tasks: NewTasks) -> list[int]:
        """SQLiteBackend.enqueue_many in the app's transaction."""
        ids = super().enqueue_many(tasks)
        self._last = ids[-1] if ids else self._last
        return ids

    async def aenqueue(self, task: NewTask) -> int:
        """enqueue() on the app's connection, in its transaction."""
        return self.enqueue(task)

    def finish(self, own: Backend) -> None:
        """At the end of the block: wake the daemon if the app committed the tasks in it.
        `own` is LiteQ's own backend, whose connection sees only committed rows."""
        if not self._pending or self._last is None or self._conn.in_transaction:
            return
        try:
            committed = own.get_task(self._last) is not None
        except DatabaseError:
            return   # a wake-up is a hint: the daemon's poll finds the committed tasks
        if committed:
            wake.wake(self.identity, self._due)

    def close(self) -> None:
        """Nothing: the connection is the app's."""


def check_tables(conn: sqlite3.Connection) -> None:
    """ConfigError when `conn` is inside a transaction and LiteQ's tables are not in
    its database yet: LiteQ's own connection would create them, and wait for the
    write lock this very transaction may hold (a hang of the busy timeout, then
    DatabaseLocked). A connection to another database is refused later, by borrow()."""
    if not conn.in_transaction:
        return
    try:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                             "AND name = 'tasks'").fetchone()
    except sqlite3.Error:
        return   # borrow() says what is wrong with the connection
    if found is None:
        raise ConfigError(
            f"liteq.using(): LiteQ's tables are not in {_main_file(conn) or 'this database'} "
            f"yet, and creating them inside this transaction would wait for its own write "
            f"lock: create them first (start the daemon, call liteq.db.init_db(), or run "
            f"Django's migrate)")


def _main_file(conn: sqlite3.Connection) -> str:
    for row in conn.execute("PRAGMA database_list").fetchall():
        if row[1] == "main":
            file: str = row[2]
            return file
    return ""


def borrow(backend: Backend, conn: object) -> Backend:
    """A backend writing through the app's sqlite3 connection `conn`, in its transaction.

    ConfigError for anything else than an sqlite3 Connection, one in autocommit mode
    (isolation_level None) outside a transaction, or one to another file than
    `backend`'s.
    """
    if not isinstance(backend, SQLiteBackend):
        raise TypeError(f"not an SQLite backend: {backend!r}")
    if not isinstance(conn, sqlite3.Connection):
        raise ConfigError(f"liteq.using() on SQLite takes an sqlite3 Connection; got "
                          f"{type(conn).__module__}.{type(conn).__name__}")
    # Django keeps sqlite3 in autocommit mode and opens its transactions with BEGIN:
    # a transaction that is open is used whatever the mode.
    if conn.isolation_level is None and not conn.in_transaction:
        raise ConfigError(
            "liteq.using() needs a connection that writes in transactions, and this one is "
            "in autocommit mode (isolation_level=None): each task would commit on its own. "
            "Open it with the default isolation_level (or 'DEFERRED'/'IMMEDIATE')")
    try:
        theirs = _main_file(conn)
    except sqlite3.Error as exc:
        raise explain(exc, backend.path) from exc
    ours = os.path.realpath(backend.path)
    if not theirs or os.path.realpath(theirs) != ours:
        raise ConfigError(
            f"liteq.using() was given a connection to {theirs or 'an in-memory database'}, "
            f"not to LiteQ's database {ours} (LITEQ_DB): the task must be written in the "
            f"same database as the app's transaction")
    return BorrowedSQLiteBackend.wrapping(backend, conn)
