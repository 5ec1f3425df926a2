"""TaskHandle: what .delay() returns. An int (the task id) that can also wait for
the task and give back its typed result.

    handle = add.delay(1, 2)        # TaskHandle[int]
    handle == 17; json.dumps(handle) # still the id
    handle.result(timeout=10)        # 3, typed int; TaskFailed / TaskWasCancelled / WaitTimeout
    await handle.aresult()           # the same, for asyncio code
    add.handle(stored_id)            # a handle again, from an id kept elsewhere
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from .errors import TaskFailed, TaskWasCancelled
from .status import (TaskStatus, aget_task_status, await_task, get_task_status,
                     wait_for_task)

R = TypeVar("R", covariant=True)  # a handle of a bool task is a handle of an int one

#: How often a waiting handle reads the task's row at most (it starts faster and
#: backs off to this): waiting costs one indexed read per poll, never a busy loop.
DEFAULT_POLL = 0.05


class TaskHandle(int, Generic[R]):
    """A task id (an int: it stores, compares and JSON-encodes as the id) that reads
    the task's status and waits for its result, typed as the task's return value."""

    __slots__ = ()

    def __new__(cls, task_id: int) -> TaskHandle[R]:
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise TypeError(f"a task id is an int, not {type(task_id).__name__}")
        return super().__new__(cls, task_id)

    @property
    def id(self) -> int:
        """The task id as a plain int."""
        return int(self)

    def status(self) -> TaskStatus | None:
        """The task's TaskStatus now (None when no task has this id)."""
        return get_task_status(int(self))

    async def astatus(self) -> TaskStatus | None:
        """`await handle.astatus()`: status() for asyncio code."""
        return await aget_task_status(int(self))

    def wait(self, timeout: float = 30.0, poll: float = DEFAULT_POLL) -> TaskStatus:
        """Block until the task is done, failed or cancelled; its TaskStatus.

        Raises WaitTimeout after `timeout` seconds, TaskNotFound for an unknown id."""
        return wait_for_task(int(self), timeout=timeout, poll=poll)

    async def await_(self, timeout: float = 30.0, poll: float = DEFAULT_POLL) -> TaskStatus:
        """`await handle.await_()`: wait() for asyncio code."""
        return await await_task(int(self), timeout=timeout, poll=poll)

    def result(self, timeout: float = 30.0, poll: float = DEFAULT_POLL) -> R:
        """Wait for the task and return its result, decoded and typed.

        Raises TaskFailed (it failed: the error is in the message and .error),
        TaskWasCancelled (it was cancelled), WaitTimeout (a TimeoutError: still
        pending or running after `timeout` seconds), TaskNotFound (no such task)."""
        return cast(R, _result_of(self.wait(timeout, poll)))

    async def aresult(self, timeout: float = 30.0, poll: float = DEFAULT_POLL) -> R:
        """`await handle.aresult()`: result() for asyncio code."""
        return cast(R, _result_of(await self.await_(timeout, poll)))


def _result_of(status: TaskStatus) -> Any:
    """The result of a finished task, or the error that says how it ended instead."""
    if status["status"] == "done":
        return status["result"]
    error = cast("str | None", status["error"]) or ""
    what = f"task {status['id']} ({status['name']})"
    if status["status"] == "cancelled":
        why = error.partition("\n")[0] or "cancelled"
        raise TaskWasCancelled(f"{what} was cancelled: {why}", status)
    first = error.partition("\n")[0] or "no error recorded"
    raise TaskFailed(f"{what} failed after {status['attempts']} attempt(s): {first}",
                     status, error)


# int.__new__ itself: a handle of an id that is an int already skips the check.
_new_int: Callable[[type[TaskHandle[Any]], int], TaskHandle[Any]] = int.__new__


def handle_of(task_id: int) -> TaskHandle[Any]:
    """The TaskHandle of an id a backend returned (an int already: no check to pay)."""
    return _new_int(TaskHandle, task_id)


def handles(ids: list[int]) -> list[TaskHandle[Any]]:
    """TaskHandles of these ids (from a backend), in order."""
    return [_new_int(TaskHandle, i) for i in ids]
