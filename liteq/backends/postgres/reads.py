"""PostgreSQL: what the monitor, the panel and the operators' commands read.

Rows come back with the SQLite backend's keys, times as epoch seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..filters import finished_where, task_where
from ..stats import StatsReads
from . import counts, stats
from .actions import DIALECT
from .connection import guarded
from .opbase import OpBase


def _epoch(col) -> str:
    return f"date_part('epoch', {col}) AS {col}"


TASK_SELECT = ", ".join((
    "id", "name", "queue", "status", "priority", "attempts", "max_retries", "worker_id",
    _epoch("run_at"), _epoch("created_at"), _epoch("started_at"), _epoch("finished_at"),
    "result", "error", "payload", "timeout", "retry_delay", "retry_backoff",
    "retry_max_delay", "unique_key"))


class ReadOps(StatsReads, OpBase):
    """Mixin of PostgresBackend: monitor reads."""

    stats_sql = stats.SQL

    @guarded
    def get_task(self, task_id):
        """One task row as a dict, or None."""
        return self._session.run(f"SELECT {TASK_SELECT} FROM tasks WHERE id = %s",
                                 (int(task_id),), prepare=True).fetchone()

    @guarded
    def _stats_rows(self, sql: str, params: Sequence[object]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._session.run(sql, params, prepare=True).fetchall()
        return rows

    @guarded
    def get_tasks(self, task_ids) -> list:
        """Rows for several ids (missing ids are skipped)."""
        ids = [int(i) for i in task_ids]
        if not ids:
            return []
        return self._session.run(f"SELECT {TASK_SELECT} FROM tasks WHERE id = ANY(%s::bigint[])",
                                 (ids,)).fetchall()

    @guarded
    def find_tasks(self, status=None, queue=None, name=None, limit=50, offset=0,
                   order="id", *, search=None, statuses=None, below=None,
                   at_least=None) -> list:
        """Tasks matching the optional filters, newest first (order 'id' or 'finished');
        search, statuses, below and at_least as in filters.task_where."""
        clause, params = task_where("%s", "ILIKE", status=status, queue=queue, name=name,
                                    search=search, statuses=statuses, below=below,
                                    at_least=at_least)
        # NULLS LAST as on SQLite; the order of tasks_finished, so a status's list is
        # an index scan.
        sort = "finished_at DESC NULLS LAST, id DESC" if order == "finished" else "id DESC"
        return self._session.run(
            f"SELECT {TASK_SELECT} FROM tasks {clause} ORDER BY {sort} LIMIT %s OFFSET %s",
            (*params, int(limit), int(offset))).fetchall()

    @guarded
    def count_tasks(self, status=None, queue=None, name=None, *, search=None,
                    statuses=None) -> int:
        """How many tasks match the optional filters."""
        clause, params = task_where("%s", "ILIKE", status=status, queue=queue, name=name,
                                    search=search, statuses=statuses)
        return self._session.run(f"SELECT COUNT(*) AS n FROM tasks {clause}",
                                 params).fetchone()["n"]

    @guarded
    def match_task_ids(self, statuses, status=None, queue=None, name=None, search=None,
                       below=None, limit=500) -> list:
        """Ids of tasks in `statuses` matching the filters, below id `below`, newest
        first, at most `limit`: one batch of a bulk action."""
        clause, params = task_where("%s", "ILIKE", status=status, queue=queue, name=name,
                                    search=search, statuses=tuple(statuses), below=below)
        return [r["id"] for r in self._session.run(
            f"SELECT id FROM tasks {clause} ORDER BY id DESC LIMIT %s",
            (*params, int(limit))).fetchall()]

    @guarded
    def queue_buckets(self, since, bucket) -> list:
        """[{queue, slot, done, failed, run_sum, run_max, timed}]: per queue, tasks that
        finished done or failed since `since` (epoch s), per `bucket` seconds, with the
        sum and maximum of their run times over the `timed` ones that have a start time."""
        return self._session.run(
            "SELECT queue, floor((date_part('epoch', finished_at) - %(since)s) / %(bucket)s)"
            "::int AS slot, COUNT(*) FILTER (WHERE status = 'done') AS done, "
            "COUNT(*) FILTER (WHERE status = 'failed') AS failed, "
            "SUM(date_part('epoch', finished_at - started_at)) AS run_sum, "
            "MAX(date_part('epoch', finished_at - started_at)) AS run_max, "
            "COUNT(started_at) AS timed FROM tasks WHERE status IN ('done', 'failed') "
            "AND finished_at >= to_timestamp(%(since)s) GROUP BY queue, slot "
            "ORDER BY queue, slot", {"since": float(since), "bucket": float(bucket)}).fetchall()

    #: queue_stats(estimate=True) estimates a (queue, status) group of more tasks than
    #: this (see counts.py).
    exact_count_limit = counts.EXACT_LIMIT

    @guarded
    def queue_stats(self, estimate: bool = False) -> list:
        """[{queue, status, count}] over all tasks, exact.

        estimate=True: groups of more than exact_count_limit tasks are estimated from
        PostgreSQL's statistics instead of counted (see counts.py), and each row has
        `estimated` (True for those).
        """
        if not estimate:
            return self._session.run(
                "SELECT queue, status, COUNT(*) AS count FROM tasks "
                "GROUP BY status, queue ORDER BY queue, status").fetchall()
        limit = self.exact_count_limit
        with self._session.transaction():
            self._session.run(counts.INDEX_SCANS_ONLY)
            rows = self._session.run(counts.bounded_counts_sql(limit)).fetchall()
            if self._session.depth:       # inside a batch(): the rest of it plans as usual
                self._session.run(counts.PLANNER_DEFAULTS, prepare=False)
        return counts.estimate_rows(rows, limit, self._live_rows, self._planned_rows)

    def _live_rows(self):
        """The live rows of tasks by the statistics: n_live_tup, or the planner's
        estimate when the statistics were reset (a crash, pg_stat_reset)."""
        live = self._session.run(counts.LIVE_ROWS).fetchone()["n"]
        return live if live > 0 else self._planned_rows()

    def _planned_rows(self, queue=None, status=None):
        """The planner's estimate of the rows of tasks (of a queue and status)."""
        if queue is None:
            row = self._session.run(counts.PLANNED_ROWS, prepare=False).fetchone()
        else:
            row = self._session.run(counts.PLANNED_PAIR, (queue, status),
                                    prepare=False).fetchone()
        return row["QUERY PLAN"][0]["Plan"]["Plan Rows"]

    @guarded
    def list_queues(self) -> list:
        """Every queue name that has tasks or schedules, sorted."""
        return [r["queue"] for r in self._session.run(
            "SELECT queue FROM tasks UNION SELECT queue FROM schedules "
            "WHERE queue IS NOT NULL ORDER BY 1")]

    @guarded
    def finish_window(self) -> tuple[float | None, float | None]:
        """(earliest started_at, latest finished_at) over done tasks: a drain's span."""
        row = self._session.run(
            "SELECT date_part('epoch', MIN(started_at)) AS a, "
            "date_part('epoch', MAX(finished_at)) AS b FROM tasks WHERE status = 'done'"
        ).fetchone()
        return row["a"], row["b"]

    @guarded
    def oldest_pending(self) -> list[dict[str, Any]]:
        """[{queue, oldest_run_at}]: the earliest due time of pending tasks per queue."""
        return self._session.run(
            "SELECT queue, date_part('epoch', MIN(run_at)) AS oldest_run_at FROM tasks "
            "WHERE status = 'pending' GROUP BY queue ORDER BY queue").fetchall()

    @guarded
    def finished_buckets(self, since: float, bucket: float) -> list[dict[str, Any]]:
        """[{slot, status, count}]: tasks finished since `since` (epoch s), per `bucket`
        seconds; slot n covers [since + n*bucket, since + (n+1)*bucket)."""
        return self._session.run(
            "SELECT floor((date_part('epoch', finished_at) - %(since)s) / %(bucket)s)::int "
            "AS slot, status, COUNT(*) AS count FROM tasks "
            "WHERE status IN ('done', 'failed', 'cancelled') "
            "AND finished_at >= to_timestamp(%(since)s) GROUP BY slot, status ORDER BY slot",
            {"since": float(since), "bucket": float(bucket)}).fetchall()

    # ---- what the operators' actions would touch ------------------------------------

    @guarded
    def find_finished(self, statuses, queue=None, name=None, ids=None, older_than=None,
                      limit=50) -> list:
        """Finished tasks of `statuses` matching the optional filters (older_than: finished
        over that many seconds ago, by the server's clock), latest finish first."""
        where, params = finished_where(DIALECT, statuses, queue, name, ids, older_than)
        return self._session.run(
            f"SELECT {TASK_SELECT} FROM tasks WHERE {where} "
            f"ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT %s",
            (*params, int(limit))).fetchall()

    @guarded
    def count_finished(self, statuses, queue=None, name=None, ids=None,
                       older_than=None) -> int:
        """How many tasks find_finished() would find with no limit."""
        where, params = finished_where(DIALECT, statuses, queue, name, ids, older_than)
        return self._session.run(f"SELECT COUNT(*) AS n FROM tasks WHERE {where}",
                                 params).fetchone()["n"]
