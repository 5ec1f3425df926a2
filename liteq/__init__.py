"""LiteQ: a background-task queue on SQLite (or PostgreSQL, for several hosts).

    from liteq import task

    @task(queue="emails", max_retries=5)
    def send_email(to, subject): ...

    task_id = send_email.delay("a@example.com", "Hi")

Run the tasks with `liteqd --app tasks.py` (or `liteq worker --app tasks.py`).
"""

from typing import TYPE_CHECKING, Any

from .codec import register_type
from .context import current_task
from .core import TASK_REGISTRY, AsyncTask, Task, TaskDecorator, task
from .errors import (ConfigError, DatabaseError, DatabaseLocked, DatabaseUnavailable,
                     LiteQError, Retry, TaskCancelled, TaskFailed, TaskNotFound,
                     TaskTimeout, TaskWasCancelled, WaitTimeout)
from .handle import TaskHandle
from .hooks import on_task_failure, on_task_retry, on_task_start, on_task_success
from .status import TaskStatus, aget_task_status, await_task, get_task_status, wait_for_task
from .transaction import using
from .workflow import Signature, chain

if TYPE_CHECKING:
    from .scheduler import Scheduler

from .version import __version__


def register_schedule(task: Task[..., Any], cron: str, *args: Any, **kwargs: Any) -> int:
    """Run `task` on a cron schedule; see liteq.scheduler.register_schedule."""
    # Imported here so that enqueue-only apps never load croniter.
    from .scheduler import register_schedule as _register
    return _register(task, cron, *args, **kwargs)


def cancel_task(task_id: int) -> bool:
    """Cancel a pending or running task; False when it is neither (already finished).

    A running task gets TaskCancelled raised inside it by the daemon that runs it,
    on any host, and its child is killed if it does not stop within the kill grace.
    A cancelled task is never retried."""
    from .backends import get_backend
    return get_backend().cancel(int(task_id))


def retry_task(task_id: int) -> bool:
    """Put a failed or cancelled task back to pending with its attempts reset."""
    from .backends import get_backend
    return get_backend().retry_failed(task_id=int(task_id)) == 1


def purge_tasks(older_than: float) -> int:
    """Delete done, failed and cancelled tasks that finished over `older_than` seconds ago."""
    from .backends import get_backend
    return get_backend().purge(older_than)


def __getattr__(name: str) -> Any:
    # liteq.Scheduler (liteq 0.2 exported it here) loads croniter only when asked for.
    if name == "Scheduler":
        from .scheduler import Scheduler
        return Scheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "task", "Task", "TASK_REGISTRY", "get_task_status", "wait_for_task", "register_schedule",
    "Scheduler", "cancel_task", "retry_task", "purge_tasks", "LiteQError", "DatabaseError",
    "DatabaseLocked", "TaskTimeout", "WaitTimeout", "ConfigError",
    "current_task", "Retry", "DatabaseUnavailable", "on_task_start", "on_task_success",
    "on_task_retry", "on_task_failure", "aget_task_status", "await_task", "TaskCancelled",
    "chain", "using", "Signature", "AsyncTask", "TaskDecorator", "TaskHandle", "TaskStatus",
    "TaskFailed", "TaskWasCancelled", "TaskNotFound", "register_type",
]
