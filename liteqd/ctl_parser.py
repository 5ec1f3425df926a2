"""liteqctl's argument parser, on its own so that the shell completion can read it
without importing the commands (which import the completion)."""
from __future__ import annotations

import argparse

from liteq.version import __version__

from . import ctl_tasks


def build_parser() -> argparse.ArgumentParser:
    """liteqctl's argument parser."""
    p = argparse.ArgumentParser(prog="liteqctl", description="Control a running liteqd.")
    p.add_argument("--version", action="version", version=f"liteqctl {__version__}")
    p.add_argument("--db", help="the database the daemon serves [LITEQ_DB]")
    p.add_argument("--socket", help="the control socket (default: derived from the database) "
                                    "[LITEQ_SOCKET]")
    p.add_argument("--reply-timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for the daemon's answer (default 5)")
    # liteqctl once named it --timeout, which liteqd uses for the tasks' time limit.
    p.add_argument("--timeout", type=float, default=None, dest="old_timeout",
                   help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="pools, children and queue counts")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--all", action="store_true",
                   help="every live daemon on the database (any host), read from the "
                        "database: host, pid, queues, busy children, heartbeat age")
    s.add_argument("--window", type=float, default=60.0,
                   help="with --all: a daemon is live if its heartbeat is this recent "
                        "(seconds, default 60)")
    s = sub.add_parser("scale", help="set a pool's number of children: scale [POOL] N")
    s.add_argument("args", nargs="+", metavar="[POOL] N")
    s.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait for the pool to settle (default 60)")
    s = sub.add_parser("pause", help="stop claiming from a queue")
    s.add_argument("queue")
    s = sub.add_parser("resume", help="claim from a paused queue again")
    s.add_argument("queue")
    sub.add_parser("reload", help="re-import the app and replace the children (like SIGHUP)")
    s = sub.add_parser("shutdown", help="stop the daemon gracefully")
    s.add_argument("--fast", action="store_true", help="kill children now, requeue their tasks")
    sub.add_parser("ping", help="check that the daemon answers")
    s = sub.add_parser("cancel", help="cancel a pending or running task (any host's): "
                                      "cancel ID")
    s.add_argument("task_id", type=int)
    s = sub.add_parser("schedules", help="cron schedules: next run, last run, enabled")
    s.add_argument("--json", action="store_true", help="print JSON")
    ctl_tasks.add_commands(sub)
    s = sub.add_parser("completion", help="print a shell completion script for liteq, "
                                          "liteqd and liteqctl: completion bash|zsh")
    s.add_argument("shell", choices=("bash", "zsh"))
    return p
