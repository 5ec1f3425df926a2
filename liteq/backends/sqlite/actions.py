"""SQLite: the statements of the operators' actions (cancel, retry, delete; see
liteq/backends/actions.py) and the daemon's retention (prune)."""

from __future__ import annotations

from collections.abc import Sequence

from ...timeutil import now
from ..actions import OperatorActions, cancel_outcomes
from ..base import CANCEL_TEXT
from ..filters import PRUNABLE, Dialect, finished_status
from . import deps, stats
from .connection import guarded

DIALECT = Dialect(mark="?", finished_before="finished_at < ?",
                  age_param=lambda age: now() - age)


class ActionOps(OperatorActions):
    """Mixin of SQLiteBackend: the operators' actions and retention."""

    dialect = DIALECT

    @guarded
    def _cancel_where(self, where: str, params: Sequence[object]) -> int:
        t = now()
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE tasks SET finished_at = ?, error = CASE WHEN status = 'running' "
                f"THEN ? ELSE error END, status = 'cancelled' WHERE {where} "
                "RETURNING id, error, queue, name, attempts",
                (t, CANCEL_TEXT, *params)).fetchall()
            if rows:
                tally, errors = cancel_outcomes(rows, t)
                stats.add_errors(conn, errors)
                deps.cancel_dependents(conn, [r["id"] for r in rows], "cancelled", t, tally)
                stats.write(conn, tally, self._stat_names)
        # After the commit, so the daemon that reads it sees the cancel.
        for r in rows:
            if r["error"] == CANCEL_TEXT:
                self.notify_cancel(r["id"])
        return len(rows)

    @guarded
    def _retry_where(self, where: str, params: Sequence[object]) -> int:
        with self._write() as conn:
            return conn.execute(
                "UPDATE tasks SET status = 'pending', attempts = 0, run_at = ?, "
                f"worker_id = NULL, finished_at = NULL WHERE {where}",
                (now(), *params)).rowcount

    @guarded
    def _delete_where(self, where: str, params: Sequence[object]) -> int:
        # A deleted task's own edges go with it (nothing waits for a finished task);
        # its attempts' errors go by a trigger. Two statements rather than a list of
        # ids, which a purge of millions would hold in memory.
        with self._write() as conn:
            conn.execute(f"DELETE FROM task_deps WHERE child_id IN "
                         f"(SELECT id FROM tasks WHERE {where})", params)
            return conn.execute(f"DELETE FROM tasks WHERE {where}", params).rowcount

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
