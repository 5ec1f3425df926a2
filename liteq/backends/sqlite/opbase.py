"""SQLite: what the operation mixins of SQLiteBackend (tasks, reads, schedules, ...)
share, declared once so that each mixin can subclass it and be type-checked."""

from __future__ import annotations

from contextlib import AbstractContextManager

from ..base import Backend
from ..stats import NameCache
from .connection import Conn, Transaction


class OpBase(Backend):
    """The state SQLiteBackend's operations run on, and how they write."""

    path: str
    #: The connection's busy timeout (s); None: LITEQ_BUSY_TIMEOUT.
    busy_timeout: float | None
    _conn: Conn
    #: queues -> the last claim of them came back full.
    _backlog: dict[tuple[str, ...], bool]
    #: The task names task_stats holds (stats.py).
    _stat_names: NameCache
    #: See rate_wait().
    _rate_wait: float | None

    def _write(self) -> AbstractContextManager[Conn]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, joining an open batch())."""
        return Transaction(self._conn)
