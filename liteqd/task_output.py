"""What tasks write becomes log events: a child's stdout and stderr are pipes that the
supervisor reads, never the daemon's own stdout.

Without this, a task's print() went straight to the daemon's stdout and could land in
the middle of one of its JSON records, which broke `journalctl -o cat | jq .`.

Child side (install_in_child): fds 1 and 2 become the write ends of two pipes, and
`logging` records go to the stderr pipe as framed lines carrying their level and task.
Supervisor side (ChildOutput): each pipe is read in the select loop, split into lines,
and each line is logged as `task.output` (or `child.output` when no task is running),
`logging` records as `task.log` at their own level.

Attribution: a line belongs to the task the supervisor believes the child runs when it
reads the line, after first taking every message already on the child's socket. Output
still unread when a task ends would then be credited to the next one, so the child
writes an end marker for the task (only when the pipe still holds unread bytes, which
costs nothing for tasks that print nothing).

Bounds, so that a chatty task cannot hurt the daemon or the other children: one read
of at most READ_SIZE bytes per pipe per loop turn; a line is cut at LINE_LIMIT bytes
with a marker; past a burst of BURST_LINES lines or BURST_BYTES bytes, refilled at
RATE_LINES and RATE_BYTES a second, a child's output is read and dropped, and what was
dropped is counted in `task.output_dropped` events (at most one a second).
"""

import array
import fcntl
import json
import logging
import os
import sys
import termios
import time

LINE_LIMIT = 16 * 1024
READ_SIZE = 64 * 1024
# A token bucket per child: bursts of this many lines and bytes, refilled at RATE a second.
BURST_LINES, RATE_LINES = 20_000, 5_000
BURST_BYTES, RATE_BYTES = 4 << 20, 1 << 20
CUT_MARK = " [cut: the line was longer than 16 KiB]"

_END = b"\x00liteq-end "     # + task id, space, name + b"\x00": the task's output ends here
_RECORD = b"\x00liteq-log "  # + one JSON object + b"\n": a logging record
STREAMS = ("stdout", "stderr")

# ---- the child's side ----------------------------------------------------------------


class _PipeHandler(logging.Handler):
    """Writes each logging record to the stderr pipe as one framed line."""

    def __init__(self, fd, current_task):
        super().__init__(logging.NOTSET)
        self.fd = fd
        self.current_task = current_task

    def emit(self, record):
        try:
            fields = {"level": record.levelname.lower(), "logger": record.name,
                      "message": record.getMessage()}
            if record.exc_info:
                fields["traceback"] = logging.Formatter().formatException(record.exc_info)
            task_id = self.current_task()
            if task_id is not None:
                fields["task_id"] = task_id
            data = _RECORD + json.dumps(fields, default=repr).encode("utf-8", "replace") + b"\n"
            sys.stderr.flush()  # keep the order of what the task printed before
            while data:
                data = data[os.write(self.fd, data):]
        except Exception:  # noqa: BLE001 - logging must never break the task
            self.handleError(record)


def make_pipes():
    """Two pipes (read end, write end) for a child's stdout and stderr, made before fork."""
    return [os.pipe() for _ in STREAMS]


def install_in_child(pipes, current_task):
    """In a forked child: point fds 1 and 2 at the pipes and send `logging` there.

    Returns a file object on the daemon's original stdout, for the child's own log
    events (child.orphaned, hook.failed), which must still reach the journal when the
    supervisor that reads the pipes is gone.
    """
    saved = os.dup(1)
    for target, (r, w) in zip((1, 2), pipes):
        os.close(r)
        os.dup2(w, target)
        os.close(w)
    sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", errors="replace",
                           closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                           closefd=False)
    root = logging.getLogger()
    if not root.handlers and root.level == logging.WARNING:
        # The app did not set up logging: show its info records, as Celery's worker does.
        root.setLevel(logging.INFO)
    root.addHandler(_PipeHandler(2, current_task))
    return os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace")


_FIONREAD = array.array("i", [0])


