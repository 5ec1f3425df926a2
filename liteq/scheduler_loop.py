"""The standalone scheduler: `Scheduler(check_interval=60).run()` and `liteq scheduler`.

liteqd fires schedules itself; this loop is for running without the daemon, or
beside it (every fire is a compare-and-set, so both may run).
"""

import argparse
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .backends import Backend, forget_backends, get_backend
from .app_loader import load_app, refuse_loop_at_import
from .errors import ConfigError, DatabaseError
from .schedule_firing import fire_due
from .timeutil import now, to_iso



def _print_event(event: str, **fields: Any) -> None:
    if event == "schedule.fired":
        ids = fields["task_ids"]
        ids = (", ".join(f"#{i}" for i in ids) if len(ids) <= 5
               else f"#{ids[0]}..#{ids[-1]} ({len(ids)} tasks)")
        when = to_iso(fields["occurrences"][-1])
        extra = f" ({len(fields['occurrences'])} occurrences)" if len(fields["occurrences"]) > 1 else ""
        print(f"liteq scheduler: fired {fields['schedule']!r} for {when}{extra}: "
              f"task {fields['name']} {ids}; next run {fields['next_run']}", flush=True)
    else:
        print(f"liteq scheduler: schedule {fields.get('schedule')!r}: {fields.get('error')}",
              file=sys.stderr, flush=True)


def _print_db_error(exc: DatabaseError, retry_in_s: float) -> None:
    print(f"liteq scheduler: {exc}; retrying", file=sys.stderr, flush=True)


