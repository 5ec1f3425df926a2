"""SQLite: the workers table (heartbeats) and the reclaim of dead daemons' tasks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ...timeutil import now
from ..stats import reclaimed_tally
from . import deps, stats
from .connection import guarded

HEARTBEAT = (
    "INSERT INTO workers (worker_id, hostname, queues, concurrency, last_heartbeat, "
    "pid, process_started, started_at) VALUES (?,?,?,?,?,?,?,?) "
    "ON CONFLICT(worker_id) DO UPDATE SET hostname = excluded.hostname, "
    "queues = excluded.queues, concurrency = excluded.concurrency, "
    "last_heartbeat = excluded.last_heartbeat, pid = excluded.pid, "
    "process_started = excluded.process_started")


class WorkerOps:
    """Mixin of SQLiteBackend: heartbeats, worker rows and reclaim."""

    @guarded
    def heartbeat(self, worker_id: str, hostname: str, queues: Sequence[str], concurrency: int,
                  pid: int, process_started: float, started_at: float | None = None) -> None:
        """Insert or refresh this daemon's row in `workers`."""
        t = now()
        with self._write() as conn:
            conn.execute(HEARTBEAT, (worker_id, hostname, queues, concurrency, t, pid,
                                     process_started, started_at or t))

    @guarded
    def remove_worker(self, worker_id: str) -> None:
        """Delete a worker's row (on clean shutdown)."""
        with self._write() as conn:
            conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    @guarded
    def list_workers(self) -> list[dict[str, Any]]:
        """Every row of `workers`, newest heartbeat first."""
        return [dict(r) for r in self._conn.execute(
            "SELECT * FROM workers ORDER BY last_heartbeat DESC")]

    @guarded
    def reclaim(self, dead_worker_ids: Iterable[str] = (), stale_after: float | None = None,
                reason: str = "worker died", stale_heartbeats: dict[str, Any] | None = None) -> list[tuple[int, str]]:
        """Give back the running tasks of dead workers, in one atomic statement.

        A worker is dead when it is named in `dead_worker_ids`, its row still holds the
        heartbeat `stale_heartbeats` ({worker_id: last_heartbeat}) names for it, its
        heartbeat is older than `stale_after` seconds, or it has no row at all. Tasks
        with attempts left go back to pending, keeping their due time; the rest fail
        with `reason`. Dead worker rows are deleted.
        """
        t = now()
        dead = list(dead_worker_ids)
        beats = list((stale_heartbeats or {}).items())
        marks = ",".join("?" * len(dead)) or "NULL"
        stale = -1.0 if stale_after is None else t - stale_after
        # A row that still holds the heartbeat read as stale: one that beat meanwhile
        # is alive and keeps its tasks.
        unchanged = " OR ".join("(worker_id = ? AND last_heartbeat = ?)" for _ in beats) or "0"
        gone = f"worker_id IN ({marks}) OR last_heartbeat < ? OR {unchanged}"
        args = (*dead, stale, *[v for pair in beats for v in pair])
        dead_clause = (f"worker_id IN (SELECT worker_id FROM workers WHERE {gone}) "
                       f"OR worker_id IN ({marks}) OR worker_id IS NULL OR worker_id NOT IN "
                       f"(SELECT worker_id FROM workers)")
        final = reason + ", and the task has no retries left"
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE tasks SET "
                "status = CASE WHEN attempts > max_retries THEN 'failed' ELSE 'pending' END, "
                "error = CASE WHEN attempts > max_retries THEN ? ELSE error END, "
                "finished_at = CASE WHEN attempts > max_retries THEN ? ELSE NULL END, "
                "worker_id = NULL "
                f"WHERE status = 'running' AND ({dead_clause}) "
                "RETURNING id, status, queue, name, attempts",
                (final, t, *args, *dead)).fetchall()
            failed = [r["id"] for r in rows if r["status"] == "failed"]
            tally = reclaimed_tally(rows)
            if failed:
                deps.cancel_dependents(conn, failed, "failed", t, tally)
            # The attempt each was on ended with its daemon.
            stats.add_errors(conn, [(r["id"], r["attempts"],
                                     final if r["status"] == "failed" else reason, t)
                                    for r in rows])
            stats.write(conn, tally, self._stat_names)
            conn.execute(f"DELETE FROM workers WHERE {gone}", args)
        return [(r["id"], r["status"]) for r in rows]
