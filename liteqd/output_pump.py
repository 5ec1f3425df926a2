"""The supervisor's side of a worker child's output: its three pipes read in the
select loop, never blocking, each line logged as one event attributed to the task
that wrote it: `task.output` (stream stdout or stderr) and `task.log` (a `logging`
record, at its own level). Raw task text never reaches the daemon's stdout, so its
JSON log stays parseable.

Bounds, so that one chatty task can neither grow the supervisor nor starve the rest:
- a line longer than MAX_LINE bytes is logged cut (its first MAX_LINE bytes, a
  marker, `cut: true`); the rest of it is discarded as it arrives, never held;
- each child has a budget of lines and bytes (a token bucket: a burst, then a
  steady rate); what is over it is read and discarded, and counted in a
  `task.output_dropped` event when the task ends (and every REPORT_EVERY_S while
  it goes on);
- per readiness of a pipe at most READS_PER_TURN chunks are read, so the loop
  turns and the other children are served in between.

A child's writes wait while its pipe is full (64 KiB), as with any pipe; the
pipes are emptied every loop turn and the excess discarded, so a flooding task is
slowed to the supervisor's reading pace, never blocked for good.

Attribution: the n-th END_MARK in a pipe ends the output of the task of the
child's n-th result, so every line goes to the task that wrote it, however the
reads of the pipes and of the socket interleave. In a child of many coroutines a
tagged line goes to the task its tag names; untagged output (a subprocess writing
to fd 1) to the child's task only while it runs just one, else to no task.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from .loop_host import FdHost
from .output_wire import (CUT_MARKER, END_MARK, MAX_LINE, MAX_RECORD, STREAMS, dropped_lines,
                          level_of, untag)

READ_CHUNK = 1 << 20            # more than a pipe holds: a read takes all of it
READS_PER_TURN = 4
BURST_LINES, RATE_LINES = 10_000, 1_000          # per child: lines, then lines/s
BURST_BYTES, RATE_BYTES = 4 << 20, 1 << 20       # per child: bytes, then bytes/s
REPORT_EVERY_S = 10.0

#: (task_id, name) of the task some output belongs to.
Owner = tuple[int, str]


class TaskRunView(Protocol):
    """What the pump reads of a task a child holds."""

    @property
    def id(self) -> int: ...

    @property
    def name(self) -> str: ...


class PoolView(Protocol):
    """What the pump reads of a child's pool."""

    @property
    def async_slots(self) -> int: ...


class ChildView(Protocol):
    """What the pump reads of the child whose pipes it reads."""

    @property
    def pid(self) -> int: ...

    @property
    def pool(self) -> PoolView: ...

    @property
    def inflight(self) -> Sequence[TaskRunView]: ...

    @property
    def running(self) -> TaskRunView | None: ...

    def started_runs(self) -> Sequence[TaskRunView]:
        """The tasks the child has started and not finished."""
        ...


class Budget:
    """A token bucket of lines and bytes."""

    def __init__(self) -> None:
        self.lines, self.bytes = float(BURST_LINES), float(BURST_BYTES)
        self.at = time.monotonic()

    def exhausted(self) -> bool:
        """True when not even one more line fits now."""
        if self.lines >= 1 and self.bytes >= 1:
            return False
        return not self.take(1, spend=False)

    def take(self, nbytes: int, spend: bool = True) -> bool:
        """Spend one line of nbytes; False (nothing spent) when over the budget."""
        if self.lines < 1 or self.bytes < nbytes:
            now = time.monotonic()
            elapsed, self.at = now - self.at, now
            self.lines = min(BURST_LINES, self.lines + elapsed * RATE_LINES)
            self.bytes = min(BURST_BYTES, self.bytes + elapsed * RATE_BYTES)
            if self.lines < 1 or self.bytes < nbytes:
                return False
        if spend:
            self.lines -= 1
            self.bytes -= nbytes
        return True


class _Stream:
    __slots__ = ("name", "fd", "limit", "held", "skipping", "marks")

    def __init__(self, name: str, fd: int) -> None:
        self.name, self.fd = name, fd
        self.limit = MAX_RECORD if name == "log" else MAX_LINE
        self.held = bytearray()   # the start of a line not yet ended (at most `limit`)
        self.skipping = False     # discarding the rest of a line that was cut or dropped
        self.marks = 0            # END_MARKs read: the output of that many tasks is over


