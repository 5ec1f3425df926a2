"""SQLite: cron schedules (registration, listing, and the compare-and-set fire)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from ...timeutil import now
from .connection import guarded, row_dict
from .inserts import INSERT_TASK, insert_values
from .opbase import OpBase

if TYPE_CHECKING:
    from ...taskspec import NewTask


class ScheduleOps(OpBase):
    """Mixin of SQLiteBackend: the schedules table."""


    @guarded
    def upsert_schedule(self, name: str, task_name: str, cron_expr: str, payload: str,
                        queue: str | None, priority: int | None, max_retries: int | None,
                        tz: str | None, catchup: str, enabled: bool | None, next_run: float) -> int:
        """Create a schedule, or update the one of that name; returns its id.

        next_run is only reset when the timing (cron or tz) changes, so re-registering
        at every import never skips or repeats an occurrence. enabled=None keeps an
        existing row's state (an operator's disable survives restarts); a new row
        starts enabled.
        """
        t = now()
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO schedules (name, task_name, cron_expr, payload, queue, priority, "
                "max_retries, tz, catchup, enabled, next_run, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET task_name = excluded.task_name, "
                "payload = excluded.payload, queue = excluded.queue, "
                "priority = excluded.priority, max_retries = excluded.max_retries, "
                "catchup = excluded.catchup, enabled = COALESCE(?, schedules.enabled), "
                "next_run = CASE WHEN schedules.cron_expr IS NOT excluded.cron_expr "
                "OR schedules.tz IS NOT excluded.tz OR schedules.next_run IS NULL "
                "THEN excluded.next_run ELSE schedules.next_run END, "
                "cron_expr = excluded.cron_expr, tz = excluded.tz, "
                "updated_at = excluded.updated_at RETURNING id",
                (name, task_name, cron_expr, payload, queue, priority, max_retries, tz,
                 catchup, 0 if enabled is False else 1, next_run, t, t,
                 None if enabled is None else int(bool(enabled)))).fetchone()
            schedule_id: int = row[0]
            return schedule_id

    @guarded
    def list_schedules(self) -> list[dict[str, Any]]:
        """Every schedule row, by name."""
        return [dict(r) for r in self._conn.execute("SELECT * FROM schedules ORDER BY name")]

    @guarded
    def get_schedule(self, name: str) -> dict[str, Any] | None:
        """One schedule row by name, or None."""
        return row_dict(self._conn.execute(
            "SELECT * FROM schedules WHERE name = ?", (name,)).fetchone())

    @guarded
    def set_schedule_enabled(self, name_or_id: str | int, enabled: bool,
                             next_run: float | None = None) -> bool:
        """Enable or disable a schedule by name or id; enabling may set a fresh next_run."""
        col = "id" if isinstance(name_or_id, int) else "name"
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE schedules SET enabled = ?, next_run = COALESCE(?, next_run), "
                f"updated_at = ? WHERE {col} = ?",
                (1 if enabled else 0, next_run, now(), name_or_id))
            return cur.rowcount == 1

    @guarded
    def delete_schedule(self, schedule_id: int) -> bool:
        """Delete a schedule row by id; False when there was none."""
        with self._write() as conn:
            return conn.execute("DELETE FROM schedules WHERE id = ?",
                                (schedule_id,)).rowcount == 1

    @guarded
    def due_schedules(self, at: float) -> list[dict[str, Any]]:
        """Enabled schedules whose next_run has come."""
        return [dict(r) for r in self._conn.execute(
            "SELECT * FROM schedules WHERE enabled = 1 AND next_run <= ? ORDER BY next_run",
            (at,))]

    @guarded
    def next_schedule_time(self) -> float | None:
        """The earliest next_run of any enabled schedule, or None."""
        due: float | None = self._conn.execute(
            "SELECT MIN(next_run) FROM schedules WHERE enabled = 1").fetchone()[0]
        return due

    @guarded
    def park_schedule(self, schedule_id: int, expected_next_run: float) -> bool:
        """Clear the next_run of a schedule whose next time cannot be computed (a bad
        cron or zone in the row), so it stops coming due instead of being retried in
        a loop. Registering or enabling it again sets a fresh next_run. Guarded like
        fire_schedule: False when another scheduler changed the row first."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE schedules SET next_run = NULL, updated_at = ? "
                "WHERE id = ? AND next_run = ?", (now(), schedule_id, expected_next_run))
            return cur.rowcount == 1

    @guarded
    def fire_schedule(self, schedule_id: int, expected_next_run: float,
                      new_next_run: float | None, tasks: list[NewTask]) -> list[int] | None:
        """Advance a schedule from expected_next_run to new_next_run and insert its
        tasks (NewTask list), atomically. The compare-and-set makes any number of
        schedulers fire each occurrence once. Returns the new task ids, or None when
        another scheduler won."""
        t = now()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE schedules SET next_run = ?, last_run = ? "
                "WHERE id = ? AND next_run = ? AND enabled = 1",
                (new_next_run, t, schedule_id, expected_next_run))
            if cur.rowcount != 1:
                return None
            # (lastrowid is set after each INSERT)
            return [cast(int, conn.execute(INSERT_TASK, insert_values(task, t)).lastrowid)
                    for task in tasks]