class Scheduler:
    """Fires due schedules in a loop: `Scheduler(check_interval=60).run()`.

    It sleeps until the next fire time, but never longer than check_interval,
    so schedules registered by other processes are seen within that interval.
    Stops on SIGTERM or SIGINT (when run in the main thread), on
    KeyboardInterrupt, and on .stop() from any thread. Sleeps are measured on
    the monotonic clock; fire times are wall-clock times.
    """

    def __init__(self, check_interval: float = 60, db_path: str | None = None,
                 log: Callable[..., object] | None = None,
                 on_db_error: Callable[[DatabaseError, float], object] | None = None) -> None:
        if isinstance(check_interval, bool) or not isinstance(check_interval, (int, float)):
            raise TypeError(f"check_interval must be a number of seconds, "
                            f"not {type(check_interval).__name__}")
        if not check_interval > 0:
            raise ValueError(f"check_interval must be > 0, got {check_interval!r}")
        self.check_interval = float(check_interval)
        self.db_path = db_path
        self.log = log or _print_event
        # on_db_error(exc, retry_in_s): a database error the loop rides out (default:
        # a line on stderr).
        self.on_db_error = on_db_error or _print_db_error
        self._stopping = False
        self._lock = threading.Lock()
        self._pipe: tuple[int, int] | None = None

    @property
    def running(self) -> bool:
        """True while run() runs (liteq 0.2's flag). Setting it to False stops run(), from
        any thread, as .stop() does."""
        return self._pipe is not None and not self._stopping

    @running.setter
    def running(self, value: bool) -> None:
        if not value:
            self.stop()

    def run_once(self) -> list[int]:
        """Fire what is due now; returns the new task ids."""
        return fire_due(get_backend(self.db_path), log=self.log)

    def stop(self) -> None:
        """Ask a running .run() to return; safe from any thread."""
        self._stopping = True
        with self._lock:
            if self._pipe is not None:
                self._nudge(self._pipe[1])

    @staticmethod
    def _nudge(fd: int) -> None:
        try:
            os.write(fd, b"x")
        except OSError:
            pass  # the pipe is full: a wake-up is pending anyway

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only record and nudge: the loop acts, outside the handler (no lock taken
        # here, since the handler may interrupt the thread that holds it).
        self._stopping = True
        pipe = self._pipe
        if pipe is not None:
            self._nudge(pipe[1])

    def _sleep_for(self, backend: Backend) -> float:
        nxt = backend.next_schedule_time()
        if nxt is None:
            return self.check_interval
        # A small floor, so a clock that reads a hair early cannot spin the loop.
        return min(self.check_interval, max(0.01, nxt - now()))

    def run(self) -> None:
        """Fire schedules until stopped; blocks. A .stop() that came first ends it at once.

        Raises AppStartsLoop (a ConfigError) when reached while liteqd or `liteq`
        imports the app: there it would block the import forever.
        """
        refuse_loop_at_import("Scheduler.run()")
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        with self._lock:
            self._pipe = (r, w)
        saved: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                saved[sig] = signal.signal(sig, self._on_signal)
        backend = get_backend(self.db_path)
        try:
            while not self._stopping:
                try:
                    fire_due(backend, log=self.log)
                    wait = self._sleep_for(backend)
                except DatabaseError as exc:
                    wait = min(self.check_interval, 5.0)
                    self.on_db_error(exc, wait)
                if self._stopping:
                    break
                # select() measures its timeout on the monotonic clock; a signal or
                # .stop() writes to the pipe and ends the wait at once.
                ready, _, _ = select.select([r], [], [], wait)
                if ready:
                    try:
                        while os.read(r, 512):
                            pass
                    except BlockingIOError:
                        pass
        except KeyboardInterrupt:
            pass
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            with self._lock:
                self._pipe = None
                os.close(r)
                os.close(w)
            self._stopping = False  # so the same Scheduler can run again


# ---- CLI ------------------------------------------------------------------------

def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `liteq scheduler`."""
    parser = argparse.ArgumentParser(
        prog="liteq scheduler",
        description="Fire the cron schedules of a LiteQ app (standalone; liteqd does "
                    "this itself, so run this only without the daemon or beside it).",
        epilog="Logs one JSON object per line (console lines on a terminal), as liteqd.")
    parser.add_argument("--app", default=os.environ.get("LITEQ_APP") or None,
                        help="the app that defines tasks and schedules: a file "
                             "(tasks.py) or a module (myapp.tasks) [LITEQ_APP]")
    parser.add_argument("--interval", type=_positive_float, default=60.0,
                        help="longest sleep between checks, in seconds (default 60)")
    parser.add_argument("--db", help="queue database (default: LITEQ_DB, else ./liteq.db)")
    parser.add_argument("--log-format", type=str.lower, choices=LOG_FORMATS,
                        default=(os.environ.get("LITEQ_LOG_FORMAT") or "auto").lower(),
                        help="json, console, or auto (json unless stdout is a terminal) "
                             "[LITEQ_LOG_FORMAT]")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS,
                        default=(os.environ.get("LITEQ_LOG_LEVEL") or "info").lower(),
                        help="debug, info, warning, error [LITEQ_LOG_LEVEL]")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`liteq scheduler --app tasks.py [--interval 60] [--db PATH]`; returns the exit code.

    Imports the app (which registers its tasks and schedules), then fires
    schedules until SIGTERM or Ctrl-C (exit 0), logging structured events
    (scheduler.started, schedule.fired, schedule.error, db.unavailable,
    scheduler.stopped) as liteqd does. A missing or broken app, or a database that
    cannot be opened, is reported on stderr with exit code 1 (no app at all: 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse checks the choices of a flag given, not of a default from the variables.
    for value, allowed, var in ((args.log_format, LOG_FORMATS, "LITEQ_LOG_FORMAT"),
                                (args.log_level, LOG_LEVELS, "LITEQ_LOG_LEVEL")):
        if value not in allowed:
            parser.error(f"{var} must be one of {', '.join(allowed)}; got {value!r}")
    if not args.app:
        parser.error("no app given: pass --app tasks.py (a file) or --app myapp.tasks "
                     "(a module), or set LITEQ_APP")
    if args.db:
        # The app's own calls (register_schedule, .delay) must use the same file.
        os.environ["LITEQ_DB"] = args.db
        forget_backends()
    # The daemon's structured logging (structlog), loaded by this command only: an
    # app that uses the Scheduler class itself keeps its plain lines.
    from liteqd.logs import configure, flush, get_logger
    configure(args.log_format, args.log_level)
    log = get_logger()
    try:
        load_app(args.app)
        backend = get_backend()
        count = len(backend.list_schedules())
    except (ConfigError, DatabaseError, ValueError, TypeError) as exc:
        flush()
        print(f"liteq scheduler: error: {exc}", file=sys.stderr, flush=True)
        return 1

    def event(event: str, /, **fields: Any) -> None:
        getattr(log, "warning" if event.endswith("error") else "info")(event, **fields)
        flush()

    def db_error(exc: DatabaseError, retry_in_s: float) -> None:
        log.warning("db.unavailable", op="schedules", error=str(exc), retry_in_s=retry_in_s)
        flush()

    event("scheduler.started", app=args.app, db=backend.identity, schedules=count,
          interval_s=args.interval, pid=os.getpid())
    Scheduler(check_interval=args.interval, log=event, on_db_error=db_error).run()
    event("scheduler.stopped", pid=os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
