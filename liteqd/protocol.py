"""The messages between the supervisor and its children, and how they travel.

Each message is one line of JSON: an array whose first element names its kind.
The shapes are declared once, here, as named tuples, so both sides read fields
by name while the wire stays compact (a drain moves tens of thousands a second):

    supervisor -> child   TaskMessage  ["t", id, name, payload_json, timeout_s | null, queue,
                                        attempt, max_retries, enqueued_at, start_by]
    supervisor -> child   Cancel       ["x", id]   (stop that task: it was cancelled)
    supervisor -> child   GiveBack     ["b", [id, ...]]  (hand those back if not started)
    child -> supervisor   Ready        ["ready", pid]
                          Result       ["r", id, ok, result_json | error_text, started,
                                        finished, rss_bytes, timed_out, retry]
                          Skipped      ["s", id]   (handed back unstarted: a stop came first)
                          Started      ["g", [id, ...], started]  (only from a child that
                                        runs several coroutines at once: it decides when
                                        each task starts, so it says so)
"""

import json
import signal
from collections.abc import Iterable
from typing import Any, NamedTuple, Optional, Union

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class TaskMessage(NamedTuple):
    """Run this task (supervisor -> child); the last fields feed liteq.current_task."""
    kind: str
    id: int
    name: str
    payload: str
    timeout: Optional[float]
    queue: str = "default"
    attempt: int = 1
    max_retries: int = 0
    enqueued_at: Optional[float] = None
    # time.monotonic() (one clock for every process of the host) after which the child
    # must not start the task but hand it back: by then the daemon may have been
    # frozen long enough for another daemon to reclaim it.
    start_by: Optional[float] = None


class Cancel(NamedTuple):
    """That task was cancelled: do not start it, or stop it (with a signal)."""
    kind: str
    id: int


class GiveBack(NamedTuple):
    """Hand back those of these queued tasks that have not started (Skipped each)."""
    kind: str
    ids: list[int]


class Ready(NamedTuple):
    """The child has started and waits for tasks."""
    kind: str
    pid: int


class Result(NamedTuple):
    """The outcome of one task: ok with result JSON, or not ok with the error text.

    retry: None lets the task's retry policy decide; False fails it at once (an
    error that no retry can fix); a number asks for a retry after that many seconds
    (liteq.Retry), which still counts against max_retries.
    """
    kind: str
    id: int
    ok: bool
    text: str
    started: float
    finished: float
    rss: int
    timed_out: bool
    retry: object = None


class Skipped(NamedTuple):
    """A queued task handed back unstarted."""
    kind: str
    id: int


class Started(NamedTuple):
    """These tasks started at `started` (epoch s): their time limits run from now."""
    kind: str
    ids: list[int]
    started: float


#: Any message.
Message = Union[TaskMessage, Cancel, GiveBack, Ready, Result, Skipped, Started]

_SHAPES: dict[str, type[Message]] = {"t": TaskMessage, "x": Cancel, "b": GiveBack,
                                     "ready": Ready, "r": Result, "s": Skipped, "g": Started}

# The signal that tells a child to read its messages now, while a task runs: a Cancel
# (the running task may be the one) or a GiveBack.
CANCEL_SIGNAL = signal.SIGRTMIN + 2


def task(task_id: int, name: str, payload: str, timeout: float | None, queue: str = "default",
         attempt: int = 1, max_retries: int = 0, enqueued_at: float | None = None,
         start_by: float | None = None) -> TaskMessage:
    """A TaskMessage."""
    return TaskMessage("t", task_id, name, payload, timeout, queue, attempt, max_retries,
                       enqueued_at, start_by)


def give_back(task_ids: Iterable[int]) -> GiveBack:
    """A GiveBack message."""
    return GiveBack("b", list(task_ids))


def cancel(task_id: int) -> Cancel:
    """A Cancel message."""
    return Cancel("x", task_id)


def ready(pid: int) -> Ready:
    """A Ready message."""
    return Ready("ready", pid)


def result(task_id: int, ok: bool, text: str, started: float, finished: float, rss: int,
           timed_out: bool, retry: object = None) -> Result:
    """A Result message."""
    return Result("r", task_id, ok, text, started, finished, rss, timed_out, retry)


def skipped(task_id: int) -> Skipped:
    """A Skipped message."""
    return Skipped("s", task_id)


def started(task_ids: Iterable[int], when: float) -> Started:
    """A Started message."""
    return Started("g", list(task_ids), when)


def encode(messages: Iterable[Message]) -> bytes:
    """Lines for a sequence of messages, ready to send."""
    return b"".join(_dumps(m).encode() + b"\n" for m in messages)


class ProtocolError(ValueError):
    """A line that is not a known message."""


def _shape(raw: list[Any]) -> Message:
    try:
        return _SHAPES[raw[0]](*raw)
    except (KeyError, IndexError, TypeError):
        raise ProtocolError(f"not a LiteQ message: {str(raw)[:80]}") from None


class LineReader:
    """Collects received bytes and returns the complete messages they hold.

    Linear in what arrives: only the new bytes are searched for a line end, and
    a long line is kept as a list of parts until it is complete, so a message of
    many megabytes read 64 KiB at a time is joined once, not once per read.
    """

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes; returns the messages completed by them, in order."""
        end = data.rfind(b"\n")
        if end < 0:
            if data:
                self._parts.append(data)
            return []
        head = data[:end]
        if self._parts:
            self._parts.append(head)
            head = b"".join(self._parts)
            self._parts = []
        rest = data[end + 1:]
        if rest:
            self._parts.append(rest)
        # One JSON parse for the whole batch of lines.
        return [_shape(raw) for raw in json.loads(b"[" + head.replace(b"\n", b",") + b"]")]

    @property
    def pending_bytes(self) -> int:
        """How many bytes of an incomplete line are held."""
        return sum(len(p) for p in self._parts)
