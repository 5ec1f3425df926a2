"""PostgreSQL: the workers table (heartbeats) and the reclaim of dead daemons' tasks.

Heartbeats are stamped with the server's now(). The daemons judge staleness by
whether a heartbeat changes (liteqd.liveness), not by its age, and name the value
they found stale: a worker whose row no longer holds it beat meanwhile and keeps
its tasks. `stale_after` still judges by the server's clock for callers that ask.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..stats import reclaimed_tally
from . import deps, stats
from .connection import guarded
from .opbase import OpBase

WORKER_COLUMNS = ("worker_id, hostname, queues, concurrency, "
                  "date_part('epoch', last_heartbeat) AS last_heartbeat, pid, "
                  "date_part('epoch', process_started) AS process_started, "
                  "date_part('epoch', started_at) AS started_at")

HEARTBEAT = (
    "INSERT INTO workers (worker_id, hostname, queues, concurrency, last_heartbeat, pid, "
    "process_started, started_at) VALUES (%s, %s, %s, %s, now(), %s, "
    "to_timestamp(%s::float8), COALESCE(to_timestamp(%s::float8), now())) "
    "ON CONFLICT (worker_id) DO UPDATE SET hostname = excluded.hostname, "
    "queues = excluded.queues, concurrency = excluded.concurrency, "
    "last_heartbeat = excluded.last_heartbeat, pid = excluded.pid, "
    "process_started = excluded.process_started")

# One statement, so two daemons reclaiming at once never requeue a task twice:
# the second one's UPDATE waits for the first's row locks, then re-checks
# status = 'running' on the new row versions and skips them. The CTE deletes the
# dead workers' rows (named, still holding the heartbeat named as stale, or with a
# heartbeat older than stale_after by the server's clock); tasks of a worker with no
# row at all are given back too. A reclaimed task keeps its due time (run_at).
RECLAIM = (
    "WITH gone AS (DELETE FROM workers WHERE worker_id = ANY(%(dead)s::text[]) "
    " OR last_heartbeat < now() - %(stale)s::float8 * interval '1 second' "
    " OR (worker_id, date_part('epoch', last_heartbeat)) IN "
    "  (SELECT * FROM unnest(%(beat_ids)s::text[], %(beats)s::float8[])) "
    " RETURNING worker_id) "
    "UPDATE tasks t SET "
    "status = CASE WHEN t.attempts > t.max_retries THEN 'failed' ELSE 'pending' END, "
    "error = CASE WHEN t.attempts > t.max_retries THEN %(error)s ELSE t.error END, "
    "finished_at = CASE WHEN t.attempts > t.max_retries THEN now() ELSE NULL END, "
    "worker_id = NULL "
    "WHERE t.status = 'running' AND (t.worker_id IS NULL "
    " OR t.worker_id = ANY(%(dead)s::text[]) OR t.worker_id IN (SELECT worker_id FROM gone) "
    " OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = t.worker_id)) "
    "RETURNING t.id, t.status, t.queue, t.name, t.attempts")


class WorkerOps(OpBase):
    """Mixin of PostgresBackend: heartbeats, worker rows and reclaim."""

    @guarded
    def heartbeat(self, worker_id: str, hostname: str, queues: Sequence[str], concurrency: int,
                  pid: int, process_started: float, started_at: float | None = None) -> None:
        """Insert or refresh this daemon's row, stamped with the server's now()."""
        self._session.run(HEARTBEAT, (worker_id, hostname, queues, concurrency, pid,
                                      process_started, started_at), prepare=True)

    @guarded
    def remove_worker(self, worker_id: str) -> None:
        """Delete a daemon's worker row (on a clean stop)."""
        self._session.run("DELETE FROM workers WHERE worker_id = %s", (worker_id,))

    @guarded
    def list_workers(self) -> list[dict[str, Any]]:
        """Every worker row, newest heartbeat first."""
        return self._session.run(
            f"SELECT {WORKER_COLUMNS} FROM workers ORDER BY last_heartbeat DESC").fetchall()

    @guarded
    def reclaim(self, dead_worker_ids: Iterable[str] = (), stale_after: float | None = None,
                reason: str = "worker died", stale_heartbeats: dict[str, Any] | None = None) -> list[tuple[int, str]]:
        """Give back the running tasks of dead workers in one guarded statement.

        Dead: named in dead_worker_ids, a row still holding the heartbeat
        stale_heartbeats ({worker_id: last_heartbeat as list_workers gave it}) names,
        a heartbeat older than stale_after seconds by the server's clock, or no worker
        row at all. Tasks with attempts left go back to pending, keeping their due
        time; the rest fail with `reason`. Dead worker rows are deleted. Returns
        [(task_id, new_status)].
        """
        session = self._session
        beats = dict(stale_heartbeats or {})
        final = reason + ", and the task has no retries left"
        with session.transaction():
            rows = session.run(RECLAIM, {
                "dead": list(dead_worker_ids), "stale": stale_after,
                "beat_ids": list(beats), "beats": list(beats.values()),
                "error": final}, prepare=True).fetchall()
            failed = [r["id"] for r in rows if r["status"] == "failed"]
            tally = reclaimed_tally(rows)
            if failed:
                deps.cancel_dependents(session, failed, "failed", tally)
            # The attempt each was on ended with its daemon.
            stats.add_errors(session, [(r["id"], r["attempts"],
                                        final if r["status"] == "failed" else reason, None)
                                       for r in rows])
            stats.write(session, tally, self._stat_names, self._stat_shard)
        return [(r["id"], r["status"]) for r in rows]

    @guarded
    def active_workers(self, window: float) -> list[dict[str, Any]]:
        """Workers with a heartbeat in the last `window` seconds (server's clock), each
        with heartbeat_age_s and active_tasks (its running tasks)."""
        return self._session.run(
            "SELECT w.worker_id, w.hostname, w.queues, w.concurrency, "
            "date_part('epoch', w.last_heartbeat) AS last_heartbeat, w.pid, "
            "date_part('epoch', w.started_at) AS started_at, "
            "date_part('epoch', now() - w.last_heartbeat) AS heartbeat_age_s, "
            "(SELECT COUNT(*) FROM tasks t WHERE t.status = 'running' "
            "AND t.worker_id = w.worker_id) AS active_tasks FROM workers w "
            "WHERE w.last_heartbeat >= now() - %s::float8 * interval '1 second' "
            "ORDER BY w.worker_id", (window,)).fetchall()
