"""`liteq monitor`: serve the panel with uvicorn."""

import argparse
import contextlib
import os
import signal
import sys
import threading

from .. import settings

TOKEN_ENV = "LITEQ_MONITOR_TOKEN"


def build_parser():
    """The argument parser of `liteq monitor`."""
    p = argparse.ArgumentParser(
        prog="liteq monitor",
        description="Serve the LiteQ web panel: queues, tasks, failures, schedules, pools, "
                    "and Prometheus metrics on /metrics.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5151, help="port (default 5151)")
    p.add_argument("--db", help="the queue database (default: LITEQ_DB, else liteq.db)")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                   help=f"require this token: a login form for browsers, "
                        f"'Authorization: Bearer TOKEN' for scripts and Prometheus "
                        f"[{TOKEN_ENV}; the variable keeps it out of `ps`]")
    p.add_argument("--public-metrics", action="store_true",
                   help="serve /metrics without the token")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer to this Host name when listening on a loopback address "
                        "(e.g. behind a reverse proxy); repeatable")
    p.add_argument("--refresh", type=float, default=3.0,
                   help="seconds between the pages' background refreshes (default 3)")
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning)")
    return p


def main(argv=None) -> int:
    """Entry point of `liteq monitor`."""
    args = build_parser().parse_args(argv)
    try:
        import uvicorn
        from .app import create_app
        from .security import LOOPBACK_NAMES, is_loopback
    except ImportError as exc:
        print(f"liteq monitor needs the web extra ({exc.name} is missing): "
              f"pip install 'liteq[web]'", file=sys.stderr)
        return 2
    if args.refresh < 0.5:
        print("liteq monitor: --refresh must be at least 0.5 s", file=sys.stderr)
        return 2
    db = os.path.abspath(args.db or settings.db_path())
    if not os.path.exists(db):
        print(f"note: {db} does not exist yet; it will be created empty", file=sys.stderr)
    loopback = is_loopback(args.host)
    if not loopback and not args.token:
        print(f"WARNING: the panel listens on {args.host} without --token: anyone who can "
              f"reach port {args.port} can see your tasks and retry, cancel or scale them. "
              f"Pass --token (or set {TOKEN_ENV}).", file=sys.stderr)
    allowed = [*LOOPBACK_NAMES, *args.allow_host] if loopback else None
    app = create_app(db, token=args.token, allowed_hosts=allowed,
                     public_metrics=args.public_metrics, refresh=args.refresh)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"LiteQ monitor on http://{shown}:{args.port}/ (database {db}"
          f"{', token required' if args.token else ''}); Ctrl+C stops it", file=sys.stderr)
    try:
        with _stop_signals_end_cleanly():
            uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    except _Stopped:
        pass
    return 0


class _Stopped(BaseException):
    """SIGTERM or SIGINT ended the server (a BaseException, so nothing on the way
    treats it as an error)."""


@contextlib.contextmanager
def _stop_signals_end_cleanly():
    """Make SIGTERM and SIGINT end `liteq monitor` with exit code 0.

    uvicorn shuts down gracefully on them, then raises the signal again under the
    handler it found, to end the process as the signal would: with the default
    one SIGTERM killed us (exit 143), which systemd counts as a failed stop. Under
    this handler that second delivery (or a signal before uvicorn installed its
    own) stops the server with _Stopped instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stopped(signum, frame):
        raise _Stopped(signum)

    saved = {sig: signal.signal(sig, stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
