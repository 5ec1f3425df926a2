"""The monitor panel: a Starlette app with server-side Jinja2 pages.

    from liteq.web import create_app
    app = create_app(db="liteq.db", token=None)     # serve with any ASGI server

Pages: / (overview), /tasks (filters and search), /tasks/{id}, /failed, /schedules,
/pools, /login.
Actions (POST, CSRF-protected): /tasks/{id}/retry, /tasks/{id}/cancel,
/tasks/bulk (cancel, retry or purge all a filter matches, after a confirmation
page), /failed/retry (all matching a filter), /queues/pause, /queues/resume,
/schedules/{id}/enable, /disable and /run, /pools/scale, /logout.
Machine-readable: /metrics (Prometheus), /api/overview, /api/tasks/{id}, and liteq
0.2's /api/tasks, /api/failed-tasks, /api/queues, /api/workers (with the
filters of the pages: status, queue, name, q, page, limit), with
POST /api/tasks/{id}/retry and /cancel (CSRF-protected like every action). Every
time in the API is ISO 8601 with its offset.
Every asset is served from /static by the app itself.

Mounted under a prefix (app.mount("/admin/queue", create_app(...)) in a Starlette or
FastAPI app, or `liteq monitor --root-path /queue` behind a proxy that strips it),
every link, form, redirect and cookie carries the prefix (the `root` of a page).

An action answers with a redirect back (and a one-time flash message) for a
browser, or with JSON when the request sends `Accept: application/json`.

The handlers live by job in pages.py, actions.py and api.py; panel.py holds what
they share (the database, the daemon's status, rendering and answers).
"""

import contextlib
import os
from collections.abc import AsyncGenerator, Iterable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .. import settings
from ..errors import DatabaseError
from . import actions, api, pages
from .formatting import zone_named
from .panel import HERE, Panel, daemon_status
from .security import CSRFError, Security, SecurityMiddleware


def routes(panel: Panel) -> list[BaseRoute]:
    """The app's routes."""
    page, act, machine = pages.Pages(panel), actions.Actions(panel), api.Api(panel)
    post = ["POST"]
    return [
        Route("/", page.overview_page),
        Route("/tasks", page.tasks_page),
        Route("/tasks/{task_id:int}", page.task_page),
        Route("/tasks/{task_id:int}/retry", act.retry_task, methods=post),
        Route("/tasks/{task_id:int}/cancel", act.cancel_task, methods=post),
        Route("/tasks/bulk", act.bulk_action, methods=post),
        Route("/queues/pause", act.queue_switch, methods=post),
        Route("/queues/resume", act.queue_switch, methods=post),
        Route("/schedules/{schedule_id:int}/{what}", act.schedule_action, methods=post),
        Route("/failed", page.failed_page),
        Route("/failed/retry", act.retry_all, methods=post),
        Route("/schedules", page.schedules_page),
        Route("/pools", page.pools_page),
        Route("/pools/scale", act.scale_pool, methods=post),
        Route("/login", act.login, methods=["GET", "POST"]),
        Route("/logout", act.logout, methods=post),
        Route("/metrics", machine.metrics),
        Route("/api/overview", machine.api_overview),
        Route("/api/tasks/{task_id:int}", machine.api_task),
        *[Route(path, machine.api_list) for path in ("/api/tasks", "/api/failed-tasks",
                                                 "/api/queues", "/api/workers")],
        Route("/api/tasks/{task_id:int}/retry", act.retry_task, methods=post),
        Route("/api/tasks/{task_id:int}/cancel", act.cancel_task, methods=post),
        Route("/favicon.ico", panel.favicon),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]


def create_app(db: str | None = None, *, token: str | None = None,
               allowed_hosts: Iterable[str] | None = None, public_metrics: bool = False,
               refresh: float = 3.0, timezone: str | None = None) -> Starlette:
    """Build the panel for the database `db` (default: LITEQ_DB).

    token: when set, every page, action and /metrics needs it (see
    liteq.web.security); public_metrics=True leaves /metrics open. None serves
    the panel open: `liteq monitor` always passes one unless given --no-token.
    allowed_hosts: Host header names to answer to (None: any); `liteq monitor`
    passes the loopback names when it listens on a loopback address.
    refresh: seconds between the pages' background refreshes.
    timezone: the zone the pages show times in (an IANA name such as Europe/Berlin,
    or UTC; None: the machine's); every time shown names its zone.
    Mount it under a prefix as it is: every link follows the mount's root_path.
    """
    db = db or settings.db_path()
    security = Security(token=token, allowed_hosts=allowed_hosts,
                        public_metrics=public_metrics)
    panel = Panel(db, security, refresh, zone_named(timezone))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncGenerator[None]:
        try:
            yield
        finally:
            panel.store.close()

    app = Starlette(
        routes=routes(panel),
        middleware=[Middleware(SecurityMiddleware, security=security)],
        exception_handlers={HTTPException: panel.on_http_error, CSRFError: panel.on_csrf_error,
                            DatabaseError: panel.on_db_error},
        lifespan=lifespan)
    app.state.panel = panel
    return app


__all__ = ["create_app", "Panel", "daemon_status", "routes"]
