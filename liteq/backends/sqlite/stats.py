"""SQLite: the outcome statistics (task_stats) and every attempt's error (task_errors).

Written inside the transaction that records the outcomes they describe; see
liteq/backends/stats.py for what the rows mean.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from ..stats import NameCache, Tally, max_task_names

_CHUNK = 100   # rows per statement (6 parameters each)

_UPSERT = ("INSERT INTO task_stats (queue, name, metric, bucket, count, total) VALUES {values} "
           "ON CONFLICT (queue, name, metric, bucket, shard) DO UPDATE SET "
           "count = count + excluded.count, total = total + excluded.total")

# (task_id, attempt, error, finished_at)
ErrorRow = tuple[int, int, "str | None", float]


def write(conn: sqlite3.Connection, tally: Tally, cache: NameCache) -> None:
    """Add a batch's tally to task_stats: one UPSERT per hundred cells."""
    if not tally:
        return
    cache.refresh(tally, lambda: (r[0] for r in conn.execute(
        "SELECT DISTINCT name FROM task_stats")))
    cells = tally.capped(cache, max_task_names())
    for start in range(0, len(cells), _CHUNK):
        chunk = cells[start:start + _CHUNK]
        params = [x for (key, count, total) in chunk for x in (*key, count, total)]
        conn.execute(_UPSERT.format(values=",".join(["(?,?,?,?,?,?)"] * len(chunk))), params)


def add_errors(conn: sqlite3.Connection, rows: Sequence[ErrorRow]) -> None:
    """Keep these attempts' errors."""
    if rows:
        conn.executemany("INSERT INTO task_errors (task_id, attempt, error, finished_at) "
                         "VALUES (?,?,?,?)", rows)


def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every cell of task_stats: [{queue, name, metric, bucket, count, total}]."""
    return [dict(r) for r in conn.execute(
        "SELECT queue, name, metric, bucket, SUM(count) AS count, SUM(total) AS total "
        "FROM task_stats GROUP BY queue, name, metric, bucket "
        "ORDER BY queue, name, metric, bucket")]


def errors_of(conn: sqlite3.Connection, task_id: int) -> list[dict[str, Any]]:
    """A task's attempts' errors, oldest first: [{attempt, error, finished_at}]."""
    return [dict(r) for r in conn.execute(
        "SELECT attempt, error, finished_at FROM task_errors WHERE task_id = ? "
        "ORDER BY rowid", (int(task_id),))]


def running_rows(conn: sqlite3.Connection, ids: Iterable[int],
                 worker_id: str) -> dict[int, dict[str, Any]]:
    """{id: {queue, name, run_at}} of these tasks while they run for worker_id (what a
    retry's UPDATE is about to overwrite)."""
    ids = list(ids)
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for r in conn.execute(
                f"SELECT id, queue, name, run_at FROM tasks WHERE id IN ({marks}) "
                f"AND status = 'running' AND worker_id = ?", (*chunk, worker_id)):
            out[r[0]] = dict(r)
    return out
