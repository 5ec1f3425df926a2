"""The panel's pages (GET, server-side Jinja2): overview, tasks, one task, failed,
schedules and pools."""

from __future__ import annotations


from starlette.requests import Request
from starlette.responses import Response

from ..backends import TASK_STATUSES
from ..timeutil import now
from . import bulk, charts, views
from .formatting import duration
from .panel import Panel


class Pages:
    """The page handlers of a Panel."""

    def __init__(self, panel: Panel) -> None:
        self.p = panel

    async def overview_page(self, request: Request) -> Response:
        """Counts by queue and status, the 30-minute chart, pools and workers."""
        p = self.p
        data = await p.page_data(lambda s: {
            **views.overview(s),
            "queue_charts": charts.queue_charts(s, now(), p.hhmm, duration)})
        daemon, daemon_error = await p.daemon()
        return p.render(request, "overview.html", {
            **data, "nav": "overview", "daemon": daemon, "daemon_error": daemon_error,
            "pools": views.pool_summary(daemon),
            "paused": set((daemon or {}).get("paused") or ())})

    async def tasks_page(self, request: Request) -> Response:
        """The task list with status/queue/name filters and paging."""
        try:
            filters = views.parse_filters(request.query_params)
        except views.BadRequest as exc:
            return self.p.error(request, 400, str(exc))
        data = await self.p.page_data(lambda s: views.task_list(s, filters))
        return self.p.render(request, "tasks.html", {
            **data, "nav": "tasks", "f": filters, "statuses": TASK_STATUSES,
            "actions": bulk.ACTIONS,
            # a search is not re-run every few s
            "no_refresh": bool(filters["q"])})

    async def task_page(self, request: Request) -> Response:
        """One task: arguments, result, error with traceback, attempts and timings."""
        task_id: int = request.path_params["task_id"]
        data = await self.p.page_data(lambda s: {"task": views.task_detail(s, task_id)})
        if data["task"] is None:
            return self.p.error(request, 404, f"There is no task #{task_id} in this "
                                              f"database.", title="Task not found")
        return self.p.render(request, "task.html", {**data, "nav": "tasks"})

    async def failed_page(self, request: Request) -> Response:
        """Failed tasks, newest failure first, with retry one / retry all matching."""
        try:
            filters = views.parse_filters(request.query_params, allow_status=False)
        except views.BadRequest as exc:
            return self.p.error(request, 400, str(exc))
        filters["status"] = "failed"
        data = await self.p.page_data(lambda s: views.task_list(s, filters, order="finished"))
        return self.p.render(request, "failed.html", {**data, "nav": "failed", "f": filters})

    async def schedules_page(self, request: Request) -> Response:
        """Cron schedules with their next and last runs."""
        data = await self.p.page_data(lambda s: {"schedules": views.schedules(s)})
        return self.p.render(request, "schedules.html", {**data, "nav": "schedules"})

    async def pools_page(self, request: Request) -> Response:
        """The daemon's pools and children, with a scale control per pool."""
        data = await self.p.page_data(lambda s: {"workers": views.workers(s)})
        daemon, daemon_error = await self.p.daemon()
        return self.p.render(request, "pools.html", {**data, "nav": "pools", "daemon": daemon,
                                                     "daemon_error": daemon_error})
