"""PostgreSQL: cron schedules (registration, listing, and the compare-and-set fire).

next_run travels as epoch seconds and is stored as timestamptz (microseconds);
a value read back and passed as expected_next_run converts to the very same
timestamp, so the compare-and-set matches exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .connection import guarded, one
from .inserts import insert_rows
from .opbase import OpBase
from .wake import NOTIFY_PAYLOAD

if TYPE_CHECKING:
    from ...taskspec import NewTask

SCHEDULE_SELECT = (
    "id, name, task_name, cron_expr, payload, queue, priority, max_retries, tz, catchup, "
    "enabled, date_part('epoch', next_run) AS next_run, "
    "date_part('epoch', last_run) AS last_run, date_part('epoch', created_at) AS created_at, "
    "date_part('epoch', updated_at) AS updated_at")

UPSERT = (
    "INSERT INTO schedules (name, task_name, cron_expr, payload, queue, priority, "
    "max_retries, tz, catchup, enabled, next_run, created_at, updated_at) "
    "VALUES (%(name)s, %(task)s, %(cron)s, %(payload)s, %(queue)s, %(priority)s, "
    "%(max_retries)s, %(tz)s, %(catchup)s, COALESCE(%(enabled)s::boolean, true), "
    "to_timestamp(%(next_run)s::float8), now(), now()) "
    "ON CONFLICT (name) DO UPDATE SET task_name = excluded.task_name, "
    "payload = excluded.payload, queue = excluded.queue, priority = excluded.priority, "
    "max_retries = excluded.max_retries, catchup = excluded.catchup, "
    "enabled = COALESCE(%(enabled)s::boolean, schedules.enabled), "
    "next_run = CASE WHEN schedules.cron_expr IS DISTINCT FROM excluded.cron_expr "
    "OR schedules.tz IS DISTINCT FROM excluded.tz OR schedules.next_run IS NULL "
    "THEN excluded.next_run ELSE schedules.next_run END, "
    "cron_expr = excluded.cron_expr, tz = excluded.tz, updated_at = excluded.updated_at "
    "RETURNING id")


class ScheduleOps(OpBase):
    """Mixin of PostgresBackend: the schedules table."""

    @guarded
    def upsert_schedule(self, name: str, task_name: str, cron_expr: str, payload: str,
                        queue: str | None, priority: int | None, max_retries: int | None,
                        tz: str | None, catchup: str, enabled: bool | None, next_run: float) -> int:
        """Create a schedule, or update the one of that name; returns its id.

        next_run is only reset when the timing (cron or tz) changes; enabled=None
        keeps an existing row's state (a new row starts enabled).
        """
        schedule_id: int = one(self._session.run(UPSERT, {
            "name": name, "task": task_name, "cron": cron_expr, "payload": payload,
            "queue": queue, "priority": priority, "max_retries": max_retries, "tz": tz,
            "catchup": catchup, "enabled": None if enabled is None else bool(enabled),
            "next_run": next_run}))["id"]
        return schedule_id

    @guarded
    def list_schedules(self) -> list[dict[str, Any]]:
        """Every schedule row, by name."""
        return self._session.run(
            f"SELECT {SCHEDULE_SELECT} FROM schedules ORDER BY name").fetchall()

    @guarded
    def get_schedule(self, name: str) -> dict[str, Any] | None:
        """One schedule row by name, or None."""
        return self._session.run(
            f"SELECT {SCHEDULE_SELECT} FROM schedules WHERE name = %s", (name,)).fetchone()

    @guarded
    def set_schedule_enabled(self, name_or_id: str | int, enabled: bool,
                             next_run: float | None = None) -> bool:
        """Enable or disable a schedule by name or id; enabling may set a fresh next_run."""
        col = "id" if isinstance(name_or_id, int) else "name"
        return self._session.run(
            f"UPDATE schedules SET enabled = %s, "
            f"next_run = COALESCE(to_timestamp(%s::float8), next_run), updated_at = now() "
            f"WHERE {col} = %s", (bool(enabled), next_run, name_or_id)).rowcount == 1

    @guarded
    def delete_schedule(self, schedule_id: int) -> bool:
        """Delete a schedule by id; False when there was none."""
        return self._session.run("DELETE FROM schedules WHERE id = %s",
                                 (int(schedule_id),)).rowcount == 1

    @guarded
    def due_schedules(self, at: float) -> list[dict[str, Any]]:
        """Enabled schedules whose next_run is at or before `at` (epoch s)."""
        return self._session.run(
            f"SELECT {SCHEDULE_SELECT} FROM schedules WHERE enabled "
            f"AND next_run <= to_timestamp(%s::float8) ORDER BY next_run", (at,)).fetchall()

    @guarded
    def next_schedule_time(self) -> float | None:
        """The earliest next_run of any enabled schedule, or None."""
        due: float | None = one(self._session.run(
            "SELECT date_part('epoch', MIN(next_run)) AS t FROM schedules WHERE enabled"))["t"]
        return due

    @guarded
    def park_schedule(self, schedule_id: int, expected_next_run: float) -> bool:
        """Clear the next_run of a schedule whose next time cannot be computed, guarded
        by compare-and-set on next_run; False when another scheduler changed it first."""
        return self._session.run(
            "UPDATE schedules SET next_run = NULL, updated_at = now() "
            "WHERE id = %s AND next_run = to_timestamp(%s::float8)",
            (schedule_id, expected_next_run)).rowcount == 1

    @guarded
    def fire_schedule(self, schedule_id: int, expected_next_run: float,
                      new_next_run: float | None, tasks: list[NewTask]) -> list[int] | None:
        """Move next_run from expected to new (compare-and-set) and insert `tasks` with
        one wake-up, in one transaction. Returns the new ids, or None when another
        scheduler fired this occurrence first."""
        session = self._session
        with session.transaction():
            moved = session.run(
                "UPDATE schedules SET next_run = to_timestamp(%s::float8), last_run = now() "
                "WHERE id = %s AND next_run = to_timestamp(%s::float8) AND enabled",
                (new_next_run, schedule_id, expected_next_run)).rowcount
            if moved != 1:
                return None
            tasks = list(tasks)
            if not tasks:
                return []
            ids = insert_rows(session, tasks)
            payload = NOTIFY_PAYLOAD.format(queue="%s::text",
                                            due="to_timestamp(%s::float8)")
            times = [t.run_at for t in tasks]
            # A row without run_at is due now.
            first = 0.0 if None in times else min(t for t in times if t is not None)
            session.run(f"SELECT pg_notify(%s, {payload})",
                        (self._channel, tasks[0].options.queue, first))
            return ids
