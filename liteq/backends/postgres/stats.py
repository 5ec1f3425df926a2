"""PostgreSQL: the outcome statistics (task_stats) and every attempt's error (task_errors).

Written inside the transaction that records the outcomes they describe; see
liteq/backends/stats.py for what the rows mean. Each writer adds to its own
shard of a cell (schema.STAT_SHARDS); readers add the shards up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..stats import Cell, NameCache, StatsSQL, Tally, write_tally

# One statement per batch, from column arrays, in key order (so that two writers
# lock the rows they share in one order and cannot deadlock).
_UPSERT = (
    "INSERT INTO task_stats (queue, name, metric, bucket, shard, count, total) "
    "SELECT u.queue, u.name, u.metric, u.bucket, %s, u.count, u.total "
    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::bigint[], %s::float8[]) "
    "WITH ORDINALITY AS u(queue, name, metric, bucket, count, total, n) ORDER BY u.n "
    "ON CONFLICT (queue, name, metric, bucket, shard) DO UPDATE SET "
    "count = task_stats.count + EXCLUDED.count, total = task_stats.total + EXCLUDED.total")

_ADD_ERRORS = (
    "INSERT INTO task_errors (task_id, attempt, error, finished_at) "
    "SELECT u.id, u.attempt, u.error, COALESCE(to_timestamp(u.at), now()) "
    "FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::float8[]) AS u(id, attempt, error, at)")

# (task_id, attempt, error, finished_at epoch s or None: the server's now)
ErrorRow = tuple[int, int, "str | None", "float | None"]


def write(session: Any, tally: Tally, cache: NameCache, shard: int) -> None:
    """Add a batch's tally to task_stats in one UPSERT, to this writer's shard."""
    write_tally(tally, cache, lambda: (r["name"] for r in session.run(
        "SELECT DISTINCT name FROM task_stats").fetchall()),
        lambda cells: _upsert(session, cells, shard))


def _upsert(session: Any, cells: list[Cell], shard: int) -> None:
    cols: list[list[Any]] = [[] for _ in range(6)]
    for (queue, name, metric, bucket), count, total in cells:
        for col, value in zip(cols, (queue, name, metric, bucket, count, total)):
            col.append(value)
    session.run(_UPSERT, (shard, *cols), prepare=True)


def add_errors(session: Any, rows: Sequence[ErrorRow]) -> None:
    """Keep these attempts' errors."""
    if rows:
        ids, attempts, errors, at = zip(*rows)
        session.run(_ADD_ERRORS, ([int(i) for i in ids], [int(a) for a in attempts],
                                  list(errors), [None if x is None else float(x) for x in at]),
                    prepare=True)


SQL = StatsSQL(
    read="SELECT queue, name, metric, bucket, SUM(count)::bigint AS count, "
         "SUM(total) AS total FROM task_stats GROUP BY queue, name, metric, bucket "
         "ORDER BY queue, name, metric, bucket",
    errors_of="SELECT attempt, error, date_part('epoch', finished_at) AS finished_at "
              "FROM task_errors WHERE task_id = %s ORDER BY id")


def running_rows(session: Any, ids: Iterable[int], worker_id: str) -> dict[int, dict[str, Any]]:
    """{id: {queue, name, run_at}} of these tasks while they run for worker_id (what a
    retry's UPDATE is about to overwrite)."""
    rows = session.run(
        "SELECT id, queue, name, date_part('epoch', run_at) AS run_at FROM tasks "
        "WHERE id = ANY(%s::bigint[]) AND status = 'running' AND worker_id = %s",
        ([int(i) for i in ids], worker_id), prepare=True).fetchall()
    return {r["id"]: r for r in rows}
