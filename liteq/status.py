"""Reading a task's state: get_task_status() and wait_for_task()."""

from __future__ import annotations

import time
from typing import Any, Literal, cast

from .backends import get_backend
from .errors import TaskNotFound, WaitTimeout
from .serialization import decode_payload, decode_result
from .timeutil import to_iso

StatusName = Literal["pending", "running", "done", "failed", "cancelled"]
# status plus the one distinction it does not make: "claimed" is a running row that a
# daemon took but none of its children has started yet (started_at is None).
StateName = Literal["pending", "claimed", "running", "done", "failed", "cancelled"]

FINISHED = frozenset({"done", "failed", "cancelled"})
_TIME_KEYS = ("run_at", "created_at", "started_at", "finished_at")


class TaskStatus(dict[str, Any]):
    """A task's state: a dict, as liteq 0.2 returned it (status["status"],
    status.get("result"), JSON as is), whose keys also read as typed attributes
    (status.status, status.result, ...). Times are ISO-8601 strings."""

    __slots__ = ()

    @property
    def id(self) -> int:
        """The task id."""
        return cast(int, self["id"])

    @property
    def name(self) -> str:
        """The task's name."""
        return cast(str, self["name"])

    @property
    def queue(self) -> str:
        """Its queue."""
        return cast(str, self["queue"])

    @property
    def status(self) -> StatusName:
        """pending, running, done, failed or cancelled."""
        return cast(StatusName, self["status"])

    @property
    def state(self) -> StateName:
        """status, except "claimed" for a task a daemon claimed that no child has
        started yet (status "running", started_at None)."""
        return cast(StateName, self["state"])

    @property
    def waiting_for_child(self) -> bool:
        """True while the task is claimed by a daemon (worker_id) but not started."""
        return cast(bool, self["waiting_for_child"])

    @property
    def priority(self) -> int:
        """Its priority."""
        return cast(int, self["priority"])

    @property
    def attempts(self) -> int:
        """Attempts started."""
        return cast(int, self["attempts"])

    @property
    def max_retries(self) -> int:
        """Retries allowed."""
        return cast(int, self["max_retries"])

    @property
    def worker_id(self) -> str | None:
        """The daemon that ran it last."""
        return cast("str | None", self["worker_id"])

    @property
    def error(self) -> str | None:
        """The last error with its traceback (None after success)."""
        return cast("str | None", self["error"])

    @property
    def timeout(self) -> float | None:
        """Its time limit in seconds (None: the daemon's)."""
        return cast("float | None", self["timeout"])

    @property
    def run_at(self) -> str | None:
        """When it is due."""
        return cast("str | None", self["run_at"])

    @property
    def created_at(self) -> str | None:
        """When it was enqueued."""
        return cast("str | None", self["created_at"])

    @property
    def started_at(self) -> str | None:
        """When its last attempt started."""
        return cast("str | None", self["started_at"])

    @property
    def finished_at(self) -> str | None:
        """When it finished."""
        return cast("str | None", self["finished_at"])

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Every failed attempt's error, oldest first: {attempt, error, finished_at}."""
        return cast("list[dict[str, Any]]", self.get("errors", []))

    @property
    def result(self) -> Any:
        """The decoded result (done only)."""
        return self["result"]

    @property
    def payload(self) -> str:
        """The arguments as stored (JSON text)."""
        return cast(str, self["payload"])

    @property
    def args(self) -> list[Any] | None:
        """The decoded positional arguments."""
        return cast("list[Any] | None", self["args"])

    @property
    def kwargs(self) -> dict[str, Any] | None:
        """The decoded keyword arguments."""
        return cast("dict[str, Any] | None", self["kwargs"])

    @property
    def finished(self) -> bool:
        """True when the task is done, failed or cancelled."""
        return self["status"] in FINISHED


def task_state(status: str, started_at: object) -> StateName:
    """A row's state: its status, or "claimed" for a running row not started yet."""
    if status == "running" and started_at is None:
        return "claimed"
    return cast(StateName, status)


