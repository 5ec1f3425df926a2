"""PostgreSQL for asyncio producers: `await fn.adelay(...)` on psycopg's async
connection, so an async web app's event loop never blocks on the queue.

One AsyncConnection per backend and event loop, opened on first use, used by one
coroutine at a time (an asyncio lock), dropped after a loss and opened again by
the next call; a forked child opens its own. The schema is ensured by the
backend's own connection when it opens.
"""

import asyncio
import os
import time

import psycopg
from psycopg.rows import dict_row

from .connection import is_gone
from .reads import TASK_SELECT
from .inserts import (ENQUEUE, ENQUEUE_QUIET, enqueue_params, enqueued, quiet_params,
                    should_notify)


class AsyncSession:
    """The async connection of one backend, for one event loop."""

    def __init__(self, connector) -> None:
        self.connector = connector
        self.pid = os.getpid()
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()
        self.conn = None

    def usable(self) -> bool:
        """True in the process and event loop it was made for."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self.pid == os.getpid() and loop is self.loop

    async def enqueue(self, task, channel) -> int:
        """Insert one task and its wake-up (one statement); returns its id."""
        if not should_notify(task):   # a wake-up went out just now (see tasks.py)
            row = await self._run(ENQUEUE_QUIET, quiet_params(task))
            enqueued()
            return row["id"]
        began = time.perf_counter()
        row = await self._run(ENQUEUE, enqueue_params(task, channel))
        enqueued(time.perf_counter() - began)
        return row["id"]

    async def get_task(self, task_id):
        """One task row as a dict, or None."""
        return await self._run(f"SELECT {TASK_SELECT} FROM tasks WHERE id = %s",
                               (int(task_id),))

    async def _run(self, sql, params):
        async with self.lock:
            if self.conn is None:
                try:
                    self.conn = await psycopg.AsyncConnection.connect(
                        self.connector.url, autocommit=True, row_factory=dict_row,
                        **self.connector.extra)
                except psycopg.Error as exc:
                    raise self.connector.error(exc, gone=True) from exc
            try:
                cursor = await self.conn.execute(sql, params, prepare=True)
                return await cursor.fetchone()
            except psycopg.Error as exc:
                gone = is_gone(exc, self.conn)
                if gone:
                    await self._drop()
                raise self.connector.error(exc, gone=gone) from exc

    async def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # a broken socket may fail to close: it is gone anyway
                pass

    def forget(self) -> None:
        """Let go of the connection without awaiting (closing the backend from sync
        code); its socket closes when it is collected."""
        self.conn = None
