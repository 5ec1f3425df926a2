"""Queue statistics for dashboards and scripts, named as in the seed project."""

from . import storage
from .status import task_row_to_dict
from .timeutil import now, to_iso

ACTIVE_WORKER_WINDOW = 15.0  # seconds since the last heartbeat


def get_queue_stats() -> list:
    """[{queue, status, count}] for every queue and status that has tasks."""
    return storage.get_store().queue_stats()


def get_recent_tasks(limit: int = 50) -> list:
    """The most recently created tasks, newest first, as get_task_status() dicts."""
    return [task_row_to_dict(r) for r in storage.get_store().find_tasks(limit=limit)]


def list_queues() -> list:
    """Every queue name in use, sorted."""
    return storage.get_store().list_queues()


def get_failed_tasks(limit: int = 50) -> list:
    """The most recently failed tasks, newest first."""
    rows = storage.get_store().find_tasks(status="failed", limit=limit, order="finished")
    return [task_row_to_dict(r) for r in rows]


def get_active_workers() -> list:
    """Workers (daemons) with a heartbeat in the last 15 s:
    [{worker_id, hostname, queues (a list), concurrency, last_heartbeat, active_tasks}]."""
    rows = storage.get_store().active_workers(now() - ACTIVE_WORKER_WINDOW)
    for r in rows:
        r["last_heartbeat"] = to_iso(r["last_heartbeat"])
        r["queues"] = r["queues"].split(",") if r["queues"] else []
    return rows
