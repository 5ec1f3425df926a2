"""What a user does in the panel (POST, CSRF-protected): retry or cancel a task, the
bulk actions, pause and resume a queue, enable, disable or run a schedule, scale a
pool; and logging in and out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import control, scheduler
from ..backends import Backend
from ..backends.filters import TaskFilter
from . import bulk, views
from .panel import CONTROL_TIMEOUT, Panel, text_field, text_fields
from .security import SESSION_COOKIE, cookie_path, route_path, safe_next

MAX_POOL_SIZE = 512


class Actions:
    """The action handlers of a Panel."""

    def __init__(self, panel: Panel) -> None:
        self.p = panel

    async def retry_task(self, request: Request) -> Response:
        """POST: put one failed or cancelled task back to pending."""
        return await self._one_task(request, lambda s, f: s.retry_tasks(f),
                                    "failed or cancelled tasks can be retried", "pending again")

    async def cancel_task(self, request: Request) -> Response:
        """POST: cancel one pending or running task."""
        return await self._one_task(request, lambda s, f: s.cancel_tasks(f),
                                    "pending or running tasks can be cancelled", "cancelled")

    async def _one_task(self, request: Request, act: Callable[[Backend, TaskFilter], int],
                        only: str, became: str) -> Response:
        """Do `act` on the task of the path, and say what became of it (or why not)."""
        form = await self.p.checked_form(request)
        task_id: int = request.path_params["task_id"]
        chosen = TaskFilter(ids=(task_id,))
        row, changed = await self.p.data(lambda s: (s.get_task(task_id), act(s, chosen)))
        if row is None:
            return self.p.error(request, 404, f"There is no task #{task_id}.")
        if not changed:
            return self.p.done(request, form, False, f"Task #{task_id} is {row['status']}; "
                                                     f"only {only}.", f"/tasks/{task_id}")
        return self.p.done(request, form, True, f"Task #{task_id} ({row['name']}) is "
                                                f"{became}.", f"/tasks/{task_id}")

    async def retry_all(self, request: Request) -> Response:
        """POST: retry every failed task matching the queue/name filter."""
        form = await self.p.checked_form(request)
        try:
            filters = views.parse_filters(text_fields(form), allow_status=False)
        except views.BadRequest as exc:
            return self.p.error(request, 400, str(exc))
        chosen = TaskFilter(queue=filters["queue"], name=filters["name"],
                            statuses=("failed",))
        n = await self.p.data(lambda s: s.retry_tasks(chosen))
        what = " and ".join(f"{k} {filters[k]!r}" for k in ("queue", "name") if filters[k])
        return self.p.done(request, form, True, f"{n} failed task{'s' if n != 1 else ''}"
                                                f"{' with ' + what if what else ''} "
                                                f"{'is' if n == 1 else 'are'} pending again.",
                           "/failed")

    async def bulk_action(self, request: Request) -> Response:
        """POST: cancel, retry or purge every task a filter matches. Without
        confirm=yes it only shows what it would do, with a form to confirm."""
        form = await self.p.checked_form(request)
        action = text_field(form, "action")
        if action is None or action not in bulk.ACTIONS:
            return self.p.error(request, 400, f"action must be one of "
                                              f"{', '.join(bulk.ACTIONS)}, got {action!r}")
        try:
            filters = views.parse_filters(text_fields(form))
        except views.BadRequest as exc:
            return self.p.error(request, 400, str(exc))
        back = safe_next(text_field(form, "next"), self.p.url(request, "/tasks"))
        spec = bulk.ACTIONS[action]
        if text_field(form, "confirm") != "yes":
            n = await self.p.data(lambda s: bulk.count(s, action, filters))
            return self.p.render(request, "confirm.html", {
                "nav": "tasks", "action": action, "spec": spec, "f": filters, "count": n,
                "statuses": bulk.statuses(action, filters["status"]), "back": back})
        n = await run_in_threadpool(bulk.run, self.p.store.run, action, filters)
        if action == "retry" and n:
            await self.p.data(lambda s: s.notify())
        return self.p.done(request, form, True,
                           f"{n} task{'s' if n != 1 else ''} {spec['done']}.", "/tasks")

    async def queue_switch(self, request: Request) -> Response:
        """POST /queues/pause or /queues/resume: the daemon stops (or starts again)
        claiming from a queue, through the control channel as `liteqctl pause` does."""
        form = await self.p.checked_form(request)
        queue = (text_field(form, "queue") or "").strip()
        pause = route_path(request.scope).endswith("/pause")
        if not queue:
            return self.p.error(request, 400, "queue is missing")
        fn = control.pause if pause else control.resume
        try:
            reply = await run_in_threadpool(fn, queue, db=self.p.db, timeout=CONTROL_TIMEOUT)
        except control.DaemonNotRunning:
            return self.p.done(request, form, False, "The daemon is not running: a queue is "
                                                     "paused in a running daemon.", "/")
        except (control.ControlError, TimeoutError, OSError) as exc:
            return self.p.done(request, form, False, f"The daemon refused: {exc}", "/")
        still = ", ".join(reply.get("paused") or []) or "none"
        return self.p.done(request, form, True, f"Queue {queue} is "
                                                f"{'paused' if pause else 'resumed'} "
                                                f"(paused queues: {still}).", "/")

    async def schedule_action(self, request: Request) -> Response:
        """POST /schedules/{id}/enable, /disable or /run (make it due now, so the
        daemon's scheduler fires it at once; its next run stays as it was)."""
        form = await self.p.checked_form(request)
        sid: int = request.path_params["schedule_id"]
        what: str = request.path_params["what"]
        if what not in ("enable", "disable", "run"):
            return self.p.error(request, 404, "There is nothing at this address.")
        name, result = await self.p.data(lambda s: _schedule_act(s, sid, what))
        if name is None:
            return self.p.error(request, 404, f"There is no schedule #{sid}.")
        if what == "run":
            if isinstance(result, str):
                return self.p.done(request, form, False, f"Not run: {result}.", "/schedules")
            return self.p.done(request, form, True,
                               f"Schedule {name} is due now: the daemon's scheduler "
                               f"enqueues its task at once; its next run stays as it was.",
                               "/schedules")
        return self.p.done(request, form, bool(result), f"Schedule {name} is {what}d.",
                           "/schedules")

    async def scale_pool(self, request: Request) -> Response:
        """POST: set a pool's number of children through the control channel."""
        form = await self.p.checked_form(request)
        pool = (text_field(form, "pool") or "").strip() or None
        raw = (text_field(form, "size") or "").strip()
        try:
            size = int(raw)
            if not 0 <= size <= MAX_POOL_SIZE:
                raise ValueError
        except ValueError:
            return self.p.error(request, 400, f"size must be a whole number from 0 to "
                                              f"{MAX_POOL_SIZE}, got {raw!r}")
        try:
            await run_in_threadpool(control.scale, size, pool=pool, db=self.p.db,
                                    timeout=CONTROL_TIMEOUT)
        except control.DaemonNotRunning:
            return self.p.done(request, form, False, "The daemon is not running; nothing "
                                                     "to scale.", "/pools")
        except (control.ControlError, TimeoutError, OSError) as exc:
            return self.p.done(request, form, False, f"The daemon refused: {exc}", "/pools")
        return self.p.done(request, form, True, f"Pool {pool or '(first)'} is scaling to "
                                                f"{size} children.", "/pools")

    # ---- login -------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """GET: the login form; POST: check the token and set the session cookie."""
        home = self.p.url(request, "/")
        nxt = safe_next(request.query_params.get("next"), home)
        if self.p.security.token is None:
            return RedirectResponse(nxt, status_code=303)
        if request.method == "GET":
            error = None
            if request.query_params.get("bad_token"):
                error = ("The token in that address is not this panel's. A panel started "
                         "without --token makes a new one each time: use the address it "
                         "printed last.")
            return self.p.render(request, "login.html", {"next": nxt, "login_error": error})
        form = await self.p.checked_form(request)
        nxt = safe_next(text_field(form, "next"), home)
        if not self.p.security.check_token(form.get("token")):
            await asyncio.sleep(0.3)  # slows guessing down a little
            return self.p.render(request, "login.html",
                                 {"next": nxt, "login_error": "That token is not right."}, 401)
        return self.p.security.login_redirect(nxt, secure=request.url.scheme == "https",
                                              path=cookie_path(request.scope))

    async def logout(self, request: Request) -> Response:
        """POST: forget the session cookie."""
        await self.p.checked_form(request)
        resp = RedirectResponse(self.p.url(request, "/login"), status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path=cookie_path(request.scope))
        return resp


def _schedule_act(store: Backend, sid: int, what: str) -> tuple[str | None, Any]:
    """(the schedule's name, what enable, disable or run gave) or (None, None) when
    there is no schedule `sid`; a run refused gives its reason as a string."""
    rows = [r for r in store.list_schedules() if r["id"] == sid]
    if not rows:
        return None, None
    name: str = rows[0]["name"]
    if what == "enable":
        return name, scheduler.enable_schedule(sid, backend=store)
    if what == "disable":
        return name, scheduler.disable_schedule(sid, backend=store)
    try:
        return name, scheduler.run_schedule_now(sid, backend=store)
    except ValueError as exc:
        return name, str(exc)
