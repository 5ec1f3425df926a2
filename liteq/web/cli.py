"""`liteq monitor`: serve the panel with uvicorn.

Safe by default, as Jupyter is: without --token (or LITEQ_MONITOR_TOKEN) it makes
a random token at start and prints a login URL carrying it; only --no-token
serves the panel open, and only on a loopback address.
"""

import argparse
import contextlib
import os
import secrets
import signal
import sys
import threading
from collections.abc import Generator
from types import FrameType
from typing import NoReturn

from .. import settings
from ..backends import identity_of
from ..errors import ConfigError

TOKEN_ENV = "LITEQ_MONITOR_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `liteq monitor`."""
    p = argparse.ArgumentParser(
        prog="liteq monitor",
        description="Serve the LiteQ web panel: queues, tasks, failures, schedules, pools, "
                    "and Prometheus metrics on /metrics.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5151, help="port (default 5151)")
    p.add_argument("--db", help="the queue database (default: LITEQ_DB, else liteq.db)")
    access = p.add_mutually_exclusive_group()
    access.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                        help=f"the token to require: the login URL or form for browsers, "
                             f"'Authorization: Bearer TOKEN' for scripts and Prometheus "
                             f"[{TOKEN_ENV}; the variable keeps it out of `ps`] "
                             f"(default: a random one, made at start and printed in a "
                             f"login URL)")
    access.add_argument("--no-token", action="store_true",
                        help="no token: anyone who can connect to the port gets in, every "
                             "local user included; only on a loopback address")
    p.add_argument("--public-metrics", action="store_true",
                   help="serve /metrics without the token")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer to this Host name when listening on a loopback address "
                        "(e.g. behind a reverse proxy); repeatable")
    p.add_argument("--root-path", default="", metavar="PREFIX",
                   help="the path prefix a reverse proxy serves the panel under and strips "
                        "before passing requests on (e.g. /queue): links, forms and "
                        "cookies carry it")
    p.add_argument("--timezone", default=None, metavar="ZONE",
                   help="show times in this zone (an IANA name such as Europe/Berlin, or "
                        "UTC; default: this machine's); every time shown names its zone")
    p.add_argument("--refresh", type=float, default=3.0,
                   help="seconds between the pages' background refreshes (default 3)")
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning)")
    return p


def main(argv: list[str] | None = None) -> int:
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
    root_path = args.root_path.rstrip("/")
    if root_path and (not root_path.startswith("/") or "//" in root_path):
        print(f"liteq monitor: --root-path must be a path such as /queue, not "
              f"{args.root_path!r}", file=sys.stderr)
        return 2
    try:
        from .formatting import zone_named
        zone_named(args.timezone)
    except ValueError as exc:
        print(f"liteq monitor: --timezone: {exc}", file=sys.stderr)
        return 2
    db = args.db or settings.db_path()
    try:
        shown_db = identity_of(db)
    except ConfigError as exc:
        print(f"liteq monitor: {exc}", file=sys.stderr)
        return 2
    loopback = is_loopback(args.host)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    base = f"http://{shown}:{args.port}{root_path}/"
    chosen = _choose_token(args, loopback, base)
    if chosen is None:
        return 2
    token, generated = chosen
    allowed = [*LOOPBACK_NAMES, *args.allow_host] if loopback else None
    app = create_app(db, token=token, allowed_hosts=allowed,
                     public_metrics=args.public_metrics, refresh=args.refresh,
                     timezone=args.timezone)
    print(f"LiteQ monitor on {base} (database {shown_db}"
          f"{', token required' if token else ', no token'}"
          f"{', /metrics public' if args.public_metrics else ''}); Ctrl+C stops it",
          file=sys.stderr)
    if generated:
        # As Jupyter does: the token lives only in this process and this line.
        print(f"    Open this address to log in: {base}?token={token}", file=sys.stderr)
    sys.stderr.flush()
    try:
        with _stop_signals_end_cleanly():
            uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                        root_path=root_path)
    except _Stopped:
        pass
    return 0


def _choose_token(args: argparse.Namespace, loopback: bool,
                  base: str) -> tuple[str | None, bool] | None:
    """(the panel's token, whether it was made here), or None when --no-token is
    refused (it is allowed on a loopback address only, with a warning)."""
    if not args.no_token:
        token: str | None = args.token
        return (token, False) if token is not None else (secrets.token_hex(24), True)
    if not loopback:
        print(f"liteq monitor: --no-token is only allowed on a loopback address, not "
              f"{args.host}: anyone who can reach port {args.port} could retry, cancel "
              f"and scale. Leave the token on (pass --token, set {TOKEN_ENV}, or let "
              f"the panel make one).", file=sys.stderr)
        return None
    print(f"WARNING: --no-token: the panel is open to every user and process on this "
          f"machine; any of them can see your tasks and retry, cancel or scale them "
          f"through {base}", file=sys.stderr)
    return None, False


class _Stopped(BaseException):
    """SIGTERM or SIGINT ended the server (a BaseException, so nothing on the way
    treats it as an error)."""


@contextlib.contextmanager
def _stop_signals_end_cleanly() -> Generator[None, None, None]:
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

    def stopped(signum: int, frame: FrameType | None) -> NoReturn:
        raise _Stopped(signum)

    saved = {sig: signal.signal(sig, stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