class Pump:
    """Reads one child's output pipes and logs each line, within the child's budget."""

    def __init__(self, sup: FdHost, child: ChildView, read_fds: Iterable[int]) -> None:
        self.sup, self.child = sup, child
        self.log: FilteringBoundLogger = sup.log
        self.streams: dict[int, _Stream] = {}
        for name, fd in zip(STREAMS, read_fds):
            os.set_blocking(fd, False)
            self.streams[fd] = _Stream(name, fd)
            sup.register_fd(fd, self.on_readable)
        self.budget = Budget()
        self.results = 0          # results of the child's tasks handled so far
        self.finished: dict[int, Owner | None] = {}  # result number -> owner, the last few
        self.counted: Owner | None = None  # the task the drop counts below belong to
        self.names: dict[int, str] = {}    # task id -> name, of recent tasks (tagging child)
        self.dropped_lines = self.dropped_bytes = self.cut_lines = 0
        self.reported_at = time.monotonic()

    # -- reading --

    def on_readable(self, fd: int, mask: int) -> None:
        """A pipe has data (from the select loop)."""
        stream = self.streams.get(fd)
        if stream is not None:
            self._read(stream, READS_PER_TURN)

    def _read(self, stream: _Stream, reads: int) -> None:
        for _ in range(reads):
            try:
                data = os.read(stream.fd, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._close_stream(stream)
                return
            self._feed(stream, data)

    def _feed(self, stream: _Stream, data: bytes) -> None:
        start = 0
        while True:
            mark = data.find(END_MARK, start)
            if mark < 0:
                self._feed_lines(stream, data[start:] if start else data)
                return
            if mark > start:
                self._feed_lines(stream, data[start:mark])
            self._end_of_task(stream)
            start = mark + len(END_MARK)

    def _end_of_task(self, stream: _Stream) -> None:
        """An END_MARK: what this pipe held of the task is over (a last line without
        its newline is logged now); what follows is the next task's."""
        if stream.held:
            self._emit(stream, bytes(stream.held), cut=False)
            stream.held.clear()
        stream.skipping = False
        owner = self._owner(stream)
        stream.marks += 1
        if self.counted == owner and owner is not None:
            self.report_dropped()
            self.counted = None

    def _feed_lines(self, stream: _Stream, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self.budget.exhausted():
                self._drop_rest(stream, data, pos)
                return
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._hold(stream, data, pos)
                return
            self._line_end(stream, data, pos, nl)
            pos = nl + 1

    def _drop_rest(self, stream: _Stream, data: bytes, pos: int) -> None:
        """Discard data[pos:] without looking at its lines one by one (over the budget: a
        flood must cost the supervisor little)."""
        lines, tail_open = dropped_lines(data, pos, stream.skipping)
        self._count_dropped(stream, lines, len(data) - pos + len(stream.held))
        stream.held.clear()
        stream.skipping = tail_open

    def _hold(self, stream: _Stream, data: bytes, pos: int) -> None:
        if stream.skipping:
            return
        room = stream.limit - len(stream.held)
        stream.held += data[pos:pos + room]
        if len(data) - pos > room:
            # Logged now, cut: a line without end is never held beyond its limit.
            self._emit(stream, bytes(stream.held), cut=True)
            stream.held.clear()
            stream.skipping = True

    def _line_end(self, stream: _Stream, data: bytes, pos: int, nl: int) -> None:
        if stream.skipping:
            stream.skipping = False
            return
        length = len(stream.held) + nl - pos
        line = bytes(stream.held) + data[pos:min(nl, pos + stream.limit - len(stream.held))]
        stream.held.clear()
        self._emit(stream, line, cut=length > stream.limit)

    def drain(self) -> None:
        """Read whatever the pipes hold now (bounded), for the task the child runs."""
        for stream in list(self.streams.values()):
            self._read(stream, READS_PER_TURN)

    def _flush_held(self) -> None:
        for stream in self.streams.values():
            if stream.held:
                self._emit(stream, bytes(stream.held), cut=False)
                stream.held.clear()

    # -- logging --

    def _owner(self, stream: _Stream) -> Owner | None:
        """The task whose output the stream carries now, or None."""
        if self.child.pool.async_slots > 1:
            # A tagging child (many coroutines): untagged output is its task's only
            # while it runs just one.
            started = self.child.started_runs()
            return (started[0].id, started[0].name) if len(started) == 1 else None
        ahead = stream.marks - self.results
        if ahead < 0:   # its result was handled before this pipe was read to the mark
            return self.finished.get(stream.marks)
        inflight = self.child.inflight
        if ahead < len(inflight):
            run = inflight[ahead]
            return run.id, run.name
        return None

    def _attribute(self, stream: _Stream) -> Owner | None:
        """The owner of the stream's output, with the drop counts of another reported."""
        owner = self._owner(stream)
        if owner != self.counted:
            self.report_dropped()
            self.counted = owner
        return owner

    def _count_dropped(self, stream: _Stream, lines: int, nbytes: int) -> None:
        self._attribute(stream)
        self.dropped_lines += lines
        self.dropped_bytes += nbytes
        if time.monotonic() - self.reported_at >= REPORT_EVERY_S:
            self.report_dropped()

    def _name_of(self, task_id: int) -> str | None:
        name = self.names.get(task_id)
        if name is None:
            for run in self.child.inflight:
                if run.id == task_id:
                    return run.name
        return name

    def _emit(self, stream: _Stream, raw: bytes, cut: bool) -> None:
        tagged: tuple[int, str | None] | None = None
        if self.child.pool.async_slots > 1:
            raw, task_id = untag(raw)
            if task_id is not None:
                tagged = (task_id, self._name_of(task_id))
        owner = tagged or self._attribute(stream)
        if not self.budget.take(len(raw)):
            self._count_dropped(stream, 1, len(raw))
            return
        if cut:
            self.cut_lines += 1
        text = raw.decode("utf-8", "replace").rstrip("\r")
        who: dict[str, object] = {"task_id": owner[0], "name": owner[1]} if owner else {}
        if stream.name == "log":
            self._emit_record(text, who)
            return
        event = "task.output" if owner else "child.output"
        extra = {"cut": True} if cut else {}
        if cut:
            text += CUT_MARKER
        level = logging.INFO if stream.name == "stdout" else logging.WARNING
        self.log.log(level, event, stream=stream.name, text=text, pid=self.child.pid,
                     **who, **extra)

    def _emit_record(self, text: str, who: dict[str, object]) -> None:
        try:
            rec = json.loads(text)
            level, logger, message = int(rec["level"]), str(rec["logger"]), rec["message"]
        except (ValueError, KeyError, TypeError):
            self.log.warning("task.log", logger=None, message=text, pid=self.child.pid, **who)
            return
        extra = {"exception": rec["exception"]} if rec.get("exception") else {}
        if rec.get("task_id") is not None:
            who = {"task_id": rec["task_id"], "name": rec.get("task_name")}
        self.log.log(level_of(level), "task.log", logger=logger, message=message,
                     pid=self.child.pid, record_level=logging.getLevelName(level),
                     **who, **extra)

    def report_dropped(self) -> None:
        """Log what was over the budget or cut since the last report (if anything)."""
        self.reported_at = time.monotonic()
        if not (self.dropped_lines or self.cut_lines):
            return
        who = {"task_id": self.counted[0], "name": self.counted[1]} if self.counted else {}
        self.log.warning("task.output_dropped", pid=self.child.pid,
                         dropped_lines=self.dropped_lines, dropped_bytes=self.dropped_bytes,
                         cut_lines=self.cut_lines, **who)
        self.dropped_lines = self.dropped_bytes = self.cut_lines = 0

    # -- task ends, child ends --

    def task_done(self, run: TaskRunView | None = None) -> None:
        """The child's running task (or `run`, in a child of many coroutines) sent its
        result (called before it leaves inflight): output still unread up to its
        END_MARK, or tagged with its id, stays attributed to it."""
        if run is not None:
            self.names[run.id] = run.name
            if len(self.names) > 4096:
                for old in list(self.names)[:2048]:
                    del self.names[old]
            return
        running = self.child.running
        self.finished[self.results] = (running.id, running.name) if running is not None \
            else None
        self.finished.pop(self.results - 16, None)
        self.results += 1

    def close(self) -> None:
        """The child exited: log what is left and stop watching its pipes."""
        self.drain()
        self._flush_held()
        self.report_dropped()
        for stream in list(self.streams.values()):
            self._close_stream(stream)

    def _close_stream(self, stream: _Stream) -> None:
        if self.streams.pop(stream.fd, None) is None:
            return
        if stream.held:
            self._emit(stream, bytes(stream.held), cut=False)
        self.sup.unregister_fd(stream.fd)
        try:
            os.close(stream.fd)
        except OSError:
            pass
