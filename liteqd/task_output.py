"""What tasks write, as log events: a child's stdout, stderr and `logging` records.

Each worker child gets three pipes: its fds 1 and 2 (inherited by the subprocesses
its tasks start) and a third one that carries its `logging` records as JSON lines.
The supervisor reads them in its select loop, never blocking, and turns each line
into one event attributed to the task the child is running: `task.output` (stream
stdout or stderr) and `task.log` (at the record's own level). Raw task text never
reaches the daemon's stdout, so its JSON log stays parseable.

Bounds, so that one chatty task can neither grow the supervisor nor starve the rest:
- a line longer than MAX_LINE bytes is logged cut (its first MAX_LINE bytes, a
  marker, `cut: true`); the rest of it is discarded as it arrives, never held;
- each child has a budget of lines and bytes (a token bucket: a burst, then a
  steady rate); what is over it is read and discarded, and counted in a
  `task.output_dropped` event when the task ends (and every REPORT_EVERY_S while
  it goes on);
- per readiness of a pipe the supervisor reads at most READS_PER_TURN chunks, so
  its loop turns and the other children are served in between.

A child's writes wait while its pipe is full (64 KiB), as with any pipe; the
supervisor empties the pipes every loop turn and discards the excess, so a flooding
task is slowed to the supervisor's reading pace, never blocked for good.

Attribution in a child that runs many coroutines at once (--async-concurrency above
1): their lines interleave, so order cannot tell whose a line is. There the child
tags each line a task prints with TASK_TAG, its id and a NUL (sys.stdout and
sys.stderr are wrapped: a line is written whole when it ends, per task), and each
logging record carries the task's id; the supervisor strips the tag and credits the
line to that task. Output that bypasses Python's streams (a subprocess writing to
fd 1) is credited to the child's task only while it runs one, else to no task.

Attribution: when a task ends, before its result is sent, the child writes END_MARK
into each of its pipes. The n-th mark in a pipe ends the output of the task of the
child's n-th result, so every line goes to the task that wrote it, however the
supervisor's reads of the pipes and of the socket interleave. A mark is written in
one write of fewer than PIPE_BUF bytes and each read takes the whole pipe, so a mark
is never split between two reads.
"""

import json
import logging
import os
import sys
import time

from . import logs

MAX_LINE = 16 * 1024            # bytes of one line that are logged; the rest is cut
MAX_RECORD = 256 * 1024         # bytes of one encoded logging record (message + traceback)
READ_CHUNK = 1 << 20            # more than a pipe holds: a read takes all of it
READS_PER_TURN = 4
BURST_LINES, RATE_LINES = 10_000, 1_000          # per child: lines, then lines/s
BURST_BYTES, RATE_BYTES = 4 << 20, 1 << 20       # per child: bytes, then bytes/s
REPORT_EVERY_S = 10.0
END_MARK = b"\0\x1bliteq:task-end\0"
TASK_TAG = "\x1bliteq:task="      # then the task id and a NUL, at the start of a line
_TASK_TAG = TASK_TAG.encode()
CUT_MARKER = f" [... line cut at {MAX_LINE} bytes]"

STREAMS = ("stdout", "stderr", "log")


def _level_of(levelno):
    """The structlog level (a standard logging number) for a record's level."""
    for std in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= std:
            return std
    return logging.DEBUG


# ---- the child's side ------------------------------------------------------------------

_write_fds = ()


