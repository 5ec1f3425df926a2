"""FastAPI helpers: enqueue tasks from endpoints, and a ready task-status router.

    from fastapi import Depends, FastAPI
    from liteq import task
    from liteq.fastapi import LiteQBackgroundTasks, enqueue_task, task_router

    app = FastAPI()
    app.include_router(task_router)                  # GET /tasks/{task_id}

    @task(queue="emails", timeout=60)
    async def send_email(to: str, subject: str): ...

    @app.post("/send-email-bg")
    async def api_send_email_bg(to: str, background: LiteQBackgroundTasks):
        task_id = background.add_task(send_email, to, "Hi!")
        return {"message": "queued", "task_id": task_id}

    @app.post("/send-email-helper")
    async def api_send_email_helper(to: str):
        return {"task_id": enqueue_task(send_email, to, "Welcome")}

Unlike FastAPI's own BackgroundTasks, add_task() does not run the function
after the response in this process: it enqueues it (one durable INSERT, done
before add_task returns) for liteqd to run, and returns the task id.

The object also reads back what it enqueued, as liteq 0.2's did:
background.task_ids (or .tasks), background.get_task_status(task_id) and
background.get_all_statuses().

Per-call options go in keywords with a leading underscore, so they never clash
with the task's own arguments:

    background.add_task(send_email, to, "Hi!", _queue="urgent", _priority=9)
    enqueue_task(send_email, to, "Hi!", _countdown=30, _timeout=10)

_queue, _priority, _countdown, _eta, _timeout and _max_retries mean what the
same options of Task.apply_async() mean. (A task that really takes a keyword
with one of these names can be enqueued with task.apply_async().)

LiteQBackgroundTasks is `Annotated[TaskEnqueuer, Depends(TaskEnqueuer)]`, so a
plain annotation is enough. These forms are equivalent:

    background: LiteQBackgroundTasks
    background: Annotated[LiteQBackgroundTasks, Depends()]
    background: TaskEnqueuer = Depends()
    background: TaskEnqueuer = Depends(LiteQBackgroundTasks)

(Use TaskEnqueuer, the class, for isinstance() checks and for the `= Depends()`
style: FastAPI refuses a Depends both in the annotation and as the default.)

This module imports fastapi; `import liteq` alone never does.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar, cast

from fastapi import APIRouter, Depends, HTTPException

from .backends import get_backend
from .core import Task
from .errors import NotATaskError
from .handle import TaskHandle
from .status import TaskStatus, aget_task_status, get_task_status, task_row_to_dict

R = TypeVar("R")

OPTIONS = {"_queue": "queue", "_priority": "priority", "_countdown": "countdown",
           "_eta": "eta", "_timeout": "timeout", "_max_retries": "max_retries"}


def _as_task(fn: Task[..., R] | object) -> Task[..., R]:
    if isinstance(fn, Task):
        return cast("Task[..., R]", fn)
    what = getattr(fn, "__qualname__", None) or repr(fn)
    raise NotATaskError(f"{what} is not a LiteQ task: decorate it with @task "
                        f"(from liteq import task) so that it can be enqueued and found "
                        f"by the worker")


def _split_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = {OPTIONS[k]: kwargs.pop(k) for k in list(kwargs) if k in OPTIONS}
    queue = options.get("queue")
    if "queue" in options and (not isinstance(queue, str) or not queue):
        raise ValueError(f"_queue must be a non-empty string, got {queue!r}")
    priority = options.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise TypeError(f"_priority must be an int, got {priority!r}")
    return options


def enqueue_task(fn: Task[..., R], *args: Any, **kwargs: Any) -> TaskHandle[R]:
    """Enqueue the @task `fn` with these arguments; returns its TaskHandle (an int,
    the task id). (fn.delay(...) is the form type checkers check argument by argument.)

    Keywords _queue, _priority, _countdown, _eta, _timeout and _max_retries are
    per-call options (see the module docstring); everything else goes to the
    task. Raises NotATaskError (a TypeError and a ValueError) when `fn` is not a @task.
    """
    task: Task[..., R] = _as_task(fn)
    options = _split_options(kwargs)
    if not options:
        return task.delay(*args, **kwargs)
    return task.apply_async(args, kwargs, **options)


async def aenqueue_task(fn: Task[..., R], *args: Any, **kwargs: Any) -> TaskHandle[R]:
    """`await aenqueue_task(fn, ...)`: enqueue_task() that never blocks the event loop
    (for `async def` endpoints)."""
    task: Task[..., R] = _as_task(fn)
    options = _split_options(kwargs)
    if not options:
        return await task.adelay(*args, **kwargs)
    return await task.aapply_async(args, kwargs, **options)


class TaskEnqueuer:
    """What an endpoint receives for a LiteQBackgroundTasks parameter.

    add_task() enqueues at once and returns the task id; task_ids (or tasks, liteq
    0.2's name) lists the ids enqueued through this object (one object
    per request). Built by hand, as liteq 0.2 allowed, queue= and priority= are
    the defaults of its add_task() calls (None: the task's own).
    """

    # FastAPI builds the dependency from the signature: keep queue and priority
    # out of it, so that no request can set them through query parameters.
    __signature__ = inspect.Signature()

    def __init__(self, queue: str | None = None, priority: int | None = None) -> None:
        self.queue = queue
        self.priority = priority
        self.task_ids: list[TaskHandle[Any]] = []

    @property
    def tasks(self) -> list[TaskHandle[Any]]:
        """liteq 0.2's name for task_ids."""
        return self.task_ids

    def add_task(self, fn: Task[..., R], *args: Any, **kwargs: Any) -> TaskHandle[R]:
        """Enqueue the @task `fn` now (durably) and return its id; see enqueue_task()."""
        if self.queue is not None:
            kwargs.setdefault("_queue", self.queue)
        if self.priority is not None:
            kwargs.setdefault("_priority", self.priority)
        task_id = enqueue_task(fn, *args, **kwargs)
        self.task_ids.append(task_id)
        return task_id

    async def aadd_task(self, fn: Task[..., R], *args: Any, **kwargs: Any) -> TaskHandle[R]:
        """add_task() for `async def` endpoints: `await background.aadd_task(...)` never
        blocks the event loop."""
        if self.queue is not None:
            kwargs.setdefault("_queue", self.queue)
        if self.priority is not None:
            kwargs.setdefault("_priority", self.priority)
        task_id = await aenqueue_task(fn, *args, **kwargs)
        self.task_ids.append(task_id)
        return task_id

    def get_task_status(self, task_id: int) -> TaskStatus | None:
        """get_task_status() of one task (None when there is no such task)."""
        return get_task_status(task_id)

    def get_all_statuses(self) -> list[TaskStatus]:
        """get_task_status() of every task enqueued through this object, in order;
        tasks that no longer exist (purged) are left out."""
        rows = {r["id"]: r for r in get_backend().get_tasks([int(i) for i in self.task_ids])}
        return [task_row_to_dict(rows[i]) for i in self.task_ids if i in rows]

    def __repr__(self) -> str:
        return f"<TaskEnqueuer task_ids={self.task_ids}>"


LiteQBackgroundTasks = Annotated[TaskEnqueuer, Depends(TaskEnqueuer)]
# FastAPI reads a dependency's parameters from inspect.signature(). A typing alias
# has the signature (*args, **kwargs), which FastAPI would turn into two required
# query parameters; give `Depends(LiteQBackgroundTasks)` TaskEnqueuer's (none) instead.
LiteQBackgroundTasks.__signature__ = inspect.signature(TaskEnqueuer)  # pyright: ignore


def create_task_router(prefix: str = "/tasks", *, tags: Sequence[str] = ("tasks",),
                       dependencies: Sequence[Any] | None = None) -> APIRouter:
    """An APIRouter serving GET {prefix}/{task_id}: get_task_status() as JSON, 404 when missing.

    dependencies: FastAPI dependencies for every route (for example your auth).
    """
    router = APIRouter(prefix=prefix, tags=list(tags), dependencies=list(dependencies or []))

    @router.get("/{task_id}", summary="A task's status",
                responses={404: {"description": "No task has this id"}})
    async def liteq_task_status(task_id: int) -> dict[str, Any]:
        """id, name, queue, status, priority, attempts, max_retries, worker_id, run_at,
        created_at, started_at, finished_at, result, error, args, kwargs, timeout,
        payload."""
        status = await aget_task_status(task_id)
        if status is None:
            raise HTTPException(status_code=404, detail=f"no task with id {task_id}")
        return status

    return router


task_router = create_task_router()

__all__ = ["LiteQBackgroundTasks", "TaskEnqueuer", "NotATaskError", "enqueue_task",
           "aenqueue_task",
           "create_task_router", "task_router"]
