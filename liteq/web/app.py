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
"""

import asyncio
import contextlib
import os
from collections.abc import Iterable
from urllib.parse import quote, unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import control, monitoring, scheduler, settings
from ..backends import identity_of
from ..errors import DatabaseError
from ..metrics import LiteQCollector, render as render_metrics
from ..status import task_row_to_dict
from ..timeutil import now
from . import api, bulk, charts, views
from .formatting import duration, filters_for, in_zone, zone_named
from .security import CSRF_FIELD, SESSION_COOKIE, CSRFError, Security, SecurityMiddleware, \
    cookie_path, root_of, route_path, safe_next, wants_html

HERE = os.path.dirname(os.path.abspath(__file__))
FLASH_COOKIE = "liteq_flash"
CONTROL_TIMEOUT = 2.0
MAX_POOL_SIZE = 512
NAV = [("overview", "Overview", "/"), ("tasks", "Tasks", "/tasks"),
       ("failed", "Failed", "/failed"), ("schedules", "Schedules", "/schedules"),
       ("pools", "Pools", "/pools")]


def daemon_status(db):
    """(status dict, None) from the daemon, or (None, why it could not be read)."""
    try:
        return control.status(include_queues=False, db=db, timeout=CONTROL_TIMEOUT), None
    except control.DaemonNotRunning:
        return None, "not running"
    except (control.ControlError, TimeoutError, OSError, ValueError) as exc:
        return None, str(exc) or type(exc).__name__


class Panel:
    """The panel's state (database, policy, templates) and its request handlers."""

    def __init__(self, db, security, refresh, zone=None):
        self.db = db
        self.identity = identity_of(db)  # shown on pages: never a password
        self.security = security
        self.refresh_ms = int(refresh * 1000)
        self.zone = zone
        self.store = views.PanelStore(db)
        self.templates = Jinja2Templates(directory=os.path.join(HERE, "templates"))
        self.templates.env.filters.update(filters_for(zone))

    def hhmm(self, ts) -> str:
        """A bucket's start as 'HH:MM ZONE' in the display zone (the charts' tips)."""
        moment = in_zone(ts, self.zone)
        return moment.strftime("%H:%M %Z") if moment else ""

    @staticmethod
    def url(request, path) -> str:
        """`path` of the panel as a link: below the prefix it is mounted under."""
        return root_of(request.scope) + path

    # ---- helpers ---------------------------------------------------------------

    async def data(self, fn, *args, **kwargs):
        """Run fn(store, ...) in the thread pool, holding the panel's Store."""
        return await run_in_threadpool(self.store.run, fn, *args, **kwargs)

    async def page_data(self, fn):
        """data(fn) plus the failed-task count every page's navigation badge shows."""
        return await self.data(
            lambda s: {**fn(s), "failed_total": s.count_tasks(status="failed")})

    async def daemon(self):
        """The daemon's status, read in the thread pool (a socket round trip)."""
        return await run_in_threadpool(daemon_status, self.db)

    def render(self, request, name, context, status_code: int = 200):
        """Render a page with the shared context (nav, CSRF token, one-time flash)."""
        flash = None
        raw = request.cookies.get(FLASH_COOKIE)
        if raw:
            kind, _, text = unquote(raw).partition(":")
            flash = {"kind": kind if kind in ("ok", "error") else "ok", "text": text}
        # Before login a visitor learns nothing about the deployment: not even the
        # database path or URL (the footer is left out).
        shown = self.security.authenticated(request)
        ctx = {"nav_items": NAV, "nav": None, "csrf_field": CSRF_FIELD,
               "csrf_token": request.state.csrf_token, "flash": flash,
               "logged_in": self.security.session_ok(request), "no_refresh": False,
               "db": self.identity if shown else None,
               "refresh_ms": self.refresh_ms, "failed_total": None, "now": now(),
               "root": root_of(request.scope),
               "zone_name": in_zone(now(), self.zone).strftime("%Z"),
               "here": request.url.path + (f"?{request.url.query}" if request.url.query else "")}
        ctx.update(context)
        resp = self.templates.TemplateResponse(request, name, ctx, status_code=status_code)
        if raw:
            resp.delete_cookie(FLASH_COOKIE, path=cookie_path(request.scope))
        return resp

    def error(self, request, status_code, message, title=None):
        """An error as a page for browsers, as JSON for everything else."""
        title = title or {400: "Bad request", 401: "Unauthorized", 403: "Forbidden",
                          404: "Not found", 503: "Database unavailable"}.get(
                              status_code, "Error")
        if not wants_html(request):
            return JSONResponse({"error": message}, status_code=status_code)
        return self.render(request, "error.html", {"code": status_code, "title": title,
                                                   "message": message}, status_code)

    def done(self, request, form, ok, message, default: str = "/"):
        """Answer an action: JSON for API clients (and /api/ paths), else redirect back
        with a flash. The JSON's status is liteq 0.2's "success" (or "error")."""
        if "application/json" in request.headers.get("accept", "") or \
                route_path(request.scope).startswith("/api/"):
            return JSONResponse({"ok": ok, "status": "success" if ok else "error",
                                 "message": message}, status_code=200 if ok else 409)
        resp = RedirectResponse(safe_next(form.get("next"), self.url(request, default)),
                                status_code=303)
        resp.set_cookie(FLASH_COOKIE, quote(("ok:" if ok else "error:") + message),
                        max_age=60, httponly=True, samesite="strict",
                        path=cookie_path(request.scope))
        return resp

    async def checked_form(self, request):
        """The POSTed form, after the CSRF checks (CSRFError when they fail)."""
        form = await request.form()
        self.security.check_csrf(request, form)
        return form

    # ---- pages -------------------------------------------------------------------

    async def overview_page(self, request):
        """Counts by queue and status, the 30-minute chart, pools and workers."""
        data = await self.page_data(lambda s: {
            **views.overview(s),
            "queue_charts": charts.queue_charts(s, now(), self.hhmm, duration)})
        daemon, daemon_error = await self.daemon()
        return self.render(request, "overview.html", {
            **data, "nav": "overview", "daemon": daemon, "daemon_error": daemon_error,
            "pools": views.pool_summary(daemon),
            "paused": set((daemon or {}).get("paused") or ())})

    async def tasks_page(self, request):
        """The task list with status/queue/name filters and paging."""
        try:
            filters = views.parse_filters(request.query_params)
        except views.BadRequest as exc:
            return self.error(request, 400, str(exc))
        data = await self.page_data(lambda s: views.task_list(s, filters))
        return self.render(request, "tasks.html", {**data, "nav": "tasks", "f": filters,
                                                   "statuses": views.TASK_STATUSES,
                                                   "actions": bulk.ACTIONS,
                                                   # a search is not re-run every few s
                                                   "no_refresh": bool(filters["q"])})

    async def task_page(self, request):
        """One task: arguments, result, error with traceback, attempts and timings."""
        task_id = request.path_params["task_id"]
        data = await self.page_data(lambda s: {"task": views.task_detail(s, task_id)})
        if data["task"] is None:
            return self.error(request, 404, f"There is no task #{task_id} in this database.",
                              title="Task not found")
        return self.render(request, "task.html", {**data, "nav": "tasks"})

    async def failed_page(self, request):
        """Failed tasks, newest failure first, with retry one / retry all matching."""
        try:
            filters = views.parse_filters(request.query_params, allow_status=False)
        except views.BadRequest as exc:
            return self.error(request, 400, str(exc))
        filters["status"] = "failed"
        data = await self.page_data(lambda s: views.task_list(s, filters, order="finished"))
        return self.render(request, "failed.html", {**data, "nav": "failed", "f": filters})

    async def schedules_page(self, request):
        """Cron schedules with their next and last runs."""
        data = await self.page_data(lambda s: {"schedules": views.schedules(s)})
        return self.render(request, "schedules.html", {**data, "nav": "schedules"})

    async def pools_page(self, request):
        """The daemon's pools and children, with a scale control per pool."""
        data = await self.page_data(lambda s: {"workers": views.workers(s)})
        daemon, daemon_error = await self.daemon()
        return self.render(request, "pools.html", {**data, "nav": "pools", "daemon": daemon,
                                                   "daemon_error": daemon_error})

    # ---- actions -----------------------------------------------------------------

    async def retry_task(self, request):
        """POST: put one failed or cancelled task back to pending."""
        form = await self.checked_form(request)
        task_id = request.path_params["task_id"]
        row, changed = await self.data(
            lambda s: (s.get_task(task_id), s.retry_failed(task_id=task_id)))
        if row is None:
            return self.error(request, 404, f"There is no task #{task_id}.")
        if not changed:
            return self.done(request, form, False,
                             f"Task #{task_id} is {row['status']}; only failed or cancelled "
                             f"tasks can be retried.", f"/tasks/{task_id}")
        return self.done(request, form, True, f"Task #{task_id} ({row['name']}) is pending "
                                              f"again.", f"/tasks/{task_id}")

    async def cancel_task(self, request):
        """POST: cancel one pending or running task."""
        form = await self.checked_form(request)
        task_id = request.path_params["task_id"]
        row, changed = await self.data(lambda s: (s.get_task(task_id), s.cancel(task_id)))
        if row is None:
            return self.error(request, 404, f"There is no task #{task_id}.")
        if not changed:
            return self.done(request, form, False, f"Task #{task_id} is {row['status']}; only "
                                                   f"pending or running tasks can be "
                                                   f"cancelled.",
                             f"/tasks/{task_id}")
        return self.done(request, form, True, f"Task #{task_id} ({row['name']}) is cancelled.",
                         f"/tasks/{task_id}")

    async def retry_all(self, request):
        """POST: retry every failed task matching the queue/name filter."""
        form = await self.checked_form(request)
        try:
            filters = views.parse_filters(form, allow_status=False)
        except views.BadRequest as exc:
            return self.error(request, 400, str(exc))
        n = await self.data(lambda s: s.retry_failed(queue=filters["queue"],
                                                     name=filters["name"]))
        what = " and ".join(f"{k} {filters[k]!r}" for k in ("queue", "name") if filters[k])
        return self.done(request, form, True, f"{n} failed task{'s' if n != 1 else ''}"
                                              f"{' with ' + what if what else ''} "
                                              f"{'is' if n == 1 else 'are'} pending again.",
                         "/failed")

    async def bulk_action(self, request):
        """POST: cancel, retry or purge every task a filter matches. Without
        confirm=yes it only shows what it would do, with a form to confirm."""
        form = await self.checked_form(request)
        action = form.get("action")
        if action not in bulk.ACTIONS:
            return self.error(request, 400, f"action must be one of "
                                            f"{', '.join(bulk.ACTIONS)}, got {action!r}")
        try:
            filters = views.parse_filters(form)
        except views.BadRequest as exc:
            return self.error(request, 400, str(exc))
        back = safe_next(form.get("next"), self.url(request, "/tasks"))
        spec = bulk.ACTIONS[action]
        if form.get("confirm") != "yes":
            n = await self.data(lambda s: bulk.count(s, action, filters))
            return self.render(request, "confirm.html", {
                "nav": "tasks", "action": action, "spec": spec, "f": filters, "count": n,
                "statuses": bulk.statuses(action, filters["status"]), "back": back})
        n = await run_in_threadpool(bulk.run, self.store.run, action, filters)
        if action == "retry" and n:
            await self.data(lambda s: s.notify())
        return self.done(request, form, True,
                         f"{n} task{'s' if n != 1 else ''} {spec['done']}.", "/tasks")

    async def queue_switch(self, request):
        """POST /queues/pause or /queues/resume: the daemon stops (or starts again)
        claiming from a queue, through the control channel as `liteqctl pause` does."""
        form = await self.checked_form(request)
        queue = (form.get("queue") or "").strip()
        pause = route_path(request.scope).endswith("/pause")
        if not queue:
            return self.error(request, 400, "queue is missing")
        fn = control.pause if pause else control.resume
        try:
            reply = await run_in_threadpool(fn, queue, db=self.db, timeout=CONTROL_TIMEOUT)
        except control.DaemonNotRunning:
            return self.done(request, form, False, "The daemon is not running: a queue is "
                                                   "paused in a running daemon.", "/")
        except (control.ControlError, TimeoutError, OSError) as exc:
            return self.done(request, form, False, f"The daemon refused: {exc}", "/")
        still = ", ".join(reply.get("paused") or []) or "none"
        return self.done(request, form, True, f"Queue {queue} is "
                                              f"{'paused' if pause else 'resumed'} "
                                              f"(paused queues: {still}).", "/")

    async def schedule_action(self, request):
        """POST /schedules/{id}/enable, /disable or /run (make it due now, so the
        daemon's scheduler fires it at once; its next run stays as it was)."""
        form = await self.checked_form(request)
        sid = request.path_params["schedule_id"]
        what = request.path_params["what"]
        if what not in ("enable", "disable", "run"):
            return self.error(request, 404, "There is nothing at this address.")

        def act(store):
            rows = [r for r in store.list_schedules() if r["id"] == sid]
            if not rows:
                return None, None
            name = rows[0]["name"]
            if what == "enable":
                return name, scheduler.enable_schedule(sid, backend=store)
            if what == "disable":
                return name, scheduler.disable_schedule(sid, backend=store)
            try:
                return name, scheduler.run_schedule_now(sid, backend=store)
            except ValueError as exc:
                return name, str(exc)
        name, result = await self.data(act)
        if name is None:
            return self.error(request, 404, f"There is no schedule #{sid}.")
        if what == "run":
            if isinstance(result, str):
                return self.done(request, form, False, f"Not run: {result}.", "/schedules")
            return self.done(request, form, True, f"Schedule {name} is due now: the daemon's "
                                                  f"scheduler enqueues its task at once; its "
                                                  f"next run stays as it was.", "/schedules")
        return self.done(request, form, bool(result), f"Schedule {name} is "
                                                      f"{what}d.", "/schedules")

    async def scale_pool(self, request):
        """POST: set a pool's number of children through the control channel."""
        form = await self.checked_form(request)
        pool = (form.get("pool") or "").strip() or None
        raw = (form.get("size") or "").strip()
        try:
            size = int(raw)
            if not 0 <= size <= MAX_POOL_SIZE:
                raise ValueError
        except ValueError:
            return self.error(request, 400, f"size must be a whole number from 0 to "
                                            f"{MAX_POOL_SIZE}, got {raw!r}")
        try:
            await run_in_threadpool(control.scale, size, pool=pool, db=self.db,
                                    timeout=CONTROL_TIMEOUT)
        except control.DaemonNotRunning:
            return self.done(request, form, False, "The daemon is not running; nothing to "
                                                   "scale.", "/pools")
        except (control.ControlError, TimeoutError, OSError) as exc:
            return self.done(request, form, False, f"The daemon refused: {exc}", "/pools")
        return self.done(request, form, True, f"Pool {pool or '(first)'} is scaling to {size} "
                                              f"children.", "/pools")

    # ---- login -------------------------------------------------------------------

    async def login(self, request):
        """GET: the login form; POST: check the token and set the session cookie."""
        home = self.url(request, "/")
        nxt = safe_next(request.query_params.get("next"), home)
        if self.security.token is None:
            return RedirectResponse(nxt, status_code=303)
        if request.method == "GET":
            error = None
            if request.query_params.get("bad_token"):
                error = ("The token in that address is not this panel's. A panel started "
                         "without --token makes a new one each time: use the address it "
                         "printed last.")
            return self.render(request, "login.html", {"next": nxt, "login_error": error})
        form = await self.checked_form(request)
        nxt = safe_next(form.get("next"), home)
        if not self.security.check_token(form.get("token")):
            await asyncio.sleep(0.3)  # slows guessing down a little
            return self.render(request, "login.html",
                               {"next": nxt, "login_error": "That token is not right."}, 401)
        return self.security.login_redirect(nxt, secure=request.url.scheme == "https",
                                            path=cookie_path(request.scope))

    async def logout(self, request):
        """POST: forget the session cookie."""
        await self.checked_form(request)
        resp = RedirectResponse(self.url(request, "/login"), status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path=cookie_path(request.scope))
        return resp

    # ---- machine-readable ----------------------------------------------------------

    async def metrics(self, request):
        """Prometheus text format; see liteq.metrics for the families."""
        from prometheus_client import CONTENT_TYPE_LATEST
        daemon, _ = await self.daemon()
        body = await self.data(lambda s: render_metrics(LiteQCollector(
            self.db, store_factory=lambda: s, status_fn=lambda: daemon)))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def api_overview(self, request):
        """JSON: counts, the throughput series, pools and workers; plus liteq 0.2's
        total_pending, total_running, total_failed, total_done, total_queues and
        active_workers (a count of heartbeats within 15 s)."""
        data = await self.data(views.overview)
        daemon, daemon_error = await self.daemon()
        totals = data["counts"]["totals"]
        live = [w for w in data["workers"] if w["heartbeat_age"] is not None
                and w["heartbeat_age"] <= monitoring.ACTIVE_WORKER_WINDOW]
        return JSONResponse({"counts": data["counts"],
                             "series": [api.iso_times(p) for p in data["series"]],
                             "workers": api.workers(data["workers"]),
                             "daemon_up": daemon is not None,
                             "daemon_error": daemon_error, "daemon": daemon,
                             **{f"total_{s}": totals[s]
                                for s in ("pending", "claimed", "running", "failed", "done")},
                             "total_queues": len(data["counts"]["queues"]),
                             "active_workers": len(live)})

    async def api_list(self, request):
        """JSON, liteq 0.2's read API: /api/tasks and /api/failed-tasks (filtered by
        status, queue, name and q, paged by page and limit, default 50), /api/queues
        and /api/workers, as liteq.monitoring gives them, times in ISO 8601."""
        path = route_path(request.scope)
        try:
            filters = views.parse_filters(request.query_params,
                                          allow_status=path == "/api/tasks")
        except views.BadRequest as exc:
            return self.error(request, 400, str(exc))
        read = {"/api/tasks": lambda s: api.task_list(s, filters),
                "/api/failed-tasks": lambda s: api.task_list(s, filters, failed=True),
                "/api/queues": lambda s: monitoring.get_queue_stats(store=s),
                "/api/workers": lambda s: api.workers(
                    monitoring.get_active_workers(store=s))}[path]
        return JSONResponse(await self.data(read))

    async def api_task(self, request):
        """JSON: get_task_status() of one task, 404 when missing."""
        task_id = request.path_params["task_id"]
        row = await self.data(lambda s: s.get_task(task_id))
        if row is None:
            return JSONResponse({"error": f"no task with id {task_id}"}, status_code=404)
        return JSONResponse(task_row_to_dict(row))

    # ---- errors --------------------------------------------------------------------

    async def on_http_error(self, request, exc):
        """404 and other HTTP errors as pages (or JSON)."""
        message = {404: "There is nothing at this address.",
                   405: "This address does not accept that method."}.get(exc.status_code,
                                                                          str(exc.detail))
        return self.error(request, exc.status_code, message)

    async def on_csrf_error(self, request, exc):
        """A POST that failed the CSRF checks: 403."""
        return self.error(request, 403, str(exc))

    async def on_db_error(self, request, exc):
        """The database could not be read (locked for too long, unreadable): 503."""
        return self.error(request, 503, str(exc))

    def routes(self):
        """The app's routes."""
        return [
            Route("/", self.overview_page),
            Route("/tasks", self.tasks_page),
            Route("/tasks/{task_id:int}", self.task_page),
            Route("/tasks/{task_id:int}/retry", self.retry_task, methods=["POST"]),
            Route("/tasks/{task_id:int}/cancel", self.cancel_task, methods=["POST"]),
            Route("/tasks/bulk", self.bulk_action, methods=["POST"]),
            Route("/queues/pause", self.queue_switch, methods=["POST"]),
            Route("/queues/resume", self.queue_switch, methods=["POST"]),
            Route("/schedules/{schedule_id:int}/{what}", self.schedule_action,
                  methods=["POST"]),
            Route("/failed", self.failed_page),
            Route("/failed/retry", self.retry_all, methods=["POST"]),
            Route("/schedules", self.schedules_page),
            Route("/pools", self.pools_page),
            Route("/pools/scale", self.scale_pool, methods=["POST"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/metrics", self.metrics),
            Route("/api/overview", self.api_overview),
            Route("/api/tasks/{task_id:int}", self.api_task),
            *[Route(path, self.api_list) for path in ("/api/tasks", "/api/failed-tasks",
                                                      "/api/queues", "/api/workers")],
            Route("/api/tasks/{task_id:int}/retry", self.retry_task, methods=["POST"]),
            Route("/api/tasks/{task_id:int}/cancel", self.cancel_task, methods=["POST"]),
            Route("/favicon.ico", lambda request: RedirectResponse(
                self.url(request, "/static/favicon.svg"), 301)),
            Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")),
                  name="static"),
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
    async def lifespan(app):
        try:
            yield
        finally:
            panel.store.close()

    app = Starlette(
        routes=panel.routes(),
        middleware=[Middleware(SecurityMiddleware, security=security)],
        exception_handlers={HTTPException: panel.on_http_error, CSRFError: panel.on_csrf_error,
                            DatabaseError: panel.on_db_error},
        lifespan=lifespan)
    app.state.panel = panel
    return app


__all__ = ["create_app", "Panel", "daemon_status"]
