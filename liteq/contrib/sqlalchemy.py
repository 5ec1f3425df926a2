"""Enqueue when a SQLAlchemy session commits, wherever the queue is.

    from liteq.contrib.sqlalchemy import delay_on_commit

    with Session(engine) as session:          # or Flask-SQLAlchemy's db.session
        session.add(order)
        session.flush()
        delay_on_commit(session, send_receipt, order.id)
        session.commit()                      # the task exists from here

When the session's database is LiteQ's (the same PostgreSQL database through
postgresql+psycopg://, or the same SQLite file), the task is written in the
session's transaction (liteq.using) and its id returned. Otherwise it is enqueued
right after the session commits, and dropped if it rolls back; None is returned.

This module imports SQLAlchemy; `import liteq` never does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, orm

from .. import backends
from ..core import Task
from ..errors import ConfigError
from ..transaction import using

_PENDING = "liteq_pending"


def _session_of(session: orm.Session | orm.scoped_session[Any]) -> orm.Session:
    if isinstance(session, orm.scoped_session):
        current: orm.Session = session()   # this thread's (or request's) Session
        return current
    return session


def _after_commit(session: orm.Session) -> None:
    for enqueue in session.info.pop(_PENDING, []):
        enqueue()


def _after_transaction_end(session: orm.Session, transaction: orm.SessionTransaction) -> None:
    # The session's outermost transaction ended: a commit ran the calls already
    # (after_commit comes first), a rollback drops them.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


def _borrows(session: orm.Session) -> bool:
    """True when liteq.using(session) can write in the session's transaction."""
    try:
        with using(session):
            return True
    except ConfigError:
        return False   # another database (or driver): enqueue after the commit instead


def _on_commit(session: orm.Session, call: Callable[[], Any]) -> None:
    pending: list[Callable[[], Any]] = session.info.setdefault(_PENDING, [])
    pending.append(call)
    if not event.contains(session, "after_commit", _after_commit):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_transaction_end", _after_transaction_end)


def delay_on_commit(session: orm.Session | orm.scoped_session[Any], task: Task[..., Any],
                    *args: Any, **kwargs: Any) -> int | None:
    """Enqueue `task(*args, **kwargs)` so that it exists once `session` commits, and
    never if it rolls back (see the module's docstring); returns the task id when it
    was written in the session's transaction, else None."""
    current = _session_of(session)
    if _borrows(current):
        with using(current):
            task_id = task.delay(*args, **kwargs)
        own: Any = backends.get_backend()
        if own.kind == "sqlite":   # no commit hook in sqlite3: wake the daemon then
            from ..backends.sqlite.wake import wake   # only on SQLite
            _on_commit(current, functools.partial(wake, own.identity))
        return task_id
    _on_commit(current, functools.partial(task.delay, *args, **kwargs))
    return None


__all__ = ["delay_on_commit"]
