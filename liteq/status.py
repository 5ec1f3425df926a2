"""Reading a task's state: get_task_status() and wait_for_task()."""

import time

from .backends import get_backend
from .errors import TaskNotFound, WaitTimeout
from .serialization import decode_payload, decode_result
from .timeutil import to_iso

FINISHED = frozenset({"done", "failed", "cancelled"})
_TIME_KEYS = ("run_at", "created_at", "started_at", "finished_at")


def task_row_to_dict(row: dict) -> dict:
    """The public view of a task row: decoded result, args and kwargs, ISO times."""
    out = {k: row[k] for k in ("id", "name", "queue", "status", "priority", "attempts",
                               "max_retries", "worker_id", "error", "timeout")}
    for key in _TIME_KEYS:
        out[key] = to_iso(row[key])
    out["result"] = decode_result(row["result"])
    out["payload"] = row["payload"]  # the call's JSON text, as the seed returned it
    try:
        out["args"], out["kwargs"] = decode_payload(row["payload"])
    except ValueError:
        out["args"], out["kwargs"] = None, None
    return out


def get_task_status(task_id: int):
    """The task's state as a dict, or None when no task has that id.

    Keys: id, name, queue, status, priority, attempts, max_retries, worker_id,
    run_at, created_at, started_at, finished_at, result, error, args, kwargs,
    timeout and payload (the arguments' JSON text, as the seed project gave it).
    Times are ISO-8601 strings; result is the decoded value.
    """
    row = get_backend().get_task(int(task_id))
    return task_row_to_dict(row) if row is not None else None


async def aget_task_status(task_id: int):
    """`await aget_task_status(id)`: get_task_status() for asyncio code."""
    row = await get_backend().aget_task(int(task_id))
    return task_row_to_dict(row) if row is not None else None


async def await_task(task_id: int, timeout: float = 30.0, poll: float = 0.02) -> dict:
    """`await await_task(id, timeout=...)`: wait_for_task() for asyncio code; the loop
    runs other work between polls. Raises WaitTimeout and TaskNotFound alike."""
    import asyncio
    waiting = _Waiting(task_id, timeout, poll)
    while True:
        pause = waiting.check(await aget_task_status(task_id))
        if pause is None:
            return waiting.status
        await asyncio.sleep(pause)


class _Waiting:
    """The bookkeeping of waiting for a task to finish (sync or async alike)."""

    def __init__(self, task_id, timeout, poll):
        self.task_id, self.timeout, self.poll = task_id, timeout, poll
        self.deadline = time.monotonic() + timeout
        self.delay = min(poll, 0.005)
        self.status = None

    def check(self, status):
        """None when the task has finished (see .status), else how long to sleep;
        TaskNotFound for an unknown id, WaitTimeout past the deadline."""
        if status is None:
            raise TaskNotFound(f"no task with id {self.task_id}")
        self.status = status
        if status["status"] in FINISHED:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(
                f"task {self.task_id} ({status['name']}) is still {status['status']} "
                f"after {self.timeout:g} s")
        pause = min(self.delay, left)
        self.delay = min(self.delay * 2, self.poll)
        return pause


def wait_for_task(task_id: int, timeout: float = 30.0, poll: float = 0.02) -> dict:
    """Block until the task is done, failed or cancelled; return its status dict.

    Raises WaitTimeout after `timeout` seconds, and TaskNotFound (a KeyError) for an
    unknown id.
    """
    waiting = _Waiting(task_id, timeout, poll)
    while True:
        pause = waiting.check(get_task_status(task_id))
        if pause is None:
            return waiting.status
        time.sleep(pause)
