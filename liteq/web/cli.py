"""`liteq monitor`: serve the panel with uvicorn."""

import argparse
import os
import sys

from .. import settings
from ..backends import identity_of
from ..errors import ConfigError

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
    db = args.db or settings.db_path()
    try:
        shown_db = identity_of(db)
    except ConfigError as exc:
        print(f"liteq monitor: {exc}", file=sys.stderr)
        return 2
    loopback = is_loopback(args.host)
    if not loopback and not args.token:
        print(f"WARNING: the panel listens on {args.host} without --token: anyone who can "
              f"reach port {args.port} can see your tasks and retry, cancel or scale them. "
              f"Pass --token (or set {TOKEN_ENV}).", file=sys.stderr)
    allowed = [*LOOPBACK_NAMES, *args.allow_host] if loopback else None
    app = create_app(db, token=args.token, allowed_hosts=allowed,
                     public_metrics=args.public_metrics, refresh=args.refresh)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"LiteQ monitor on http://{shown}:{args.port}/ (database {shown_db}"
          f"{', token required' if args.token else ''}); Ctrl+C stops it", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
