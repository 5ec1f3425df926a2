"""The PostgreSQL backend: one queue that daemons on several hosts share.

`LITEQ_DB=postgresql://user@host/db` (any libpq URL; the libpq variables,
PGPASSFILE and sslmode work as usual). The tables live in the connection's
current schema; `?options=-csearch_path%3Dname` picks another one.

- One connection per backend, shared by the threads of a process (a lock around
  each operation and transaction), opened again after a loss. A forked child
  never touches its parent's connection. (connection.py)
- Every time is judged by the server's clock. (tasks.py, workers.py)
- Producers NOTIFY inside their enqueue's own statement; each daemon LISTENs on
  one dedicated connection. (wake.py)
- The schema is created on first use and migrated under an advisory lock.
  (schema.py)

PostgreSQL 13 or later (MATERIALIZED CTEs, insert-driven autovacuum settings).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
import random

import psycopg
from psycopg.rows import DictRow

from ...errors import DatabaseError
from ..enqueue import checked_task
from ..stats import NameCache
from .actions import ActionOps
from .async_session import AsyncSession
from .connection import Batch, Connector, Session
from .opbase import OpBase
from .reads import ReadOps
from .schedules import ScheduleOps
from .schema import STAT_SHARDS, ensure_schema
from .tasks import TaskOps
from .url import identity as identity_of_url
from .vacuum import Vacuums
from .wake import ListenChannel, cancel_payload, channel_name, nudge_payload
from .workers import WorkerOps

if TYPE_CHECKING:
    from ...taskspec import NewTask
    from ..base import WakeChannel

# The daemon's statements give up on a row or table lock held longer than this
# (an operator's forgotten transaction, say): its loop retries them later and
# keeps supervising meanwhile, as with SQLite's short busy timeout.
DAEMON_LOCK_TIMEOUT = "2s"


class PostgresBackend(TaskOps, WorkerOps, ReadOps, ActionOps, ScheduleOps, OpBase):
    """All queue operations on one PostgreSQL database (and schema)."""

    kind = "postgresql"
    #: get_backend() keeps one per process for all threads (not one per thread).
    shared_across_threads = True
    #: Producers in a burst skip NOTIFYs that closely follow their previous one
    #: (tasks.py: at most NOTIFY_INTERVAL_MAX_S apart); claims after each wake-up
    #: pick those tasks up, the later ones those that committed late.
    wake_follow_ups_s = (0.002, 0.01, 0.03, 0.1, 0.3)
    #: (database, port, server start time) of the connection, once liteq.using() asked
    #: (borrowed.py).
    _server_ident: DictRow | None = None

    def __init__(self, url: str, daemon: bool = False) -> None:
        self._connector = Connector(url)
        self.target = url
        self.identity = self._connector.identity
        self._vacuums = Vacuums(self._connector)   # only with the server's autovacuum off
        # The asyncio connection (async_session.py), opened on use.
        self._async: AsyncSession | None = None
        self.daemon = daemon
        self._schema = ""    # both known once connected (_on_connect)
        self._channel = ""
        self._stat_names = NameCache()
        self._stat_shard = random.randrange(STAT_SHARDS)
        self._rate_wait = None
        self._session = Session(self._connector, self._on_connect)
        with self._session.locked():
            self._session.conn  # connect now: an unusable URL or server fails here

    def _on_connect(self, conn: psycopg.Connection[DictRow]) -> None:
        if not self._schema:
            self._schema = ensure_schema(conn)
            self._channel = channel_name(self._schema)
        if self.daemon:
            conn.execute(f"SET lock_timeout = '{DAEMON_LOCK_TIMEOUT}'")

    @property
    def schema(self) -> str:
        """The schema that holds this queue's tables."""
        return self._schema

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this queue."""
        return self._channel

    @property
    def server_pid(self) -> int | None:
        """The server process of the open connection (None when there is none)."""
        with self._session.locked():
            return self._session.pid_on_server()

    def batch(self) -> AbstractContextManager[Any]:
        """Run several operations in one transaction: `with backend.batch(): ...`.

        Other threads wait until it ends; on an error everything is rolled back.
        """
        return Batch(self._session)

    def notify(self, due: float | None = None) -> None:
        """NOTIFY the daemons that a task is due at `due` (epoch s; None: now).

        A hint only: skipped when the connection is down or another thread holds
        it; never raises.
        """
        session = self._session
        lock = session.locked()
        if not lock.acquire(blocking=False):
            return
        try:
            if session.connected:
                session.run("SELECT pg_notify(%s, %s)", (self._channel, nudge_payload(due)))
        except psycopg.Error as exc:
            session.failure(exc)  # drops a lost connection
        finally:
            lock.release()

    def notify_cancel(self, task_id: int) -> None:
        """NOTIFY the daemons that task `task_id` was cancelled (the one running it stops
        it). Inside a batch() or liteq.using(), sent when that transaction commits.
        A hint: skipped when the connection is down (the daemons also look for
        cancellations at each poll); never raises. (cancel() sends the same NOTIFY
        in its own statement.)"""
        session = self._session
        try:
            with session.locked():
                if not session.connected:
                    return
                try:
                    session.run("SELECT pg_notify(%s, %s)",
                                (self._channel, cancel_payload(task_id)))
                except psycopg.Error as exc:
                    session.failure(exc)  # drops a lost connection
        except DatabaseError:
            pass   # the app's transaction (liteq.using()) is aborted or lost

    def open_wake_channel(self, control_socket: str) -> WakeChannel:
        """A LISTEN connection on this queue's channel (see ListenChannel's contract);
        control_socket is not needed."""
        return ListenChannel(self._connector, self._channel)

    async def aenqueue(self, task: NewTask) -> int:
        """enqueue() on psycopg's async connection: one statement, the loop never blocks.
        (A unique task's insert-or-find loop, and a dependent task's transaction, run
        in a worker thread instead.)"""
        task = checked_task(task)
        if task.unique_key is not None or task.depends_on:
            return await super().aenqueue(task)
        return await self._async_session().enqueue(task, self._channel)

    async def aget_task(self, task_id: int) -> dict[str, Any] | None:
        """get_task() on psycopg's async connection."""
        return await self._async_session().get_task(task_id)

    def _async_session(self) -> AsyncSession:
        if self._async is None or not self._async.usable():
            self._async = AsyncSession(self._connector)
        return self._async

    def close(self) -> None:
        """Close the connection (in a forked child: forget the parent's, untouched)."""
        self._session.close()
        self._vacuums.close()
        if self._async is not None:
            self._async.forget()


__all__ = ["PostgresBackend", "ListenChannel", "ensure_schema", "identity_of_url"]
