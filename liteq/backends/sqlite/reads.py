"""SQLite: what the monitor, the panel and the operators' commands read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...timeutil import now
from ..filters import finished_where, task_where
from ..stats import StatsReads
from . import stats
from .actions import DIALECT
from .connection import guarded, row_dict
from .opbase import OpBase

TASK_COLUMNS = ("id", "name", "queue", "status", "priority", "attempts", "max_retries",
                "worker_id", "run_at", "created_at", "started_at", "finished_at",
                "result", "error", "payload", "timeout", "retry_delay", "retry_backoff",
                "retry_max_delay", "unique_key")
_TASK_SELECT = ", ".join(TASK_COLUMNS)


class ReadOps(StatsReads, OpBase):
    """Mixin of SQLiteBackend: monitor reads."""

    stats_sql = stats.SQL

    @guarded
    def get_task(self, task_id):
        """One task row as a dict (raw columns), or None."""
        return row_dict(self._conn.execute(
            f"SELECT {_TASK_SELECT} FROM tasks WHERE id = ?", (int(task_id),)).fetchone())

    @guarded
    def _stats_rows(self, sql: str, params: Sequence[object]) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn.execute(sql, params)]

    @guarded
    def get_tasks(self, task_ids) -> list:
        """Rows for several ids (missing ids are skipped)."""
        ids = list(task_ids)
        out = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out.extend(dict(r) for r in self._conn.execute(
                f"SELECT {_TASK_SELECT} FROM tasks WHERE id IN ({marks})", chunk))
        return out

    @guarded
    def find_tasks(self, status=None, queue=None, name=None, limit=50, offset=0,
                   order="id", *, search=None, statuses=None, below=None,
                   at_least=None) -> list:
        """Tasks matching optional filters, newest first (order 'id' or 'finished');
        search, statuses, below and at_least as in filters.task_where."""
        clause, params = task_where("?", "LIKE", status=status, queue=queue, name=name,
                                    search=search, statuses=statuses, below=below,
                                    at_least=at_least)
        sort = "finished_at DESC, id DESC" if order == "finished" else "id DESC"
        return [dict(r) for r in self._conn.execute(
            f"SELECT {_TASK_SELECT} FROM tasks {clause} ORDER BY {sort} LIMIT ? OFFSET ?",
            (*params, int(limit), int(offset)))]

    @guarded
    def count_tasks(self, status=None, queue=None, name=None, *, search=None,
                    statuses=None) -> int:
        """How many tasks match the optional filters."""
        clause, params = task_where("?", "LIKE", status=status, queue=queue, name=name,
                                    search=search, statuses=statuses)
        return self._conn.execute(f"SELECT COUNT(*) FROM tasks {clause}", params).fetchone()[0]

    @guarded
    def match_task_ids(self, statuses, status=None, queue=None, name=None, search=None,
                       below=None, limit=500) -> list:
        """Ids of tasks in `statuses` matching the filters, below id `below`, newest
        first, at most `limit`: one batch of a bulk action."""
        clause, params = task_where("?", "LIKE", status=status, queue=queue, name=name,
                                    search=search, statuses=tuple(statuses), below=below)
        return [r[0] for r in self._conn.execute(
            f"SELECT id FROM tasks {clause} ORDER BY id DESC LIMIT ?", (*params, int(limit)))]

    @guarded
    def queue_buckets(self, since, bucket) -> list:
        """[{queue, slot, done, failed, run_sum, run_max, timed}]: per queue, tasks that
        finished done or failed since `since`, per `bucket` seconds, with the sum and
        maximum of their run times (finished_at - started_at) over the `timed` ones
        that have a start time. A range scan of idx_tasks_finished."""
        return [dict(r) for r in self._conn.execute(
            "SELECT queue, CAST((finished_at - ?) / ? AS INTEGER) AS slot, "
            "SUM(status = 'done') AS done, SUM(status = 'failed') AS failed, "
            "SUM(finished_at - started_at) AS run_sum, MAX(finished_at - started_at) "
            "AS run_max, COUNT(started_at) AS timed "
            "FROM tasks WHERE status IN ('done', 'failed') AND finished_at >= ? "
            "GROUP BY queue, slot ORDER BY queue, slot", (since, float(bucket), since))]

    @guarded
    def queue_stats(self, estimate=False) -> list:
        """[{queue, status, count}] over all tasks, always exact: SQLite counts from
        the claim index (status, queue, ...) without reading the rows, and keeps no
        statistics to estimate from. estimate=True adds estimated=False to each row."""
        rows = [dict(r) for r in self._conn.execute(
            "SELECT queue, status, COUNT(*) AS count FROM tasks "
            "GROUP BY status, queue ORDER BY queue, status")]
        if estimate:
            for r in rows:
                r["estimated"] = False
        return rows

    @guarded
    def list_queues(self) -> list:
        """Every queue name that has tasks or schedules, sorted."""
        return [r[0] for r in self._conn.execute(
            "SELECT DISTINCT queue FROM tasks UNION SELECT DISTINCT queue FROM schedules "
            "WHERE queue IS NOT NULL ORDER BY 1")]

    @guarded
    def finish_window(self) -> tuple[float | None, float | None]:
        """(earliest started_at, latest finished_at) over done tasks: a drain's span."""
        row = self._conn.execute("SELECT MIN(started_at), MAX(finished_at) FROM tasks "
                                 "WHERE status = 'done'").fetchone()
        return row[0], row[1]

    @guarded
    def oldest_pending(self) -> list[dict[str, Any]]:
        """[{queue, oldest_run_at}]: the earliest due time of pending tasks per queue."""
        return [dict(r) for r in self._conn.execute(
            "SELECT queue, MIN(run_at) AS oldest_run_at FROM tasks WHERE status = 'pending' "
            "GROUP BY queue ORDER BY queue")]

    @guarded
    def finished_buckets(self, since: float, bucket: float) -> list[dict[str, Any]]:
        """[{slot, status, count}]: tasks that finished since `since`, per `bucket` seconds.

        slot n covers [since + n*bucket, since + (n+1)*bucket). Statuses are done,
        failed and cancelled (the terms of idx_tasks_finished, so it is a range scan).
        """
        return [dict(r) for r in self._conn.execute(
            "SELECT CAST((finished_at - ?) / ? AS INTEGER) AS slot, status, COUNT(*) AS count "
            "FROM tasks WHERE status IN ('done', 'failed', 'cancelled') AND finished_at >= ? "
            "GROUP BY slot, status ORDER BY slot", (since, float(bucket), since))]

    @guarded
    def active_workers(self, window) -> list:
        """Workers with a heartbeat in the last `window` seconds, with their running-task
        counts (active_tasks) and heartbeat_age_s."""
        t = now()
        return [dict(r) for r in self._conn.execute(
            "SELECT w.worker_id, w.hostname, w.queues, w.concurrency, w.last_heartbeat, "
            "w.pid, w.started_at, ? - w.last_heartbeat AS heartbeat_age_s, "
            "(SELECT COUNT(*) FROM tasks t WHERE t.status = 'running' "
            "AND t.worker_id = w.worker_id) AS active_tasks "
            "FROM workers w WHERE w.last_heartbeat >= ? ORDER BY w.worker_id",
            (t, t - window))]

    # ---- what the operators' actions would touch ------------------------------------

    @guarded
    def find_finished(self, statuses, queue=None, name=None, ids=None, older_than=None,
                      limit=50) -> list:
        """Finished tasks of `statuses` matching the optional filters (older_than: finished
        over that many seconds ago), latest finish first."""
        where, params = finished_where(DIALECT, statuses, queue, name, ids, older_than)
        return [dict(r) for r in self._conn.execute(
            f"SELECT {_TASK_SELECT} FROM tasks WHERE {where} "
            f"ORDER BY finished_at DESC, id DESC LIMIT ?", (*params, int(limit)))]

    @guarded
    def count_finished(self, statuses, queue=None, name=None, ids=None,
                       older_than=None) -> int:
        """How many tasks find_finished() would find with no limit."""
        where, params = finished_where(DIALECT, statuses, queue, name, ids, older_than)
        return self._conn.execute(f"SELECT COUNT(*) FROM tasks WHERE {where}",
                                  params).fetchone()[0]
