"""Enqueue inside the app's own transaction: `with liteq.using(conn): ...`.

    with psycopg.connect(DSN) as conn:        # LITEQ_DB names the same database
        with liteq.using(conn):
            conn.execute("INSERT INTO orders ...")
            send_receipt.delay(order_id)
        # conn's commit makes the order and the task exist together; a rollback, neither

Inside the block, .delay(), apply_async(), map() and chain() of this thread (or asyncio
task) write their tasks, dependencies and wake-up through `conn`, in its open
transaction: the task exists if and only if that transaction commits. `conn` is a
psycopg 3 Connection (PostgreSQL) or an sqlite3 Connection to LITEQ_DB's file, or
what holds one (liteq/unwrap.py): a SQLAlchemy Connection or Session (drivers
postgresql+psycopg:// and sqlite:///) or Django's connection inside
transaction.atomic().
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any, TypeVar

from . import backends
from .errors import ConfigError
from .unwrap import unwrap


C = TypeVar("C")


def _borrow(conn: Any) -> tuple[Any, Any]:
    raw = unwrap(conn)
    if type(raw).__module__ == "sqlite3":
        from .backends.sqlite.borrowed import check_tables
        check_tables(raw)   # before LiteQ's own connection would wait for raw's lock
    own = backends.get_backend()
    if own.kind == "postgresql":
        from .backends.postgres.borrowed import borrow
    elif own.kind == "sqlite":
        from .backends.sqlite.borrowed import borrow
    else:
        raise ConfigError(f"liteq.using() does not support the {own.kind} backend")
    return own, borrow(own, raw)


@contextlib.contextmanager
def using(conn: C) -> Generator[C, None, None]:
    """Make LiteQ write through the app's connection `conn`, in its open transaction,
    for the duration of the block (see the module's docstring).

    ConfigError for a connection in autocommit mode or to another database than
    LITEQ_DB's. On SQLite the daemon is woken at the end of the block when the app
    committed inside it; a commit after the block is found by its poll (1 s).
    """
    own, borrowed = _borrow(conn)
    token = backends.borrowed_backend.set(borrowed)
    try:
        yield conn
    finally:
        backends.borrowed_backend.reset(token)
    if borrowed.kind == "sqlite":
        borrowed.finish(own)
