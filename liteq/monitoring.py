"""Queue statistics for dashboards and scripts, named as in liteq 0.2.

Each function reads LITEQ_DB's queue, or the backend given as `store` (the web
panel passes its own).
"""

from __future__ import annotations

from typing import Any

from .backends import get_backend
from .backends.base import Backend
from .status import TaskStatus, task_row_to_dict
from .timeutil import to_iso

ACTIVE_WORKER_WINDOW = 15.0  # seconds since the last heartbeat


def get_queue_stats(*, store: Backend | None = None) -> list[dict[str, Any]]:
    """[{queue, status, count}] for every queue and status that has tasks."""
    return (store or get_backend()).queue_stats()


def get_recent_tasks(limit: int = 50, *, store: Backend | None = None) -> list[TaskStatus]:
    """The most recently created tasks, newest first, as get_task_status() dicts."""
    return [task_row_to_dict(r) for r in (store or get_backend()).find_tasks(limit=limit)]


def list_queues(*, store: Backend | None = None) -> list[str]:
    """Every queue name in use, sorted."""
    return (store or get_backend()).list_queues()


def get_failed_tasks(limit: int = 50, *, store: Backend | None = None) -> list[TaskStatus]:
    """The most recently failed tasks, newest first."""
    rows = (store or get_backend()).find_tasks(status="failed", limit=limit,
                                                     order="finished")
    return [task_row_to_dict(r) for r in rows]


def get_active_workers(*, store: Backend | None = None) -> list[dict[str, Any]]:
    """Workers (daemons) with a heartbeat in the last 15 s:
    [{worker_id, hostname, queues (a list), concurrency, last_heartbeat, active_tasks}]."""
    rows = (store or get_backend()).active_workers(ACTIVE_WORKER_WINDOW)
    for r in rows:
        r["last_heartbeat"] = to_iso(r["last_heartbeat"])
        r["queues"] = r["queues"].split(",") if r["queues"] else []
    return rows
