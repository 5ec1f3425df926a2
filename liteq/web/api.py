"""The panel's machine-readable side: the JSON API, with one time format (ISO 8601
with the offset) everywhere, and /metrics.

The database keeps epoch seconds; these helpers turn every time field of what the
API returns into ISO 8601 strings (liteq.timeutil.to_iso, as get_task_status()
gives them), and read liteq 0.2's lists with the pages' filters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import monitoring
from ..backends import Backend
from ..metrics import LiteQCollector, render as render_metrics
from ..status import TaskStatus, task_row_to_dict
from ..timeutil import to_iso
from . import views
from .panel import Panel
from .security import route_path

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


def task_list(store: Backend, filters: dict[str, Any], failed: bool = False) -> list[TaskStatus]:
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


class Api:
    """The machine-readable handlers of a Panel."""

    def __init__(self, panel: Panel) -> None:
        self.p = panel

    async def metrics(self, request: Request) -> Response:
        """Prometheus text format; see liteq.metrics for the families."""
        from prometheus_client import CONTENT_TYPE_LATEST
        daemon, _ = await self.p.daemon()
        body = await self.p.data(lambda s: render_metrics(LiteQCollector(
            self.p.db, store_factory=lambda: s, status_fn=lambda: daemon)))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def api_overview(self, request: Request) -> Response:
        """JSON: counts, the throughput series, pools and workers; plus liteq 0.2's
        total_pending, total_running, total_failed, total_done, total_queues and
        active_workers (a count of heartbeats within 15 s)."""
        data = await self.p.data(views.overview)
        daemon, daemon_error = await self.p.daemon()
        totals = data["counts"]["totals"]
        live = [w for w in data["workers"] if w["heartbeat_age"] is not None
                and w["heartbeat_age"] <= monitoring.ACTIVE_WORKER_WINDOW]
        return JSONResponse({"counts": data["counts"],
                             "series": [iso_times(p) for p in data["series"]],
                             "workers": workers(data["workers"]),
                             "daemon_up": daemon is not None,
                             "daemon_error": daemon_error, "daemon": daemon,
                             **{f"total_{s}": totals[s]
                                for s in ("pending", "claimed", "running", "failed", "done")},
                             "total_queues": len(data["counts"]["queues"]),
                             "active_workers": len(live)})

    async def api_list(self, request: Request) -> Response:
        """JSON, liteq 0.2's read API: /api/tasks and /api/failed-tasks (filtered by
        status, queue, name and q, paged by page and limit, default 50), /api/queues
        and /api/workers, as liteq.monitoring gives them, times in ISO 8601."""
        path = route_path(request.scope)
        try:
            filters = views.parse_filters(request.query_params,
                                          allow_status=path == "/api/tasks")
        except views.BadRequest as exc:
            return self.p.error(request, 400, str(exc))
        reads: dict[str, Callable[[Backend], Any]] = {
            "/api/tasks": lambda s: task_list(s, filters),
            "/api/failed-tasks": lambda s: task_list(s, filters, failed=True),
            "/api/queues": lambda s: monitoring.get_queue_stats(store=s),
            "/api/workers": lambda s: workers(monitoring.get_active_workers(store=s))}
        return JSONResponse(await self.p.data(reads[path]))

    async def api_task(self, request: Request) -> Response:
        """JSON: get_task_status() of one task, 404 when missing."""
        task_id: int = request.path_params["task_id"]
        row = await self.p.data(lambda s: s.get_task(task_id))
        if row is None:
            return JSONResponse({"error": f"no task with id {task_id}"}, status_code=404)
        return JSONResponse(task_row_to_dict(row))
