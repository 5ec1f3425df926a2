"""The panel's JSON API: one time format (ISO 8601 with the offset) everywhere.

The database keeps epoch seconds; these helpers turn every time field of what the
API returns into ISO 8601 strings (liteq.timeutil.to_iso, as get_task_status()
gives them), and read liteq 0.2's lists with the pages' filters.
"""

from typing import Any

from ..status import TaskStatus, task_row_to_dict
from ..timeutil import to_iso
from . import views

# Fields that hold a moment (epoch seconds in the database) wherever they appear.
TIME_KEYS = ("last_heartbeat", "started_at", "process_started", "created_at", "updated_at",
             "finished_at", "run_at", "next_run", "last_run", "t")


def iso_times(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of row with every number in a TIME_KEYS field as ISO 8601."""
    out = dict(row)
    for key in TIME_KEYS:
        value = out.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = to_iso(value)
    return out


def task_list(store: Any, filters: dict[str, Any], failed: bool = False) -> list[TaskStatus]:
    """/api/tasks and /api/failed-tasks: get_task_status() dicts of one page of the
    tasks matching the filters (status, queue, name, q, page, limit), newest first
    (failed: by finish time)."""
    if failed:
        filters = {**filters, "status": "failed"}
    data = views.task_list(store, filters, order="finished" if failed else "id")
    rows = ([data["pinned"]] if data.get("pinned") else []) + data["rows"]
    return [task_row_to_dict(r) for r in rows]


def workers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """/api/workers rows with ISO times."""
    return [iso_times(r) for r in rows]
