"""PostgreSQL: the statements of the operators' actions (cancel, retry, delete; see
liteq/backends/actions.py) and the daemon's retention (prune). Times are the
server's clock."""

from __future__ import annotations

from collections.abc import Sequence

from ..actions import OperatorActions, cancel_outcomes
from ..base import CANCEL_TEXT
from ..filters import PRUNABLE, Dialect, finished_status
from . import deps, stats
from .connection import guarded
from .vacuum import vacuum_now

DIALECT = Dialect(mark="%s",
                  finished_before="finished_at < now() - %s::float8 * interval '1 second'",
                  age_param=float)

# The deleted tasks' own edges and their attempts' errors go with them (nothing waits
# for a finished task).
_DELETE = ("WITH gone AS (DELETE FROM tasks WHERE {where} RETURNING id), "
           "edges AS (DELETE FROM task_deps WHERE child_id IN (SELECT id FROM gone)), "
           "errs AS (DELETE FROM task_errors WHERE task_id IN (SELECT id FROM gone)) "
           "SELECT COUNT(*) AS n FROM gone")


class ActionOps(OperatorActions):
    """Mixin of PostgresBackend: the operators' actions and retention."""

    dialect = DIALECT

    @guarded
    def _cancel_where(self, where: str, params: Sequence[object]) -> int:
        # The same statement NOTIFYs the daemons of the running ones (the one running
        # it stops it).
        session = self._session
        with session.transaction():
            rows = session.run(
                "WITH c AS (UPDATE tasks SET finished_at = now(), error = CASE WHEN status = "
                f"'running' THEN %s ELSE error END, status = 'cancelled' WHERE {where} "
                "RETURNING id, error, queue, name, attempts) "
                "SELECT c.id, c.error, c.queue, c.name, c.attempts, CASE WHEN c.error = %s "
                "THEN pg_notify(%s, json_build_object('k', 'cancel', 'id', c.id)::text) END "
                "FROM c",
                (CANCEL_TEXT, *params, CANCEL_TEXT, self._channel)).fetchall()
            if rows:
                tally, errors = cancel_outcomes(rows, None)
                stats.add_errors(session, errors)
                deps.cancel_dependents(session, [r["id"] for r in rows], "cancelled", tally)
                stats.write(session, tally, self._stat_names, self._stat_shard)
        return len(rows)

    @guarded
    def _retry_where(self, where: str, params: Sequence[object]) -> int:
        return self._session.run(
            "UPDATE tasks SET status = 'pending', attempts = 0, run_at = now(), "
            f"worker_id = NULL, finished_at = NULL WHERE {where}", params).rowcount

    def _delete_where(self, where: str, params: Sequence[object]) -> int:
        """On a server whose autovacuum is off, it then VACUUMs the table when
        autovacuum would have (on a connection of its own; see vacuum.py)."""
        deleted, vacuum = self._delete_rows(where, params)
        if vacuum:
            vacuum_now(self._connector)
        return deleted

    @guarded
    def _delete_rows(self, where: str, params: Sequence[object]) -> tuple[int, bool]:
        """(rows deleted, whether the table needs a VACUUM from LiteQ now)."""
        deleted = self._session.run(_DELETE.format(where=where), params).fetchone()["n"]
        return deleted, self._vacuums.needed(self._session, deleted)

    @guarded
    def prune(self, status: str, older_than: float, limit: int) -> int:
        """Delete at most `limit` tasks of finished `status` that finished over
        `older_than` seconds ago (server's clock), oldest first; returns how many.
        Rows another daemon is pruning at the same moment are skipped, not waited on.
        On a server whose autovacuum is off, it starts a VACUUM of the table when
        autovacuum would have, and never waits for it (vacuum.py)."""
        status = finished_status(status)
        where = (f"id IN (SELECT id FROM tasks WHERE status = '{status}' AND finished_at < "
                 f"now() - %s::float8 * interval '1 second' AND {PRUNABLE} "
                 f"ORDER BY finished_at LIMIT %s FOR UPDATE SKIP LOCKED)")
        deleted = self._session.run(_DELETE.format(where=where),
                                    (float(older_than), int(limit)), prepare=True
                                    ).fetchone()["n"]
        self._vacuums.after_prune(self._session, deleted)
        return deleted
