"""`liteq scheduler`: the standalone loop that fires an app's cron schedules.

The loop itself (liteq.scheduler_loop.Scheduler) is the library's; this command
adds what the daemon's commands have: the app loading, the flags, and the
structured logs (structlog), which an app that runs the Scheduler class itself
never loads.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from liteq.app_loader import load_app
from liteq.backends import forget_backends, get_backend
from liteq.errors import ConfigError, DatabaseError
from liteq.scheduler_loop import Scheduler

from .logs import configure, flush, get_logger


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
