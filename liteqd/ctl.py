"""`liteqctl`: talk to a running liteqd over its control socket.

Exit codes: 0 success, 1 an error reply (or a bad request, or no database), 3 no
daemon running (`schedules` then reads the database itself, and exits 0 when it
can). `cancel`, `failed`, `retry` and `purge` need no daemon: they work on the
database (liteqd/ctl_tasks.py). A reader that goes away (`liteqctl status --json | head -c 100`) ends it
quietly by SIGPIPE, as it ends other Unix tools. liteqctl never creates a database.
"""

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from liteq import control
from liteq.backends import get_backend, identity_of, may_exist
from liteq.errors import LiteQError

from . import ctl_tasks
from .ctl_parser import build_parser
from .tables import table

EXIT_OK, EXIT_ERROR, EXIT_NO_DAEMON = 0, 1, 3


def _fmt_duration(seconds: float | str | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _fmt_bytes(n: float | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable: the GiB step returns")


# CLAIMED: claimed by a daemon, waiting for a child; RUNNING: started by a child.
SHOWN_STATUSES = ("pending", "claimed", "running", "failed", "done")
ESTIMATE_NOTE = ("~ estimated from the database's statistics (too many tasks to count "
                 "quickly; smaller counts are exact)")


def _count(queue_row: dict[str, Any], status: str) -> object:
    """A queue's count of `status`, marked ~ when it is an estimate."""
    n = queue_row.get(status, 0)
    return f"~{n}" if status in queue_row.get("estimated", ()) else n


def render_status(st: dict[str, Any]) -> str:
    """The human-readable `liteqctl status`."""
    out = [f"liteqd pid {st['pid']}  up {_fmt_duration(st['uptime_s'])}  state {st['state']}",
           f"database  {st['db']}",
           f"app       {st.get('app')}"]
    if st.get("paused"):
        out.append(f"paused    {', '.join(st['paused'])}")
    for pool in st["pools"]:
        flag = "  FAILING (children keep dying; respawns back off)" if pool.get("failing") else ""
        out.append("")
        per_child = pool.get("async_concurrency", 1)
        coroutines = f", up to {per_child} coroutines each" if per_child > 1 else ""
        out.append(f"pool {pool['name']}: {len(pool['children'])}/{pool['size']} children"
                   f"{coroutines}, queues {', '.join(pool['queues'])}{flag}")
        rows = [(c["pid"], c["slot"], c["state"], c["task_id"],
                 c["task_name"] if c.get("tasks_running", 0) <= 1 or not c["task_name"]
                 else f"{c['task_name']} (+{c['tasks_running'] - 1} more)",
                 _fmt_duration(c["running_s"]) if c["running_s"] is not None else None,
                 _fmt_bytes(c["rss_bytes"]), c["tasks_done"]) for c in pool["children"]]
        if rows:
            out.append(table(["PID", "SLOT", "STATE", "TASK", "NAME", "RUNNING", "RSS", "DONE"],
                             rows))
    queues: list[dict[str, Any]] = st.get("queues") or []
    out.append("")
    if queues:
        out.append(table(["QUEUE", "PENDING", "CLAIMED", "RUNNING", "FAILED", "DONE"],
                         [(q["queue"], *(_count(q, s) for s in SHOWN_STATUSES))
                          for q in queues]))
        if any(q.get("estimated") for q in queues):
            out.append(ESTIMATE_NOTE)
    else:
        out.append("no tasks in the database yet")
    return "\n".join(out)


def daemons_on_database(db: str | None, window: float) -> list[dict[str, Any]]:
    """Every daemon whose heartbeat is within `window` s, on any host: [{worker_id,
    hostname, pid, queues, concurrency, busy, heartbeat_age_s, started_at}]."""
    rows = get_backend(db).active_workers(window)
    return [{"worker_id": r["worker_id"], "hostname": r["hostname"], "pid": r["pid"],
             "queues": r["queues"].split(",") if r["queues"] else [],
             "concurrency": r["concurrency"], "busy": r["active_tasks"],
             "heartbeat_age_s": round(max(r["heartbeat_age_s"], 0.0), 3),
             "started_at": r["started_at"]} for r in rows]


def render_daemons(rows: list[dict[str, Any]]) -> str:
    """The human-readable `liteqctl status --all`."""
    if not rows:
        return "no live daemon on this database"
    return table(["HOST", "PID", "QUEUES", "CHILDREN", "BUSY", "HEARTBEAT"],
                 [(r["hostname"], r["pid"], ",".join(r["queues"]), r["concurrency"], r["busy"],
                   _fmt_duration(r["heartbeat_age_s"]) + " ago") for r in rows])


def render_schedules(rows: list[dict[str, Any]]) -> str:
    """The human-readable `liteqctl schedules`."""
    if not rows:
        return "no schedules"
    return table(["NAME", "CRON", "TASK", "NEXT RUN", "LAST RUN", "ENABLED"],
                 [(r["name"], r["cron_expr"], r["task_name"], r.get("next_run") or "-",
                   r.get("last_run") or "-", "yes" if r["enabled"] else "no") for r in rows])


class StdoutClosed(Exception):
    """Whoever read liteqctl's output has gone (a closed pipe)."""


def _out(text: str) -> None:
    """Print one result to stdout now, so that a reader that has gone is noticed here
    (and not by the flush at exit, which would print a traceback)."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed() from None


def _end_by_sigpipe() -> int:
    """End as other Unix tools do when their reader goes: killed by SIGPIPE, silently
    (Python ignores SIGPIPE, so it is restored first)."""
    try:
        # Nothing may be flushed to the dead pipe at exit: that prints a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def _require_database(db: str | None) -> None:
    """Refuse a command that reads the database when there is none (an SQLite file that
    does not exist): opening it would create it."""
    if not may_exist(db):
        raise ValueError(f"there is no database at {identity_of(db)} (set --db or LITEQ_DB "
                         f"to the database the daemon serves)")


def _wait_scaled(pool_name: str, size: int, timeout: float, kw: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = control.status(include_queues=False, **kw)
        pool: dict[str, Any] | None = next((p for p in st["pools"] if p["name"] == pool_name), None)
        if pool is None:
            raise control.ControlError(f"no pool named {pool_name!r}")
        live = [c for c in pool["children"] if c["state"] in ("idle", "running")]
        if len(live) == size and len(pool["children"]) == size:
            return pool
        if time.monotonic() >= deadline:
            raise TimeoutError(f"pool {pool_name} has {len(live)} ready children of {size} "
                               f"after {timeout:g} s ({len(pool['children'])} processes)")
        time.sleep(0.05)


def reply_timeout(args: argparse.Namespace) -> float:
    """--reply-timeout, or the deprecated --timeout (with a warning on stderr)."""
    if args.old_timeout is not None:
        print("liteqctl: warning: --timeout is deprecated here (liteqd's --timeout is the "
              "tasks' time limit); use --reply-timeout", file=sys.stderr)
        if args.reply_timeout is None:
            old_timeout: float = args.old_timeout
            return old_timeout
    return 5.0 if args.reply_timeout is None else args.reply_timeout


def run(args: argparse.Namespace) -> int:
    """Carry out one liteqctl command; returns the exit code."""
    cmd = args.command
    if cmd == "completion":
        from .completion import script
        _out(script(args.shell))
        return EXIT_OK
    kw: dict[str, Any] = {"timeout": reply_timeout(args)}
    if args.socket:
        kw["path"] = args.socket
    if args.db:
        kw["db"] = args.db
    if (cmd == "status" and args.all) or cmd in ("cancel", "failed", "retry", "purge"):
        _require_database(args.db)
    if cmd == "status" and args.all:
        rows = daemons_on_database(args.db, args.window)
        _out(json.dumps(rows, indent=2) if args.json else render_daemons(rows))
    elif cmd == "status":
        st = control.status(**kw)
        _out(json.dumps(st, indent=2) if args.json else render_status(st))
    elif cmd == "scale":
        if len(args.args) > 2:
            raise ValueError("usage: liteqctl scale [POOL] N")
        pool = args.args[0] if len(args.args) == 2 else None
        try:
            size = int(args.args[-1])
        except ValueError:
            raise ValueError(f"N must be a whole number; got {args.args[-1]!r}") from None
        reply = control.scale(size, pool=pool, **kw)
        settled = _wait_scaled(reply["pool"], size, args.wait, kw)
        _out(f"pool {reply['pool']} now has {len(settled['children'])} children")
    elif cmd in ("pause", "resume"):
        reply = getattr(control, cmd)(args.queue, **kw)
        _out(f"{cmd}d {args.queue}; paused queues: {', '.join(reply['paused']) or 'none'}")
    elif cmd == "reload":
        # The reply comes once the daemon has imported the app again: an error reply
        # (the new code does not load) exits 1 with its reason.
        control.reload(**kw)
        _out("reloaded: the app was imported again; fresh children are starting")
    elif cmd == "shutdown":
        control.shutdown(fast=args.fast, **kw)
        _out("stopping" + (" (fast)" if args.fast else " (graceful)"))
    elif cmd == "cancel":
        # Through the database, so it reaches the daemon that runs it on any host.
        if not get_backend(args.db).cancel(args.task_id):
            row = get_backend(args.db).get_task(args.task_id)
            raise ValueError(f"task {args.task_id} is " + (
                "not there" if row is None else f"{row['status']}: only pending or running "
                                                 f"tasks can be cancelled"))
        _out(f"cancelled task {args.task_id}")
    elif cmd in ("failed", "retry", "purge"):
        code: int = getattr(ctl_tasks, f"run_{cmd}")(args, _out)
        return code
    elif cmd == "ping":
        reply = control.ping(**kw)
        _out(f"pong from liteqd pid {reply['pid']}")
    elif cmd == "schedules":
        try:
            rows = control.schedules(**kw)
        except control.DaemonNotRunning as exc:
            rows = _schedules_from_database(args.db, exc)
        _out(json.dumps(rows, indent=2) if args.json else render_schedules(rows))
    return EXIT_OK


def _schedules_from_database(db: str | None, not_running: object) -> list[dict[str, Any]]:
    """The schedules read from the database itself, when no daemon answers: they are
    rows there, and the daemon only passes them on. Says so on stderr (stdout stays
    the table or the JSON). A database that does not exist is not created."""
    shown = identity_of(db)
    if not may_exist(db):
        raise control.DaemonNotRunning(f"{not_running}; database {shown} does not exist")
    from liteq.scheduler import list_schedules
    rows = list_schedules(get_backend(db))
    print(f"liteqctl: {not_running}; schedules read from {shown}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `liteqctl` command."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except control.DaemonNotRunning as exc:
        print(f"liteqctl: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except StdoutClosed:
        return _end_by_sigpipe()
    except (LiteQError, ValueError, TimeoutError, OSError) as exc:
        print(f"liteqctl: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
