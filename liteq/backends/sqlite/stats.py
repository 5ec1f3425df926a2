"""SQLite: the outcome statistics (task_stats) and every attempt's error (task_errors).

Written inside the transaction that records the outcomes they describe; see
liteq/backends/stats.py for what the rows mean.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from ..stats import Cell, NameCache, StatsSQL, Tally, write_tally

_CHUNK = 100   # rows per statement (6 parameters each)

_UPSERT = ("INSERT INTO task_stats (queue, name, metric, bucket, count, total) VALUES {values} "
           "ON CONFLICT (queue, name, metric, bucket, shard) DO UPDATE SET "
           "count = count + excluded.count, total = total + excluded.total")

# (task_id, attempt, error, finished_at)
ErrorRow = tuple[int, int, "str | None", float]


def write(conn: sqlite3.Connection, tally: Tally, cache: NameCache) -> None:
    """Add a batch's tally to task_stats: one UPSERT per hundred cells."""
    write_tally(tally, cache, lambda: (r[0] for r in conn.execute(
        "SELECT DISTINCT name FROM task_stats")), lambda cells: _upsert(conn, cells))


def _upsert(conn: sqlite3.Connection, cells: list[Cell]) -> None:
    for start in range(0, len(cells), _CHUNK):
        chunk = cells[start:start + _CHUNK]
        params = [x for (key, count, total) in chunk for x in (*key, count, total)]
        conn.execute(_UPSERT.format(values=",".join(["(?,?,?,?,?,?)"] * len(chunk))), params)


def add_errors(conn: sqlite3.Connection, rows: Sequence[ErrorRow]) -> None:
    """Keep these attempts' errors."""
    if rows:
        conn.executemany("INSERT INTO task_errors (task_id, attempt, error, finished_at) "
                         "VALUES (?,?,?,?)", rows)


SQL = StatsSQL(
    read="SELECT queue, name, metric, bucket, SUM(count) AS count, SUM(total) AS total "
         "FROM task_stats GROUP BY queue, name, metric, bucket "
         "ORDER BY queue, name, metric, bucket",
    errors_of="SELECT attempt, error, finished_at FROM task_errors WHERE task_id = ? "
              "ORDER BY rowid")


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