def _unread(fd):
    try:
        fcntl.ioctl(fd, termios.FIONREAD, _FIONREAD)
    except OSError:
        return 0
    return _FIONREAD[0]


def end_task(task_id, name):
    """After a task, before its result is sent: flush Python's buffers, and mark the
    end of the task's output in each pipe that still holds unread bytes."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    for fd in (1, 2):
        if _unread(fd):
            try:
                os.write(fd, b"%s%d %s\x00" % (_END, task_id, name.encode("utf-8", "replace")))
            except OSError:
                pass


# ---- the supervisor's side -----------------------------------------------------------


class _Pipe:
    """The read end of one of a child's pipes, with its unfinished line."""
    __slots__ = ("fd", "stream", "buf", "cutting")

    def __init__(self, fd, stream):
        self.fd = fd
        self.stream = stream
        self.buf = b""
        self.cutting = False  # the rest of an over-long line is being dropped


class ChildOutput:
    """Reads one child's stdout and stderr pipes and logs what they carry."""

    def __init__(self, log, child, fds):
        """child: its ChildHandle (`running` is the task it runs now); fds: the read
        ends of its stdout and stderr pipes."""
        self.log = log
        self.child = child
        self.pipes = [_Pipe(fd, stream) for fd, stream in zip(fds, STREAMS)]
        for fd in fds:
            os.set_blocking(fd, False)
        self.refilled = time.monotonic()
        self.lines, self.bytes = BURST_LINES, BURST_BYTES   # tokens left
        self.reported = self.refilled
        self.dropped_lines = self.dropped_bytes = 0
        self.dropped_task = None

    def read(self, pipe) -> bool:
        """One read of a pipe (from the select loop); False at end of file."""
        try:
            data = os.read(pipe.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            self._finish(pipe)
            return False
        self._feed(pipe, data)
        return True

    def drain(self, limit=16 * READ_SIZE):
        """Read what the pipes hold now, up to a bound in bytes per pipe."""
        for pipe in self.pipes:
            got = 0
            while got < limit and pipe.fd >= 0 and _unread(pipe.fd) > 0:
                if not self.read(pipe):
                    break
                got += READ_SIZE

    def task_ended(self, run):
        """The child reported `run` finished: an unfinished line it left is its last.

        When the pipe is empty now, everything the child wrote before its result has
        been read, so what waits for a newline here is that task's. Otherwise the child
        may have written an end marker after its last bytes, which settles it.
        """
        for pipe in self.pipes:
            if pipe.buf and not pipe.buf.startswith(_END) and not _unread(pipe.fd):
                buf, pipe.buf = pipe.buf, b""
                self._lines(pipe, buf, run, final=True)

    def close(self):
        """Log what is left, report drops, and close the pipes."""
        for pipe in self.pipes:
            self._finish(pipe)
        self.report_dropped()

    # ---- parsing ----

    def _feed(self, pipe, data):
        self._refill()
        if self.lines <= 0 or self.bytes <= 0:
            if _END not in data and not pipe.buf:
                # Over the budget: drop the chunk without splitting it into lines.
                cut = data.rfind(b"\n") + 1
                self.dropped_lines += data.count(b"\n", 0, cut)
                self.dropped_bytes += cut
                if self.dropped_task is None:
                    self.dropped_task = self.child.running
                data = data[cut:]
                if not data:
                    return
        buf = pipe.buf + data if pipe.buf else data
        while True:
            end = buf.find(_END)
            if end == -1:
                break
            stop = buf.find(b"\x00", end + len(_END))
            if stop == -1:
                pipe.buf = buf  # the marker's end is still in the pipe
                return
            # Everything before an end marker is the output of the task it names.
            self._lines(pipe, buf[:end], _Ended.parse(buf[end + len(_END):stop]), final=True)
            buf = buf[stop + 1:]
        pipe.buf = self._lines(pipe, buf, None, final=False)

    def _lines(self, pipe, buf, task_id, final):
        """Log the lines of buf; returns the unfinished last line (b"" when final)."""
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl == -1:
                break
            self._line(pipe, buf[start:nl], task_id)
            pipe.cutting = False
            start = nl + 1
        tail = buf[start:]
        if final:
            if tail:
                self._line(pipe, tail, task_id)
            pipe.cutting = False
            return b""
        if len(tail) > LINE_LIMIT:
            if not pipe.cutting:
                self._line(pipe, tail[:LINE_LIMIT], task_id, cut=True)
            pipe.cutting = True
            return tail[-len(_END):]  # may be the start of an end marker
        return tail

    def _line(self, pipe, raw, ended, cut=False):
        if pipe.cutting:
            return  # the tail of a line already cut
        run = ended or self.child.running
        if not self._spend(len(raw), run):
            return
        if raw.startswith(_RECORD):
            self._record(raw[len(_RECORD):], run)
            return
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self._emit(pipe.stream, text + CUT_MARK if cut else text, run)

    def _emit(self, stream, text, run):
        if run is None:
            self.log.info("child.output", pid=self.child.pid, stream=stream, line=text)
        else:
            self.log.info("task.output", task_id=run.id, name=run.name, pid=self.child.pid,
                          stream=stream, line=text)

    def _record(self, raw, run):
        try:
            fields = json.loads(raw)
            level = logging.getLevelName(str(fields.get("level", "info")).upper())
        except (ValueError, AttributeError):
            self._emit("stderr", raw.decode("utf-8", "replace"), run)
            return
        if not isinstance(level, int):
            level = logging.INFO
        task_id = fields.get("task_id")
        extra = {"traceback": fields["traceback"]} if "traceback" in fields else {}
        self.log.log(level, "task.log", task_id=task_id,
                     name=run.name if run is not None and run.id == task_id else None,
                     pid=self.child.pid,
                     logger=fields.get("logger"), message=str(fields.get("message", "")),
                     **extra)

    def _refill(self):
        now = time.monotonic()
        elapsed = now - self.refilled
        if elapsed < 0.01:
            return
        self.refilled = now
        self.lines = min(BURST_LINES, self.lines + elapsed * RATE_LINES)
        self.bytes = min(BURST_BYTES, self.bytes + elapsed * RATE_BYTES)
        if self.dropped_lines and now - self.reported >= 1.0:
            self.report_dropped()

    def _spend(self, size, run) -> bool:
        if self.lines > 0 and self.bytes > 0:
            self.lines -= 1
            self.bytes -= size
            return True
        self.dropped_lines += 1
        self.dropped_bytes += size
        if self.dropped_task is None:
            self.dropped_task = run
        return False

    def report_dropped(self):
        """Log how much output was dropped over the budget since the last report."""
        if not self.dropped_lines:
            return
        run = self.dropped_task
        self.log.warning("task.output_dropped", task_id=run.id if run else None,
                         name=run.name if run else None, pid=self.child.pid,
                         lines=self.dropped_lines, bytes=self.dropped_bytes,
                         budget=f"bursts of {BURST_LINES} lines or {BURST_BYTES} bytes, "
                                f"then {RATE_LINES} lines or {RATE_BYTES} bytes a second")
        self.reported = time.monotonic()
        self.dropped_lines = self.dropped_bytes = 0
        self.dropped_task = None

    def _finish(self, pipe):
        if pipe.fd < 0:
            return
        if pipe.buf and not pipe.buf.startswith(_END):
            self._feed(pipe, b"\n")
        pipe.buf = b""
        try:
            os.close(pipe.fd)
        except OSError:
            pass
        pipe.fd = -1


class _Ended:
    """The task an end marker names (its output may be read after the child moved on)."""
    __slots__ = ("id", "name")

    def __init__(self, task_id, name):
        self.id = task_id
        self.name = name

    @classmethod
    def parse(cls, raw):
        """From the marker's b"ID NAME"; None when it is not one."""
        task_id, _, name = raw.partition(b" ")
        try:
            return cls(int(task_id), name.decode("utf-8", "replace"))
        except ValueError:
            return None
