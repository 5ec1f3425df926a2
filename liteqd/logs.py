"""Structured logging for the daemon: one JSON object per line, or console lines.

Event names are a small vocabulary (task.started, task.succeeded, task.retrying,
task.failed, task.timed_out, task.reclaimed, child.spawned, child.exited,
pool.scaled, daemon.ready, daemon.stopping, ...); README lists them all.

Lines are collected in memory and written once per turn of the supervisor's
loop (flush()), so a busy daemon makes one write() per batch of tasks rather
than one per event.
"""

import json
import logging
import os
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger, Processor

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=repr).encode


class BufferedLineLogger:
    """A structlog logger that queues rendered lines until flush()."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines: list[str] = []

    def msg(self, message: str) -> None:
        """Queue one rendered line."""
        self.lines.append(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg

    def flush(self) -> None:
        """Write the queued lines in one go."""
        if not self.lines:
            return
        text = "\n".join(self.lines) + "\n"
        self.lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stdout must not take the daemon down


class _FastTimestamp:
    """ISO-8601 UTC timestamps, formatting the date part once per second."""

    def __init__(self) -> None:
        self.second: int | None = None
        self.prefix = ""

    def __call__(self, logger: object, method_name: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        sec = int(now)
        if sec != self.second:
            self.second = sec
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        event_dict["timestamp"] = f"{self.prefix}.{int((now - sec) * 1e6):06d}Z"
        return event_dict


_sink = BufferedLineLogger(sys.stdout)

# sd-daemon(3) priority prefixes. journald strips them from the message (SyslogLevelPrefix=,
# on by default) and files the line at that priority, so `journalctl -o cat` still shows
# plain JSON. Written only when stdout is the journal itself (JOURNAL_STREAM names it):
# into a pipe or a file the JSON stays bare.
_PRIORITY: dict[str | None, str] = {"debug": "<7>", "info": "<6>", "warning": "<4>",
                                    "error": "<3>", "critical": "<2>"}


def _is_journal(stream: TextIO) -> bool:
    """True when `stream` is the journal's own socket (systemd sets JOURNAL_STREAM)."""
    try:
        dev, ino = (int(x) for x in os.environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(stream.fileno())
    except (KeyError, ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _json_renderer(prefixed: bool) -> Callable[[object, str, MutableMapping[str, Any]], str]:
    def render(logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        line = _encode(event_dict)
        return _PRIORITY.get(event_dict.get("level"), "<6>") + line if prefixed else line
    return render


def configure(log_format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog: JSON when not on a terminal (or when asked), console otherwise."""
    stream = stream or sys.stdout
    assert stream is not None  # (sys.stdout is None only in a process without one)
    _sink.stream = stream
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    processors: list[Processor] = [structlog.processors.add_log_level, _FastTimestamp()]
    if log_format == "json":
        processors += [structlog.processors.format_exc_info, _json_renderer(_is_journal(stream))]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *args: _sink,
        cache_logger_on_first_use=True,
    )


def set_stream(stream: TextIO) -> None:
    """Write the log to `stream` from now on (a worker child's copy of the daemon's stdout)."""
    _sink.stream = stream


def flush() -> None:
    """Write out the queued log lines (the supervisor calls this every loop turn)."""
    _sink.flush()


def write_now() -> None:
    """Write the queued lines straight to the log's file descriptor, past Python's own
    buffering: for a forked child about to os._exit, perhaps from a signal handler that
    interrupted a write to the same stream."""
    lines, _sink.lines = _sink.lines, []
    if not lines:
        return
    data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
    try:
        fd = _sink.stream.fileno()
        while data:
            data = data[os.write(fd, data):]
    except (OSError, ValueError, AttributeError):
        pass  # nowhere to write: the process is leaving anyway


def get_logger(**context: Any) -> FilteringBoundLogger:
    """A bound logger carrying `context` in every event."""
    logger: FilteringBoundLogger = structlog.get_logger()
    return logger.bind(**context) if context else logger