class RecordHandler(logging.Handler):
    """Ships each logging record to the supervisor as one JSON line on the records pipe."""

    def __init__(self, fd) -> None:
        super().__init__()
        self.fd = fd
        self.fmt = logging.Formatter()

    def emit(self, record) -> None:
        """Write the record (level, logger, message, exception text) in one line."""
        try:
            exc = self.fmt.formatException(record.exc_info) if record.exc_info else None
            if record.stack_info:
                exc = (exc + "\n" if exc else "") + record.stack_info
            fields = {"level": record.levelno, "logger": record.name,
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


def _reroute_logging(fd, level) -> None:
    root = logging.getLogger()
    configured = bool(root.handlers)
    for handler in list(root.handlers):
        # The app's console handlers would only repeat each record as stderr text.
        if isinstance(handler, logging.StreamHandler) and \
                getattr(handler, "stream", None) in (sys.stdout, sys.stderr,
                                                     sys.__stdout__, sys.__stderr__):
            root.removeHandler(handler)
    root.addHandler(RecordHandler(fd))
    if not configured:
        root.setLevel(level.upper())  # an app that set up no logging gets liteqd's level
    logging.captureWarnings(True)


class Pipes:
    """The three pipes of one child, made before the fork."""

    def __init__(self) -> None:
        self.read_fds, self.write_fds = [], []
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
            pass  # no stdout at all: the child's few events go nowhere, as before
        out, err, rec = self.write_fds
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        _write_fds = (1, 2, rec)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(line_buffering=True)  # lines leave as they are printed
            except (AttributeError, ValueError):
                pass
        _reroute_logging(rec, level)

    def in_parent(self, sup, child):
        """In the supervisor: keep the read ends and watch them; returns the Pump."""
        for fd in self.write_fds:
            os.close(fd)
        return Pump(sup, child, self.read_fds)


_tagging = False
_tagged_streams: list["_TaggedStream"] = []


def _current_task():
    from liteq import context
    return context._current.get()


class _TaggedStream:
    """sys.stdout or sys.stderr of a child that runs many coroutines: each line a task
    writes goes out whole, when it ends, tagged with the task's id (TASK_TAG)."""

    def __init__(self, inner):
        self._inner = inner
        self._partial: dict = {}   # task id -> the start of a line not yet ended

    def write(self, text):
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
        self._inner.write("".join(f"{TASK_TAG}{tid}\0{line}\n" for line in lines))
        return len(text)

    def end_task(self, tid):
        """The task is over: its last line, if it did not end it, goes out now."""
        rest = self._partial.pop(tid, None)
        if rest:
            self._inner.write(f"{TASK_TAG}{tid}\0{rest}\n")
        try:
            self._inner.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._inner, name)


def tag_by_task():
    """In a child that runs many coroutines at once: tag what each task prints and
    logs with its id (see the module's docstring)."""
    global _tagging
    _tagging = True
    for name in ("stdout", "stderr"):
        stream = _TaggedStream(getattr(sys, name))
        _tagged_streams.append(stream)
        setattr(sys, name, stream)


def end_task(tid):
    """The task `tid` is over (a child that tags by task): flush its last line."""
    for stream in _tagged_streams:
        stream.end_task(tid)


def mark_end():
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


# ---- the supervisor's side ----------------------------------------------------------------

class _Budget:
    """A token bucket of lines and bytes."""

    def __init__(self) -> None:
        self.lines, self.bytes = float(BURST_LINES), float(BURST_BYTES)
        self.at = time.monotonic()

    def exhausted(self) -> bool:
        """True when not even one more line fits now."""
        if self.lines >= 1 and self.bytes >= 1:
            return False
        return not self.take(1, spend=False)

    def take(self, nbytes, spend: bool = True) -> bool:
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

    def __init__(self, name, fd) -> None:
        self.name, self.fd = name, fd
        self.limit = MAX_RECORD if name == "log" else MAX_LINE
        self.held = bytearray()   # the start of a line not yet ended (at most `limit`)
        self.skipping = False     # discarding the rest of a line that was cut or dropped
        self.marks = 0            # END_MARKs read: the output of that many tasks is over