def task_row_to_dict(row: dict[str, Any]) -> TaskStatus:
    """The public view of a task row: decoded result, args and kwargs, ISO times."""
    out = TaskStatus((k, row[k]) for k in ("id", "name", "queue", "status", "priority",
                                           "attempts", "max_retries", "worker_id", "error",
                                           "timeout"))
    for key in _TIME_KEYS:
        out[key] = to_iso(row[key])
    out["state"] = task_state(row["status"], row["started_at"])
    out["waiting_for_child"] = out["state"] == "claimed"
    out["result"] = decode_result(row["result"])
    out["payload"] = row["payload"]  # the call's JSON text, as liteq 0.2 returned it
    try:
        out["args"], out["kwargs"] = decode_payload(row["payload"])
    except ValueError:
        out["args"], out["kwargs"] = None, None
    return out


def get_task_status(task_id: int) -> TaskStatus | None:
    """The task's state as a TaskStatus (a dict), or None when no task has that id.

    Keys: id, name, queue, status, priority, attempts, max_retries, worker_id,
    run_at, created_at, started_at, finished_at, result, error, args, kwargs,
    timeout and payload (the arguments' JSON text, as liteq 0.2 gave it),
    plus state and waiting_for_child: a task a daemon claimed (status "running",
    worker_id set) that none of its children has started yet has state "claimed",
    waiting_for_child True and started_at None; once a child starts it, state is
    "running" and started_at the real start. errors: every failed attempt's error,
    oldest first, as {attempt, error, finished_at} (error is the last one). Times are
    ISO-8601 strings; result is
    the decoded value.
    """
    backend = get_backend()
    row = backend.get_task(int(task_id))
    if row is None:
        return None
    out = task_row_to_dict(row)
    out["errors"] = attempt_errors(backend.task_errors(int(task_id)))
    return out


async def aget_task_status(task_id: int) -> TaskStatus | None:
    """`await aget_task_status(id)`: get_task_status() for asyncio code."""
    backend = get_backend()
    row = await backend.aget_task(int(task_id))
    if row is None:
        return None
    out = task_row_to_dict(row)
    out["errors"] = attempt_errors(await backend.atask_errors(int(task_id)))
    return out


def attempt_errors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The public view of a task's attempts' errors: [{attempt, error, finished_at}]
    with ISO-8601 times."""
    return [{"attempt": r["attempt"], "error": r["error"],
             "finished_at": to_iso(r["finished_at"])} for r in rows]


async def await_task(task_id: int, timeout: float = 30.0, poll: float = 0.02) -> TaskStatus:
    """`await await_task(id, timeout=...)`: wait_for_task() for asyncio code; the loop
    runs other work between polls. Raises WaitTimeout and TaskNotFound alike."""
    import asyncio
    waiting = _Waiting(task_id, timeout, poll)
    while True:
        pause = waiting.check(await aget_task_status(task_id))
        if pause is None:
            return cast(TaskStatus, waiting.status)
        await asyncio.sleep(pause)


class _Waiting:
    """The bookkeeping of waiting for a task to finish (sync or async alike)."""

    def __init__(self, task_id: int, timeout: float, poll: float) -> None:
        self.task_id, self.timeout, self.poll = task_id, timeout, poll
        self.deadline = time.monotonic() + timeout
        self.delay = min(poll, 0.005)
        self.status: TaskStatus | None = None

    def check(self, status: TaskStatus | None) -> float | None:
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


def wait_for_task(task_id: int, timeout: float = 30.0, poll: float = 0.02) -> TaskStatus:
    """Block until the task is done, failed or cancelled; return its TaskStatus.

    Raises WaitTimeout after `timeout` seconds, and TaskNotFound (a KeyError) for an
    unknown id.
    """
    waiting = _Waiting(task_id, timeout, poll)
    while True:
        pause = waiting.check(get_task_status(task_id))
        if pause is None:
            return cast(TaskStatus, waiting.status)
        time.sleep(pause)
