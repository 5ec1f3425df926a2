"""PostgreSQL for asyncio producers: `await fn.adelay(...)` on psycopg's async
connection, so an async web app's event loop never blocks on the queue.

One AsyncConnection per backend and event loop, opened on first use, used by one
coroutine at a time (an asyncio lock), dropped after a loss and opened again by
the next call; a forked child opens its own. The schema is ensured by the
backend's own connection when it opens.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.abc import Params
from psycopg.rows import DictRow

from .connection import Connector, Query, as_query, is_gone
from .reads import TASK_SELECT
from .inserts import (ENQUEUE, ENQUEUE_QUIET, enqueue_params, enqueued, quiet_params,
                    should_notify)

if TYPE_CHECKING:
    from ...taskspec import NewTask


def _id_of(row: DictRow | None) -> int:
    """The id an INSERT ... RETURNING id gave back (it always gives one)."""
    assert row is not None
    task_id: int = row["id"]
    return task_id


class AsyncSession:
    """The async connection of one backend, for one event loop."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.pid = os.getpid()
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()
        self.conn: psycopg.AsyncConnection[DictRow] | None = None

    def usable(self) -> bool:
        """True in the process and event loop it was made for."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self.pid == os.getpid() and loop is self.loop

    async def enqueue(self, task: NewTask, channel: str) -> int:
        """Insert one task and its wake-up (one statement); returns its id."""
        if not should_notify(task):   # a wake-up went out just now (see tasks.py)
            row = await self._run(ENQUEUE_QUIET, quiet_params(task))
            enqueued()
            return _id_of(row)
        began = time.perf_counter()
        row = await self._run(ENQUEUE, enqueue_params(task, channel))
        enqueued(time.perf_counter() - began)
        return _id_of(row)

    async def get_task(self, task_id: int) -> dict[str, Any] | None:
        """One task row as a dict, or None."""
        return await self._run(f"SELECT {TASK_SELECT} FROM tasks WHERE id = %s",
                               (int(task_id),))

    async def _run(self, sql: Query, params: Params) -> DictRow | None:
        async with self.lock:
            conn = self.conn
            if conn is None:
                try:
                    conn = self.conn = await self.connector.aconnect()
                except psycopg.Error as exc:
                    raise self.connector.error(exc, gone=True) from exc
            try:
                cursor = await conn.execute(as_query(sql), params, prepare=True)
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
