"""The panel's state and what every handler uses: the database in the thread pool,
the daemon's status, pages with the shared context, and the answers to actions."""

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from .. import control
from ..backends import Backend, identity_of
from ..timeutil import now
from . import views
from .formatting import filters_for, in_zone
from .security import CSRF_FIELD, Security, cookie_path, root_of, route_path, safe_next, \
    wants_html

HERE = os.path.dirname(os.path.abspath(__file__))
FLASH_COOKIE = "liteq_flash"
CONTROL_TIMEOUT = 2.0
NAV = [("overview", "Overview", "/"), ("tasks", "Tasks", "/tasks"),
       ("failed", "Failed", "/failed"), ("schedules", "Schedules", "/schedules"),
       ("pools", "Pools", "/pools")]
T = TypeVar("T")


def daemon_status(db: str) -> tuple[dict[str, Any] | None, str | None]:
    """(status dict, None) from the daemon, or (None, why it could not be read)."""
    try:
        return control.status(include_queues=False, db=db, timeout=CONTROL_TIMEOUT), None
    except control.DaemonNotRunning:
        return None, "not running"
    except (control.ControlError, TimeoutError, OSError, ValueError) as exc:
        return None, str(exc) or type(exc).__name__


def text_field(form: Mapping[str, Any], key: str) -> str | None:
    """A form field's text (None when missing, or when it is a file)."""
    value = form.get(key)
    return value if isinstance(value, str) else None


def text_fields(form: FormData) -> dict[str, str]:
    """The form's text fields (a file field is left out), as parse_filters reads them."""
    return {key: value for key, value in form.items() if isinstance(value, str)}


class Panel:
    """The panel's state (database, policy, templates) and what every handler uses:
    the database in the thread pool, the daemon's status, pages and answers."""

    def __init__(self, db: str, security: Security, refresh: float,
                 zone: Any = None) -> None:
        self.db = db
        self.identity = identity_of(db)  # shown on pages: never a password
        self.security = security
        self.refresh_ms = int(refresh * 1000)
        self.zone = zone
        self.store = views.PanelStore(db)
        self.templates = Jinja2Templates(directory=os.path.join(HERE, "templates"))
        self.templates.env.filters.update(filters_for(zone))

    def hhmm(self, ts: float) -> str:
        """A bucket's start as 'HH:MM ZONE' in the display zone (the charts' tips)."""
        moment = in_zone(ts, self.zone)
        return moment.strftime("%H:%M %Z") if moment else ""

    @staticmethod
    def url(request: Request, path: str) -> str:
        """`path` of the panel as a link: below the prefix it is mounted under."""
        return root_of(request.scope) + path

    async def data(self, fn: Callable[[Backend], T]) -> T:
        """Run fn(store) in the thread pool, holding the panel's Store."""
        return await run_in_threadpool(self.store.run, fn)

    async def page_data(self, fn: Callable[[Backend], dict[str, Any]]) -> dict[str, Any]:
        """data(fn) plus the failed-task count every page's navigation badge shows."""
        return await self.data(
            lambda s: {**fn(s), "failed_total": s.count_tasks(status="failed")})

    async def daemon(self) -> tuple[dict[str, Any] | None, str | None]:
        """The daemon's status, read in the thread pool (a socket round trip)."""
        return await run_in_threadpool(daemon_status, self.db)

    def render(self, request: Request, name: str, context: dict[str, Any],
               status_code: int = 200) -> Response:
        """Render a page with the shared context (nav, CSRF token, one-time flash)."""
        flash = None
        raw = request.cookies.get(FLASH_COOKIE)
        if raw:
            kind, _, text = unquote(raw).partition(":")
            flash = {"kind": kind if kind in ("ok", "error") else "ok", "text": text}
        # Before login a visitor learns nothing about the deployment: not even the
        # database path or URL (the footer is left out).
        shown = self.security.authenticated(request)
        moment = in_zone(now(), self.zone)
        ctx: dict[str, Any] = {
            "nav_items": NAV, "nav": None, "csrf_field": CSRF_FIELD,
            "csrf_token": request.state.csrf_token, "flash": flash,
            "logged_in": self.security.session_ok(request), "no_refresh": False,
            "db": self.identity if shown else None,
            "refresh_ms": self.refresh_ms, "failed_total": None, "now": now(),
            "root": root_of(request.scope),
            "zone_name": moment.strftime("%Z") if moment else "",
            "here": request.url.path + (f"?{request.url.query}" if request.url.query else "")}
        ctx.update(context)
        resp = self.templates.TemplateResponse(request, name, ctx, status_code=status_code)
        if raw:
            resp.delete_cookie(FLASH_COOKIE, path=cookie_path(request.scope))
        return resp

    def error(self, request: Request, status_code: int, message: str,
              title: str | None = None) -> Response:
        """An error as a page for browsers, as JSON for everything else."""
        title = title or {400: "Bad request", 401: "Unauthorized", 403: "Forbidden",
                          404: "Not found", 503: "Database unavailable"}.get(
                              status_code, "Error")
        if not wants_html(request):
            return JSONResponse({"error": message}, status_code=status_code)
        return self.render(request, "error.html", {"code": status_code, "title": title,
                                                   "message": message}, status_code)

    def done(self, request: Request, form: Mapping[str, Any], ok: bool, message: str,
             default: str = "/") -> Response:
        """Answer an action: JSON for API clients (and /api/ paths), else redirect back
        with a flash. The JSON's status is liteq 0.2's "success" (or "error")."""
        if "application/json" in request.headers.get("accept", "") or \
                route_path(request.scope).startswith("/api/"):
            return JSONResponse({"ok": ok, "status": "success" if ok else "error",
                                 "message": message}, status_code=200 if ok else 409)
        resp = RedirectResponse(safe_next(text_field(form, "next"),
                                          self.url(request, default)), status_code=303)
        resp.set_cookie(FLASH_COOKIE, quote(("ok:" if ok else "error:") + message),
                        max_age=60, httponly=True, samesite="strict",
                        path=cookie_path(request.scope))
        return resp

    async def checked_form(self, request: Request) -> FormData:
        """The POSTed form, after the CSRF checks (CSRFError when they fail)."""
        form = await request.form()
        self.security.check_csrf(request, form)
        return form

    def favicon(self, request: Request) -> Response:
        """The icon, where browsers look for it first."""
        return RedirectResponse(self.url(request, "/static/favicon.svg"), 301)

    # ---- errors --------------------------------------------------------------------

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        """404 and other HTTP errors as pages (or JSON)."""
        assert isinstance(exc, HTTPException)
        message = {404: "There is nothing at this address.",
                   405: "This address does not accept that method."}.get(exc.status_code,
                                                                          str(exc.detail))
        return self.error(request, exc.status_code, message)

    async def on_csrf_error(self, request: Request, exc: Exception) -> Response:
        """A POST that failed the CSRF checks: 403."""
        return self.error(request, 403, str(exc))

    async def on_db_error(self, request: Request, exc: Exception) -> Response:
        """The database could not be read (locked for too long, unreadable): 503."""
        return self.error(request, 503, str(exc))
