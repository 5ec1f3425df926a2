"""SQLite: what the monitor reads, and what operators do (cancel, retry, purge)."""

from __future__ import annotations

from typing import Any

from ...timeutil import now
from ..filters import (KEY_IS_FREE, KEY_IS_FREE_FOR_NEWEST, KEY_IS_FREE_FOR_NEWEST_FINISHED,
                       PRUNABLE, equal_filters, finished_status, finished_statuses,
                       task_filters, task_where)
from ...taskspec import check_purge
from ..base import CANCEL_TEXT, TASK_STATUSES
from ..stats import Tally
from . import deps, stats
from .connection import guarded, row_dict
from .opbase import OpBase

TASK_COLUMNS = ("id", "name", "queue", "status", "priority", "attempts", "max_retries",
                "worker_id", "run_at", "created_at", "started_at", "finished_at",
                "result", "error", "payload", "timeout", "retry_delay", "retry_backoff",
                "retry_max_delay", "unique_key")
_TASK_SELECT = ", ".join(TASK_COLUMNS)


class ReadOps(OpBase):
    """Mixin of SQLiteBackend: monitor reads and operator actions."""


    @guarded
    def get_task(self, task_id):
        """One task row as a dict (raw columns), or None."""
        return row_dict(self._conn.execute(
            f"SELECT {_TASK_SELECT} FROM tasks WHERE id = ?", (task_id,)).fetchone())

    @guarded
    def task_errors(self, task_id) -> list:
        """Every recorded attempt's error of a task, oldest first:
        [{attempt, error, finished_at}]."""
        return stats.errors_of(self._conn, task_id)

    @guarded
    def task_stats(self) -> list:
        """The outcome statistics: [{queue, name, metric, bucket, count, total}]."""
        return stats.read(self._conn)

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
    def cancel_many(self, task_ids) -> int:
        """cancel() for several tasks in one transaction; returns how many it cancelled."""
        ids = [int(i) for i in task_ids]
        if not ids:
            return 0
        t = now()
        tally = Tally()
        marks = ",".join("?" * len(ids))
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE tasks SET finished_at = ?, error = CASE WHEN status = 'running' "
                "THEN ? ELSE error END, status = 'cancelled' "
                f"WHERE id IN ({marks}) AND status IN ('pending', 'running') "
                "RETURNING id, error, queue, name, attempts",
                (t, CANCEL_TEXT, *ids)).fetchall()
            if rows:
                # Counted and kept as cancel() does, one at a time.
                for r in rows:
                    tally.outcome(r["queue"], r["name"], "cancelled")
                stats.add_errors(conn, [(r["id"], r["attempts"], CANCEL_TEXT, t)
                                        for r in rows if r["error"] == CANCEL_TEXT])
                deps.cancel_dependents(conn, [r[0] for r in rows], "cancelled", t, tally)
                stats.write(conn, tally, self._stat_names)
        for r in rows:
            if r["error"] == CANCEL_TEXT:
                self.notify_cancel(r["id"])
        return len(rows)

    @guarded
    def retry_many(self, task_ids) -> int:
        """Put these failed or cancelled tasks back to pending, attempts reset (unique
        keys guarded as retry_failed does); returns how many."""
        ids = [int(i) for i in task_ids]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._write() as conn:
            return conn.execute(
                "UPDATE tasks SET status = 'pending', attempts = 0, run_at = ?, "
                "worker_id = NULL, finished_at = NULL "
                f"WHERE id IN ({marks}) AND status IN ('failed', 'cancelled') "
                f"AND {KEY_IS_FREE_FOR_NEWEST_FINISHED}", (now(), *ids)).rowcount

    @guarded
    def delete_many(self, task_ids) -> int:
        """Delete these tasks when finished (done, failed, cancelled) and no pending or
        running task depends on them; returns how many."""
        ids = [int(i) for i in task_ids]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._write() as conn:
            gone = [r[0] for r in conn.execute(
                f"DELETE FROM tasks WHERE id IN ({marks}) AND status IN "
                f"('done', 'failed', 'cancelled') AND {PRUNABLE} RETURNING id", ids)]
            deps.forget_children(conn, gone)
            return len(gone)

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

    # ---- operator actions ----------------------------------------------

    @guarded
    def cancel(self, task_id) -> bool:
        """Cancel a pending or running task, and (transitively) the pending tasks that
        depend on it; False when it is neither. The daemon running it is told at once
        (a wake-up datagram)."""
        t = now()
        tally = Tally()
        with self._write() as conn:
            row = conn.execute(
                "UPDATE tasks SET finished_at = ?, error = CASE WHEN status = 'running' "
                "THEN ? ELSE error END, status = 'cancelled' "
                "WHERE id = ? AND status IN ('pending', 'running') "
                "RETURNING error, queue, name, attempts",
                (t, CANCEL_TEXT, task_id)).fetchone()
            if row is not None:
                tally.outcome(row["queue"], row["name"], "cancelled")
                if row[0] == CANCEL_TEXT:
                    # A running attempt ends here: its error is the cancel.
                    stats.add_errors(conn, [(int(task_id), row["attempts"], CANCEL_TEXT, t)])
                deps.cancel_dependents(conn, [task_id], "cancelled", t, tally)
                stats.write(conn, tally, self._stat_names)
        if row is not None and row[0] == CANCEL_TEXT:
            self.notify_cancel(task_id)
        return row is not None

    def _finished_where(self, statuses, queue, name, ids, older_than):
        conds, params = task_filters("?", queue=queue, name=name, ids=ids)
        conds.insert(0, f"status IN ({finished_statuses(statuses)})")
        if older_than is not None:
            conds.append("finished_at < ?")
            params.append(now() - float(older_than))
        return " AND ".join(conds), params

    @guarded
    def find_finished(self, statuses, queue=None, name=None, ids=None, older_than=None,
                      limit=50) -> list:
        """Finished tasks of `statuses` matching the optional filters (older_than: finished
        over that many seconds ago), latest finish first."""
        where, params = self._finished_where(statuses, queue, name, ids, older_than)
        return [dict(r) for r in self._conn.execute(
            f"SELECT {_TASK_SELECT} FROM tasks WHERE {where} "
            f"ORDER BY finished_at DESC, id DESC LIMIT ?", (*params, int(limit)))]

    @guarded
    def count_finished(self, statuses, queue=None, name=None, ids=None,
                       older_than=None) -> int:
        """How many tasks find_finished() would find with no limit."""
        where, params = self._finished_where(statuses, queue, name, ids, older_than)
        return self._conn.execute(f"SELECT COUNT(*) FROM tasks WHERE {where}",
                                  params).fetchone()[0]

    @guarded
    def retry_failed(self, task_id=None, queue=None, name=None, ids=None,
                     older_than=None) -> int:
        """Put failed (or cancelled, when named by id) tasks back to pending, attempts reset.

        With task_id, that one task; else every failed task matching queue, name and
        older_than, and with ids, the failed or cancelled tasks among those ids.
        """
        t = now()
        reset = ("UPDATE tasks SET status = 'pending', attempts = 0, run_at = ?, "
                 "worker_id = NULL, finished_at = NULL ")
        with self._write() as conn:
            if task_id is not None:
                cur = conn.execute(
                    reset + f"WHERE id = ? AND status IN ('failed', 'cancelled') AND {KEY_IS_FREE}",
                    (t, task_id))
                return cur.rowcount
            if ids is not None:
                # One id at a time: of two chosen tasks with one unique key, the first
                # takes the key and the second, seeing it held, stays as it is.
                where, params = self._finished_where(("failed", "cancelled"), queue, name,
                                                     None, older_than)
                done = 0
                for one in sorted({int(i) for i in ids}):
                    done += conn.execute(f"{reset} WHERE {where} AND id = ? AND {KEY_IS_FREE}",
                                         (t, *params, one)).rowcount
                return done
            where, params = self._finished_where("failed", queue, name, None, older_than)
            cur = conn.execute(f"{reset} WHERE {where} AND {KEY_IS_FREE_FOR_NEWEST}",
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
    def purge(self, older_than, statuses=("done", "failed", "cancelled"), queue=None,
              name=None, ids=None) -> int:
        """Delete finished tasks that finished more than `older_than` seconds ago, of
        `statuses`, matching the optional queue, name and ids. A task that a pending or
        running task depends on is kept (the child waits for it, or reads its result)."""
        # older_than None: any age (an operator's purge by ids).
        statuses = check_purge(0.0 if older_than is None else older_than, statuses,
                               TASK_STATUSES)
        statuses = tuple(s for s in statuses if s in ("done", "failed", "cancelled"))
        if not statuses:
            return 0  # only finished tasks have a finish time to be older than
        where, params = self._finished_where(statuses, queue, name, ids, older_than)
        with self._write() as conn:
            # A deleted task's own edges go with it (nothing waits for a finished task).
            conn.execute(f"DELETE FROM task_deps WHERE child_id IN "
                         f"(SELECT id FROM tasks WHERE {where} AND {PRUNABLE})", params)
            cur = conn.execute(f"DELETE FROM tasks WHERE {where} AND {PRUNABLE}", params)
            return cur.rowcount
