"""`current_task`: what a running task knows about itself (Celery's `self.request`,
Huey's `context=True`).

    from liteq import current_task, task

    @task(max_retries=5)
    def sync_account(account_id):
        print(current_task.id, current_task.attempt, current_task.retries_left)

The worker child sets it around each task (a context variable, so a coroutine
task sees it too). Outside a running task, reading it raises LiteQError.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import LiteQError

_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "liteq_current_task", default=None)


class TaskContext(NamedTuple):
    """One attempt of one task, as the child runs it.

    attempt is 1-based; enqueued_at and deadline are epoch seconds (deadline is
    None without a time limit); worker is "host:pid" of the child running it.
    (A named tuple: made for every task, it must cost next to nothing.)
    """
    id: int
    name: str
    queue: str
    attempt: int
    max_retries: int
    enqueued_at: float
    deadline: float | None
    worker: str

    @property
    def retries_left(self) -> int:
        """How many more attempts a failure of this one may still get."""
        return max(self.max_retries - (self.attempt - 1), 0)

    def parent_results(self) -> list[Any]:
        """The results of the tasks this one depends on (depends_on, or the previous
        step of a chain), decoded, in depends_on order.

        A user read, not the queue's bookkeeping: the child opens the database
        (LITEQ_DB from its environment) on the first call. Every parent is done
        before this task is claimed, so the results are final."""
        from .backends import get_backend
        from .serialization import decode_result
        return [decode_result(text) for text in get_backend().parent_results(self.id)]


class _CurrentTask:
    """Reads the running task's TaskContext; outside a task, a clear LiteQError."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        ctx = _current.get()
        if ctx is None:
            raise LiteQError(f"current_task.{name}: no task is running here; current_task "
                             f"is only available inside a task that a LiteQ worker runs")
        return getattr(ctx, name)

    def __bool__(self) -> bool:
        return _current.get() is not None

    def __repr__(self) -> str:
        ctx = _current.get()
        return f"<current_task {ctx!r}>" if ctx is not None else "<current_task: none running>"


if TYPE_CHECKING:
    # For type checkers, the running task's TaskContext (current_task.id is an int, ...).
    current_task: TaskContext
else:
    current_task = _CurrentTask()


def enter(ctx: TaskContext) -> contextvars.Token[TaskContext | None]:
    """Make `ctx` the current task; returns the token for leave()."""
    return _current.set(ctx)


def leave(token: contextvars.Token[TaskContext | None]) -> None:
    """Restore what was current before enter()."""
    _current.reset(token)
