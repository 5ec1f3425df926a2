"""What tasks write, as log events: the worker child's side of its output pipes.

Each worker child gets three pipes: its fds 1 and 2 (inherited by the subprocesses
its tasks start) and a third one that carries its `logging` records as JSON lines.
The supervisor reads them (liteqd.output_pump) and logs each line as an event of
the task that wrote it.

When a task ends, before its result is sent, the child writes END_MARK into each
of its pipes (mark_end): the n-th mark in a pipe ends the output of the child's
n-th result.

In a child that runs many coroutines at once (--async-concurrency above 1) the
tasks' lines interleave, so order cannot tell whose a line is. There sys.stdout and
sys.stderr are wrapped so that each line a task prints goes out whole, when it
ends, tagged with the task's id (output_wire.TASK_TAG), and each logging record
carries the task's id.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TextIO

from liteq import context

from . import logs
from .loop_host import FdHost
from .output_pump import ChildView, Pump
from .output_wire import CUT_MARKER, END_MARK, MAX_LINE, STREAMS, TASK_TAG, tag_line

__all__ = ["CUT_MARKER", "END_MARK", "MAX_LINE", "TASK_TAG", "Pipes", "Pump", "RecordHandler",
           "end_task", "mark_end", "tag_by_task"]

_write_fds: tuple[int, ...] = ()
_tagging = False


def _current_task() -> context.TaskContext | None:
    # Read per line printed: the context variable itself, not current_task's lookups.
    return context._current.get()  # pyright: ignore[reportPrivateUsage]


class RecordHandler(logging.Handler):
    """Ships each logging record to the supervisor as one JSON line on the records pipe."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.fmt = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record (level, logger, message, exception text) in one line."""
        try:
            exc = self.fmt.formatException(record.exc_info) if record.exc_info else None
            if record.stack_info:
                exc = (exc + "\n" if exc else "") + record.stack_info
            fields: dict[str, object] = {"level": record.levelno, "logger": record.name,
                                         "message": record.getMessage()[:MAX_LINE]}
            if _tagging:
                ctx = _current_task()
                if ctx is not None:
                    fields["task_id"], fields["task_name"] = ctx.id, ctx.name
            if exc:
                fields["exception"] = exc[-MAX_LINE:]  # the end names the error
            data = json.dumps(fields, ensure_ascii=False).encode("utf-8", "replace") + b"\n"
            while data:
                data = data[os.write(self.fd, data):]
        except Exception:  # noqa: BLE001 - logging must never break the task
            self.handleError(record)


def _is_console(handler: logging.Handler) -> bool:
    """Whether the handler writes to the process's stdout or stderr."""
    stream: object = getattr(handler, "stream", None)
    return isinstance(handler, logging.StreamHandler) and \
        stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


def _reroute_logging(fd: int, level: str) -> None:
    root = logging.getLogger()
    configured = bool(root.handlers)
    for handler in list(root.handlers):
        # The app's console handlers would only repeat each record as stderr text.
        if _is_console(handler):
            root.removeHandler(handler)
    root.addHandler(RecordHandler(fd))
    if not configured:
        root.setLevel(level.upper())  # an app that set up no logging gets liteqd's level
    logging.captureWarnings(True)


class Pipes:
    """The three pipes of one child, made before the fork."""

    def __init__(self) -> None:
        self.read_fds: list[int] = []
        self.write_fds: list[int] = []
        for _ in STREAMS:
            r, w = os.pipe()
            self.read_fds.append(r)
            self.write_fds.append(w)

    def in_child(self, level: str = "info") -> None:
        """In the forked child: fds 1 and 2 become the pipes, logging goes to the third;
        the child's own log events keep going to the daemon's stdout."""
        global _write_fds
        for fd in self.read_fds:
            os.close(fd)
        try:
            logs.set_stream(os.fdopen(os.dup(1), "w", closefd=True))
        except OSError:
            pass  # no stdout at all: the child's few events go nowhere
        out, err, rec = self.write_fds
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        _write_fds = (1, 2, rec)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            except (AttributeError, ValueError):
                pass  # replaced by something that is not a text file: leave it as it is
        _reroute_logging(rec, level)

    def in_parent(self, sup: FdHost, child: ChildView) -> Pump:
        """In the supervisor: keep the read ends and watch them; returns the Pump."""
        for fd in self.write_fds:
            os.close(fd)
        return Pump(sup, child, self.read_fds)


class _TaggedStream:
    """sys.stdout or sys.stderr of a child that runs many coroutines: each line a task
    writes goes out whole, when it ends, tagged with the task's id."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self._partial: dict[int, str] = {}   # task id -> the start of a line not yet ended

    def write(self, text: str) -> int:
        """Write text; a task's lines go out tagged, each in one piece."""
        ctx = _current_task()
        if ctx is None:
            return self._inner.write(text)
        tid = ctx.id
        buf = self._partial.pop(tid, "") + text
        if "\n" not in buf:
            self._partial[tid] = buf
            return len(text)
        *lines, rest = buf.split("\n")
        if rest:
            self._partial[tid] = rest
        self._inner.write("".join(tag_line(tid, line) for line in lines))
        return len(text)

    def end_task(self, tid: int) -> None:
        """The task is over: its last line, if it did not end it, goes out now."""
        rest = self._partial.pop(tid, None)
        if rest:
            self._inner.write(tag_line(tid, rest))
        try:
            self._inner.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


_tagged_streams: list[_TaggedStream] = []


def tag_by_task() -> None:
    """In a child that runs many coroutines at once: tag what each task prints and
    logs with its id (see the module's docstring)."""
    global _tagging
    _tagging = True
    for name in ("stdout", "stderr"):
        stream = _TaggedStream(getattr(sys, name))
        _tagged_streams.append(stream)
        setattr(sys, name, stream)


def end_task(tid: int) -> None:
    """The task `tid` is over (a child that tags by task): flush its last line."""
    for stream in _tagged_streams:
        stream.end_task(tid)


def mark_end() -> None:
    """Mark the end of a task's output in each pipe (before its result is sent)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    for fd in _write_fds:
        try:
            os.write(fd, END_MARK)
        except OSError:
            pass  # the supervisor is gone; the child finds out on its socket
