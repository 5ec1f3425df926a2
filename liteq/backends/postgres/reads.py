"""PostgreSQL: what the monitor reads, and what operators do (cancel, retry, purge).

Rows come back with the SQLite backend's keys, times as epoch seconds.
"""

from __future__ import annotations

from typing import Any

from ...taskspec import check_purge
from ..base import CANCEL_TEXT, TASK_STATUSES
from ..filters import (KEY_IS_FREE, KEY_IS_FREE_FOR_NEWEST, KEY_IS_FREE_FOR_NEWEST_FINISHED,
                       PRUNABLE, equal_filters, finished_status, finished_statuses,
                       task_filters, task_where)
from ..stats import Tally
from . import counts, deps, stats
from .connection import operation
from .opbase import OpBase
from .vacuum import vacuum_now


def _epoch(col) -> str:
    return f"date_part('epoch', {col}) AS {col}"


TASK_SELECT = ", ".join((
    "id", "name", "queue", "status", "priority", "attempts", "max_retries", "worker_id",
    _epoch("run_at"), _epoch("created_at"), _epoch("started_at"), _epoch("finished_at"),
    "result", "error", "payload", "timeout", "retry_delay", "retry_backoff",
    "retry_max_delay", "unique_key"))

FINISHED_STATUSES = ("done", "failed", "cancelled")


