"""The SQLite backend: one database file, WAL mode, one writer at a time.

Wake-ups travel as datagrams to a socket beside the daemon's control socket
(wake.py). The schema, its migrations (from liteq 0.2's files too),
the connection set-up and the SQL of each group of operations live in the
modules of this package.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
import os
import sqlite3

from ..stats import NameCache
from .actions import ActionOps
from .connection import Batch, explain, open_connection, open_with_schema
from .opbase import OpBase
from .reads import ReadOps
from .schedules import ScheduleOps
from .schema import ensure_schema
from .tasks import TaskOps
from . import wake
from .workers import WorkerOps

if TYPE_CHECKING:
    from ..base import WakeChannel

# The daemon's writes share the lock with producers; a short wait, retried by its
# loop, never stalls supervision.
DAEMON_BUSY_TIMEOUT = 0.25


class SQLiteBackend(TaskOps, WorkerOps, ReadOps, ActionOps, ScheduleOps, OpBase):
    """All queue operations on one SQLite database file."""

    kind = "sqlite"

    def __init__(self, path: str, daemon: bool = False) -> None:
        self.path = self.target = path
        self.identity = os.path.abspath(path)
        self.busy_timeout = DAEMON_BUSY_TIMEOUT if daemon else None
        self._backlog = {}
        self._stat_names = NameCache()
        self._rate_wait = None
        self._closed = False
        try:
            self._conn = open_with_schema(path, busy_timeout=self.busy_timeout)
        except sqlite3.Error as exc:   # (the errors of opening it are explained already)
            raise explain(exc, path, self.busy_timeout) from exc

    def close(self) -> None:
        """Close the connection; the backend must not be used afterwards."""
        if not self._closed:
            self._closed = True
            self._conn.close()

    def batch(self) -> AbstractContextManager[Any]:
        """Run several operations in one transaction: `with backend.batch(): ...`.

        On an error everything in the batch is rolled back.
        """
        return Batch(self)

    def notify(self, due: float | None = None) -> None:
        """Send the daemon a wake-up datagram (skipped when none listens)."""
        wake.wake(self.identity, due)

    def notify_cancel(self, task_id: int) -> None:
        """Tell the daemon to stop a running task that was cancelled (a datagram)."""
        wake.send_cancel(self.identity, task_id)

    def open_wake_channel(self, control_socket: str) -> WakeChannel:
        """Bind the wake-up datagram socket beside the control socket, writable by
        whoever may write the database file."""
        return wake.DatagramChannel(control_socket, like=self.path)


__all__ = ["SQLiteBackend", "open_connection", "open_with_schema", "ensure_schema"]
