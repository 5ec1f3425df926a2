"""SQLite: what the monitor reads, and what operators do (cancel, retry, purge)."""

from __future__ import annotations

from typing import Any

from ...timeutil import now
from ..filters import (KEY_IS_FREE, KEY_IS_FREE_FOR_NEWEST, PRUNABLE, equal_filters,
                       finished_status)
from ...taskspec import check_purge
from ..base import CANCEL_TEXT, TASK_STATUSES
from . import deps
from .connection import guarded, row_dict

TASK_COLUMNS = ("id", "name", "queue", "status", "priority", "attempts", "max_retries",
                "worker_id", "run_at", "created_at", "started_at", "finished_at",
                "result", "error", "payload", "timeout", "retry_delay", "retry_backoff",
                "retry_max_delay", "unique_key")
_TASK_SELECT = ", ".join(TASK_COLUMNS)


class ReadOps:
    """Mixin of SQLiteBackend: monitor reads and operator actions."""


    @guarded
    def get_task(self, task_id):
        """One task row as a dict (raw columns), or None."""
        return row_dict(self._conn.execute(
            f"SELECT {_TASK_SELECT} FROM tasks WHERE id = ?", (task_id,)).fetchone())

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
    def find_tasks(self, status=None, queue=None, name=None, limit: int = 50, offset: int = 0,
                   order: str = "id") -> list:
        """Tasks matching optional filters, newest first (order 'id' or 'finished')."""
        clause, params = equal_filters("?", status=status, queue=queue, name=name)
        sort = "finished_at DESC, id DESC" if order == "finished" else "id DESC"
        return [dict(r) for r in self._conn.execute(
            f"SELECT {_TASK_SELECT} FROM tasks {clause} ORDER BY {sort} LIMIT ? OFFSET ?",
            (*params, int(limit), int(offset)))]

    @guarded
    def count_tasks(self, status: str | None = None, queue: str | None = None,
                    name: str | None = None) -> int:
        """How many tasks match the optional filters."""
        clause, params = equal_filters("?", status=status, queue=queue, name=name)
        return self._conn.execute(f"SELECT COUNT(*) FROM tasks {clause}", params).fetchone()[0]

    @guarded
    def queue_stats(self, estimate: bool = False) -> list:
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

    # ---- operator actions ----------------------------------------------

    @guarded
    def cancel(self, task_id) -> bool:
        """Cancel a pending or running task, and (transitively) the pending tasks that
        depend on it; False when it is neither. The daemon running it is told at once
        (a wake-up datagram)."""
        t = now()
        with self._write() as conn:
            row = conn.execute(
                "UPDATE tasks SET finished_at = ?, error = CASE WHEN status = 'running' "
                "THEN ? ELSE error END, status = 'cancelled' "
                "WHERE id = ? AND status IN ('pending', 'running') RETURNING error",
                (t, CANCEL_TEXT, task_id)).fetchone()
            if row is not None:
                deps.cancel_dependents(conn, [task_id], "cancelled", t)
        if row is not None and row[0] == CANCEL_TEXT:
            self.notify_cancel(task_id)
        return row is not None

    @guarded
    def retry_failed(self, task_id=None, queue=None, name=None) -> int:
        """Put failed (or cancelled, when named by id) tasks back to pending, attempts reset.

        With task_id, that one task; else every failed task matching queue/name.
        """
        t = now()
        with self._write() as conn:
            if task_id is not None:
                cur = conn.execute(
                    "UPDATE tasks SET status = 'pending', attempts = 0, run_at = ?, "
                    "worker_id = NULL, finished_at = NULL "
                    f"WHERE id = ? AND status IN ('failed', 'cancelled') AND {KEY_IS_FREE}",
                    (t, task_id))
                return cur.rowcount
            clause, params = equal_filters("?", status="failed", queue=queue, name=name)
            cur = conn.execute(
                "UPDATE tasks SET status = 'pending', attempts = 0, run_at = ?, "
                f"worker_id = NULL, finished_at = NULL {clause} AND {KEY_IS_FREE_FOR_NEWEST}",
                (t, *params))
            return cur.rowcount

    @guarded
    def prune(self, status: str, older_than: float, limit: int) -> int:
        """Delete at most `limit` tasks of finished `status` that finished over
        `older_than` seconds ago, oldest first; returns how many."""
        status = finished_status(status)
        with self._write() as conn:
            gone = [r[0] for r in conn.execute(
                f"DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE "
                f"status = '{status}' AND finished_at < ? AND {PRUNABLE} "
                f"ORDER BY finished_at LIMIT ?) RETURNING id", (now() - older_than, int(limit)))]
            # A pruned task's own edges go with it (nothing waits for a finished task).
            deps.forget_children(conn, gone)
            return len(gone)

    @guarded
    def purge(self, older_than, statuses=("done", "failed", "cancelled")) -> int:
        """Delete finished tasks that finished more than `older_than` seconds ago."""
        statuses = check_purge(older_than, statuses, TASK_STATUSES)
        if not statuses:
            return 0
        marks = ",".join("?" * len(statuses))
        with self._write() as conn:
            cur = conn.execute(
                f"DELETE FROM tasks WHERE status IN ({marks}) AND finished_at < ?",
                (*statuses, now() - older_than))
            return cur.rowcount