class Pump:
    """Reads one child's output pipes and logs each line, within the child's budget."""

    def __init__(self, sup, child, read_fds) -> None:
        self.sup, self.child, self.log = sup, child, sup.log
        self.streams = {}
        for name, fd in zip(STREAMS, read_fds):
            os.set_blocking(fd, False)
            self.streams[fd] = _Stream(name, fd)
            sup.register_fd(fd, self.on_readable)
        self.budget = _Budget()
        self.results = 0          # results of the child's tasks handled so far
        self.finished = {}        # result number -> (task_id, name), the last few
        self.counted = None       # (task_id, name) the drop counts below belong to
        self.names = {}           # task id -> name, of the recent tasks (a tagging child)
        self.dropped_lines = self.dropped_bytes = self.cut_lines = 0
        self.reported_at = time.monotonic()

    # -- reading --

    def on_readable(self, fd, mask) -> None:
        """A pipe has data (from the select loop)."""
        stream = self.streams.get(fd)
        if stream is not None:
            self._read(stream, READS_PER_TURN)

    def _read(self, stream, reads) -> None:
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

    def _feed(self, stream, data) -> None:
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

    def _end_of_task(self, stream) -> None:
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

    def _feed_lines(self, stream, data) -> None:
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

    def _drop_rest(self, stream, data, pos) -> None:
        """Discard data[pos:] without looking at its lines one by one (over the budget: a
        flood must cost the supervisor little). Each line is counted once: those that
        end here, and the one left open (whose end is then skipped)."""
        ends = data.count(b"\n", pos)
        lines = ends
        if stream.skipping and ends:
            lines -= 1             # that line was logged cut, or counted, already
        tail_open = not data.endswith(b"\n")
        if tail_open and not (stream.skipping and not ends):
            lines += 1
        self._count_dropped(stream, lines, len(data) - pos + len(stream.held))
        stream.held.clear()
        stream.skipping = tail_open

    def _hold(self, stream, data, pos) -> None:
        if stream.skipping:
            return
        room = stream.limit - len(stream.held)
        stream.held += data[pos:pos + room]
        if len(data) - pos > room:
            # Logged now, cut: a line without end is never held beyond MAX_LINE.
            self._emit(stream, bytes(stream.held), cut=True)
            stream.held.clear()
            stream.skipping = True

    def _line_end(self, stream, data, pos, nl) -> None:
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

    def _owner(self, stream):
        """(task_id, name) of the task whose output the stream carries now, or None."""
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

    def _attribute(self, stream):
        """The owner of the stream's output, with the drop counts of another reported."""
        owner = self._owner(stream)
        if owner != self.counted:
            self.report_dropped()
            self.counted = owner
        return owner

    def _count_dropped(self, stream, lines, nbytes) -> None:
        self._attribute(stream)
        self.dropped_lines += lines
        self.dropped_bytes += nbytes
        if time.monotonic() - self.reported_at >= REPORT_EVERY_S:
            self.report_dropped()

    def _untag(self, raw):
        """(raw without its task tag, (task_id, name)) of a tagged line, else (raw, None)."""
        if not raw.startswith(_TASK_TAG):
            return raw, None
        end = raw.find(b"\0", len(_TASK_TAG))
        try:
            tid = int(raw[len(_TASK_TAG):end])
        except ValueError:
            return raw, None
        name = self.names.get(tid)
        if name is None:
            for run in self.child.inflight:
                if run.id == tid:
                    name = run.name
                    break
        return raw[end + 1:], (tid, name)

    def _emit(self, stream, raw, cut):
        tagged = None
        if self.child.pool.async_slots > 1:
            raw, tagged = self._untag(raw)
        owner = tagged or self._attribute(stream)
        if not self.budget.take(len(raw)):
            self._count_dropped(stream, 1, len(raw))
            return
        if cut:
            self.cut_lines += 1
        text = raw.decode("utf-8", "replace").rstrip("\r")
        who = {"task_id": owner[0], "name": owner[1]} if owner else {}
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

    def _emit_record(self, text, who) -> None:
        try:
            rec = json.loads(text)
            level, logger, message = int(rec["level"]), str(rec["logger"]), rec["message"]
        except (ValueError, KeyError, TypeError):
            self.log.warning("task.log", logger=None, message=text, pid=self.child.pid, **who)
            return
        extra = {"exception": rec["exception"]} if rec.get("exception") else {}
        if rec.get("task_id") is not None:
            who = {"task_id": rec["task_id"], "name": rec.get("task_name")}
        self.log.log(_level_of(level), "task.log", logger=logger, message=message,
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

    def task_done(self, run=None):
        """The child's running task (or `run`, in a child of many coroutines) sent its
        result (called before it leaves inflight): output still unread up to its
        END_MARK, or tagged with its id, stays attributed to it."""
        if run is not None:
            self.names[run.id] = run.name
            if len(self.names) > 4096:
                for old in list(self.names)[:2048]:
                    del self.names[old]
            return
        run = self.child.running
        self.finished[self.results] = (run.id, run.name) if run is not None else None
        self.finished.pop(self.results - 16, None)
        self.results += 1

    def close(self) -> None:
        """The child exited: log what is left and stop watching its pipes."""
        self.drain()
        self._flush_held()
        self.report_dropped()
        for stream in list(self.streams.values()):
            self._close_stream(stream)

    def _close_stream(self, stream) -> None:
        if self.streams.pop(stream.fd, None) is None:
            return
        if stream.held:
            self._emit(stream, bytes(stream.held), cut=False)
        self.sup.unregister_fd(stream.fd)
        try:
            os.close(stream.fd)
        except OSError:
            pass