class ReadOps(OpBase):
    """Mixin of PostgresBackend: monitor reads and operator actions."""

    @operation
    def get_task(self, task_id):
        """One task row as a dict, or None."""
        return self._session.run(f"SELECT {TASK_SELECT} FROM tasks WHERE id = %s",
                                 (int(task_id),), prepare=True).fetchone()

    @operation
    def task_errors(self, task_id) -> list:
        """Every recorded attempt's error of a task, oldest first:
        [{attempt, error, finished_at}]."""
        return stats.errors_of(self._session, task_id)

    @operation
    def task_stats(self) -> list:
        """The outcome statistics: [{queue, name, metric, bucket, count, total}]."""
        return stats.read(self._session)

    @operation
    def get_tasks(self, task_ids) -> list:
        """Rows for several ids (missing ids are skipped)."""
        ids = [int(i) for i in task_ids]
        if not ids:
            return []
        return self._session.run(f"SELECT {TASK_SELECT} FROM tasks WHERE id = ANY(%s::bigint[])",
                                 (ids,)).fetchall()

    @operation
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

    @operation
    def count_tasks(self, status=None, queue=None, name=None, *, search=None,
                    statuses=None) -> int:
        """How many tasks match the optional filters."""
        clause, params = task_where("%s", "ILIKE", status=status, queue=queue, name=name,
                                    search=search, statuses=statuses)
        return self._session.run(f"SELECT COUNT(*) AS n FROM tasks {clause}",
                                 params).fetchone()["n"]

    @operation
    def match_task_ids(self, statuses, status=None, queue=None, name=None, search=None,
                       below=None, limit=500) -> list:
        """Ids of tasks in `statuses` matching the filters, below id `below`, newest
        first, at most `limit`: one batch of a bulk action."""
        clause, params = task_where("%s", "ILIKE", status=status, queue=queue, name=name,
                                    search=search, statuses=tuple(statuses), below=below)
        return [r["id"] for r in self._session.run(
            f"SELECT id FROM tasks {clause} ORDER BY id DESC LIMIT %s",
            (*params, int(limit))).fetchall()]

    @operation
    def cancel_many(self, task_ids) -> int:
        """cancel() for several tasks in one transaction; returns how many it cancelled
        (running ones are NOTIFYed to the daemons, as cancel() does)."""
        ids = [int(i) for i in task_ids]
        if not ids:
            return 0
        session = self._session
        tally = Tally()
        with session.transaction():
            rows = session.run(
                "WITH c AS (UPDATE tasks SET finished_at = now(), error = CASE WHEN status = "
                "'running' THEN %s ELSE error END, status = 'cancelled' "
                "WHERE id = ANY(%s::bigint[]) AND status IN ('pending', 'running') "
                "RETURNING id, error, queue, name, attempts) "
                "SELECT c.id, c.error, c.queue, c.name, c.attempts, CASE WHEN c.error = %s "
                "THEN pg_notify(%s, json_build_object('k', 'cancel', 'id', c.id)::text) END "
                "FROM c",
                (CANCEL_TEXT, ids, CANCEL_TEXT, self._channel)).fetchall()
            if rows:
                # Counted and kept as cancel() does, one at a time.
                for r in rows:
                    tally.outcome(r["queue"], r["name"], "cancelled")
                stats.add_errors(session, [(r["id"], r["attempts"], CANCEL_TEXT, None)
                                           for r in rows if r["error"] == CANCEL_TEXT])
                deps.cancel_dependents(session, [r["id"] for r in rows], "cancelled", tally)
                stats.write(session, tally, self._stat_names, self._stat_shard)
        return len(rows)

    @operation
    def retry_many(self, task_ids) -> int:
        """Put these failed or cancelled tasks back to pending, due now, attempts reset
        (unique keys guarded as retry_failed does); returns how many."""
        ids = [int(i) for i in task_ids]
        if not ids:
            return 0
        return self._session.run(
            "UPDATE tasks SET status = 'pending', attempts = 0, run_at = now(), "
            "worker_id = NULL, finished_at = NULL WHERE id = ANY(%s::bigint[]) "
            f"AND status IN ('failed', 'cancelled') AND {KEY_IS_FREE_FOR_NEWEST_FINISHED}",
            (ids,)).rowcount

    @operation
    def delete_many(self, task_ids) -> int:
        """Delete these tasks when finished (done, failed, cancelled) and no pending or
        running task depends on them; returns how many."""
        ids = [int(i) for i in task_ids]
        if not ids:
            return 0
        return self._session.run(
            f"WITH gone AS (DELETE FROM tasks WHERE id = ANY(%s::bigint[]) AND status IN "
            f"('done', 'failed', 'cancelled') AND {PRUNABLE} RETURNING id), "
            f"edges AS (DELETE FROM task_deps WHERE child_id IN (SELECT id FROM gone)), "
            f"errs AS (DELETE FROM task_errors WHERE task_id IN (SELECT id FROM gone)) "
            f"SELECT COUNT(*) AS n FROM gone", (ids,)).fetchone()["n"]

    @operation
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

    @operation
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

    @operation
    def list_queues(self) -> list:
        """Every queue name that has tasks or schedules, sorted."""
        return [r["queue"] for r in self._session.run(
            "SELECT queue FROM tasks UNION SELECT queue FROM schedules "
            "WHERE queue IS NOT NULL ORDER BY 1")]

    @operation
    def finish_window(self) -> tuple[float | None, float | None]:
        """(earliest started_at, latest finished_at) over done tasks: a drain's span."""
        row = self._session.run(
            "SELECT date_part('epoch', MIN(started_at)) AS a, "
            "date_part('epoch', MAX(finished_at)) AS b FROM tasks WHERE status = 'done'"
        ).fetchone()
        return row["a"], row["b"]

    @operation
    def oldest_pending(self) -> list[dict[str, Any]]:
        """[{queue, oldest_run_at}]: the earliest due time of pending tasks per queue."""
        return self._session.run(
            "SELECT queue, date_part('epoch', MIN(run_at)) AS oldest_run_at FROM tasks "
            "WHERE status = 'pending' GROUP BY queue ORDER BY queue").fetchall()

    @operation
    def finished_buckets(self, since: float, bucket: float) -> list[dict[str, Any]]:
        """[{slot, status, count}]: tasks finished since `since` (epoch s), per `bucket`
        seconds; slot n covers [since + n*bucket, since + (n+1)*bucket)."""
        return self._session.run(
            "SELECT floor((date_part('epoch', finished_at) - %(since)s) / %(bucket)s)::int "
            "AS slot, status, COUNT(*) AS count FROM tasks "
            "WHERE status IN ('done', 'failed', 'cancelled') "
            "AND finished_at >= to_timestamp(%(since)s) GROUP BY slot, status ORDER BY slot",
            {"since": float(since), "bucket": float(bucket)}).fetchall()

    # ---- operator actions ------------------------------------------------

    @operation
    def cancel(self, task_id) -> bool:
        """Cancel a pending or running task, and (transitively) the pending tasks that
        depend on it; False when it is neither. For a running one, the same statement
        NOTIFYs the daemons (the one running it stops it)."""
        session = self._session
        tally = Tally()
        with session.transaction():
            row = session.run(
                "WITH c AS (UPDATE tasks SET finished_at = now(), error = CASE WHEN status = "
                "'running' THEN %s ELSE error END, status = 'cancelled' "
                "WHERE id = %s AND status IN ('pending', 'running') "
                "RETURNING id, error, queue, name, attempts) "
                "SELECT c.id, c.error, c.queue, c.name, c.attempts, CASE WHEN c.error = %s "
                "THEN pg_notify(%s, json_build_object('k', 'cancel', 'id', c.id)::text) END "
                "FROM c",
                (CANCEL_TEXT, int(task_id), CANCEL_TEXT, self._channel)).fetchone()
            if row is not None:
                tally.outcome(row["queue"], row["name"], "cancelled")
                if row["error"] == CANCEL_TEXT:
                    # A running attempt ends here: its error is the cancel.
                    stats.add_errors(session, [(row["id"], row["attempts"], CANCEL_TEXT, None)])
                deps.cancel_dependents(session, [task_id], "cancelled", tally)
                stats.write(session, tally, self._stat_names, self._stat_shard)
        return row is not None

    @staticmethod
    def _finished_where(statuses, queue, name, ids, older_than):
        conds, params = task_filters("%s", queue=queue, name=name, ids=ids)
        conds.insert(0, f"status IN ({finished_statuses(statuses)})")
        if older_than is not None:
            conds.append("finished_at < now() - %s::float8 * interval '1 second'")
            params.append(float(older_than))
        return " AND ".join(conds), params

    @operation
    def find_finished(self, statuses, queue=None, name=None, ids=None, older_than=None,
                      limit=50) -> list:
        """Finished tasks of `statuses` matching the optional filters (older_than: finished
        over that many seconds ago, by the server's clock), latest finish first."""
        where, params = self._finished_where(statuses, queue, name, ids, older_than)
        return self._session.run(
            f"SELECT {TASK_SELECT} FROM tasks WHERE {where} "
            f"ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT %s",
            (*params, int(limit))).fetchall()

    @operation
    def count_finished(self, statuses, queue=None, name=None, ids=None,
                       older_than=None) -> int:
        """How many tasks find_finished() would find with no limit."""
        where, params = self._finished_where(statuses, queue, name, ids, older_than)
        return self._session.run(f"SELECT COUNT(*) AS n FROM tasks WHERE {where}",
                                 params).fetchone()["n"]

    @operation
    def retry_failed(self, task_id=None, queue=None, name=None, ids=None,
                     older_than=None) -> int:
        """Put failed tasks (or one failed or cancelled task, by id) back to pending,
        due now, with their attempts reset; returns how many. With ids: the failed or
        cancelled tasks among them that match the other filters."""
        reset = ("UPDATE tasks SET status = 'pending', attempts = 0, run_at = now(), "
                 "worker_id = NULL, finished_at = NULL ")
        if task_id is not None:
            return self._session.run(
                reset + f"WHERE id = %s AND status IN ('failed', 'cancelled') AND {KEY_IS_FREE}",
                (int(task_id),)).rowcount
        if ids is not None:
            # One id at a time: of two chosen tasks with one unique key, the first takes
            # the key and the second, seeing it held, stays as it is.
            where, params = self._finished_where(("failed", "cancelled"), queue, name,
                                                 None, older_than)
            done = 0
            with self._session.transaction():
                for one in sorted({int(i) for i in ids}):
                    done += self._session.run(
                        f"{reset} WHERE {where} AND id = %s AND {KEY_IS_FREE}",
                        (*params, one)).rowcount
            return done
        where, params = self._finished_where("failed", queue, name, None, older_than)
        return self._session.run(f"{reset} WHERE {where} AND {KEY_IS_FREE_FOR_NEWEST}",
                                 params).rowcount

    @operation
    def prune(self, status: str, older_than: float, limit: int) -> int:
        """Delete at most `limit` tasks of finished `status` that finished over
        `older_than` seconds ago (server's clock), oldest first; returns how many.
        Rows another daemon is pruning at the same moment are skipped, not waited on.
        On a server whose autovacuum is off, it starts a VACUUM of the table when
        autovacuum would have, and never waits for it (vacuum.py)."""
        status = finished_status(status)
        # A pruned task's own edges go with it (nothing waits for a finished task).
        deleted = self._session.run(
            f"WITH gone AS (DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE "
            f"status = '{status}' AND finished_at < now() - %s::float8 * interval '1 second' "
            f"AND {PRUNABLE} ORDER BY finished_at LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"RETURNING id), edges AS (DELETE FROM task_deps WHERE child_id IN "
            f"(SELECT id FROM gone)), errs AS (DELETE FROM task_errors WHERE task_id IN "
            f"(SELECT id FROM gone)) SELECT COUNT(*) AS n FROM gone",
            (float(older_than), int(limit)), prepare=True).fetchone()["n"]
        self._vacuums.after_prune(self._session, deleted)
        return deleted

    def purge(self, older_than, statuses=FINISHED_STATUSES, queue=None, name=None,
              ids=None) -> int:
        """Delete finished tasks that finished over `older_than` seconds ago (server's
        clock), of `statuses`, matching the optional queue, name and ids; a task that a
        pending or running task depends on is kept. On a server whose autovacuum is off,
        then VACUUM the table when autovacuum would have (on a connection of its own;
        see vacuum.py)."""
        deleted, vacuum = self._delete_finished(older_than, statuses, queue, name, ids)
        if vacuum:
            vacuum_now(self._connector)
        return deleted

    @operation
    def _delete_finished(self, older_than, statuses, queue=None, name=None, ids=None):
        """(rows deleted, whether the table needs a VACUUM from LiteQ now)."""
        # older_than None: any age (an operator's purge by ids).
        statuses = check_purge(0.0 if older_than is None else older_than, statuses,
                               TASK_STATUSES)
        statuses = tuple(s for s in statuses if s in FINISHED_STATUSES)
        if not statuses:
            return 0, False  # only finished tasks have a finish time to be older than
        # Literal statuses (finished_statuses), so the planner can prove the partial
        # index tasks_finished applies (a parameter array would mean a sequential scan).
        where, params = self._finished_where(statuses, queue, name, ids, older_than)
        # A deleted task's own edges and its attempts' errors go with it (nothing waits
        # for a finished task).
        deleted = self._session.run(
            f"WITH gone AS (DELETE FROM tasks WHERE {where} AND {PRUNABLE} RETURNING id), "
            f"edges AS (DELETE FROM task_deps WHERE child_id IN (SELECT id FROM gone)), "
            f"errs AS (DELETE FROM task_errors WHERE task_id IN (SELECT id FROM gone)) "
            f"SELECT COUNT(*) AS n FROM gone", params).fetchone()["n"]
        return deleted, self._vacuums.needed(self._session, deleted)
