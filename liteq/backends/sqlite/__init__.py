"""The SQLite backend: one database file, WAL mode, one writer at a time.

Wake-ups travel as datagrams to a socket beside the daemon's control socket
(liteq.wakeup). The schema, its migrations (from liteq 0.2's files too),
the connection set-up and the SQL of each group of operations live in the
modules of this package.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
import os

from ... import wakeup
from ..base import Backend
from ..stats import NameCache
from .connection import GuardedBatch, Transaction, guarded, open_connection, open_with_schema
from .reads import ReadOps
from .schedules import ScheduleOps
from .schema import ensure_schema
from .tasks import TaskOps
from .workers import WorkerOps

if TYPE_CHECKING:
    from ..base import WakeChannel

# The daemon's writes share the lock with producers; a short wait, retried by its
# loop, never stalls supervision.
DAEMON_BUSY_TIMEOUT = 0.25


class SQLiteBackend(TaskOps, WorkerOps, ReadOps, ScheduleOps, Backend):
    """All queue operations on one SQLite database file."""

    kind = "sqlite"

    def __init__(self, path, daemon: bool = False) -> None:
        self.path = self.target = path
        self.identity = os.path.abspath(path)
        self.busy_timeout = DAEMON_BUSY_TIMEOUT if daemon else None
        self._backlog = {}   # queues -> the last claim came back full
        self._stat_names = NameCache()   # task names task_stats holds (stats.py)
        self._rate_wait = None   # see rate_wait()
        self._conn = None
        self._conn = self._open()

    @guarded
    def _open(self):
        return open_with_schema(self.path, busy_timeout=self.busy_timeout)

    def close(self) -> None:
        """Close the connection; the backend must not be used afterwards."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self):
        return Transaction(self._conn)

    def batch(self) -> AbstractContextManager[Any]:
        """Run several operations in one transaction: `with backend.batch(): ...`.

        On an error everything in the batch is rolled back.
        """
        return GuardedBatch(self)

    def notify(self, due: float | None = None) -> None:
        """Send the daemon a wake-up datagram (skipped when none listens)."""
        wakeup.wake(self.identity, due)

    def notify_cancel(self, task_id) -> None:
        """Tell the daemon to stop a running task that was cancelled (a datagram)."""
        wakeup.send_cancel(self.identity, task_id)

    def open_wake_channel(self, control_socket: str) -> WakeChannel:
        """Bind the wake-up datagram socket beside the control socket, writable by
        whoever may write the database file."""
        return wakeup.DatagramChannel(control_socket, like=self.path)


__all__ = ["SQLiteBackend", "open_connection", "open_with_schema", "ensure_schema"]
