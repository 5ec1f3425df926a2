"""The client side of the daemon's control channel (used by liteqctl and the web panel).

    from liteq import control
    control.status()           # the daemon's pools, children and queue counts
    control.scale(4)           # the first pool to 4 children
    control.pause("emails")

Each call opens the daemon's Unix socket (found from LITEQ_SOCKET, or derived
from LITEQ_DB), sends one JSON line and reads one back. With no daemon
listening it raises DaemonNotRunning; wake() instead does nothing.
"""

import json
import socket
import time
from typing import Any

from .backends import TASK_STATUSES, get_backend, identity_of
from .errors import LiteQError
from .paths import RUNTIME_DIR, runtime_dir_refused, socket_path


class DaemonNotRunning(LiteQError):
    """No liteqd listens on the control socket."""


class ControlError(LiteQError):
    """The daemon answered with an error."""


def request(op: str, *, path: str | None = None, db: str | None = None, timeout: float = 5.0,
            **args: Any) -> dict[str, Any]:
    """Send one request and return the daemon's reply (a dict with "ok": True).

    Raises DaemonNotRunning when nothing listens, ControlError on an error reply,
    and TimeoutError when the daemon does not answer within `timeout` seconds.
    """
    path = path or socket_path(identity_of(db))
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        while True:
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                hint = (f"; a daemon started by the systemd unit has its socket in "
                        f"{RUNTIME_DIR}, which this user may not enter (permission denied: "
                        f"ask to be added to its group)" if runtime_dir_refused() else "")
                raise DaemonNotRunning(
                    f"no liteqd is running for database {identity_of(db)} "
                    f"(nothing listens on {path}){hint}") from None
            except PermissionError:
                raise ControlError(f"permission denied on the control socket {path} (only "
                                   f"the daemon's user and its --socket-group may use it)"
                                   ) from None
            except BlockingIOError:
                # A Unix socket with a timeout fails with EAGAIN at once when the
                # daemon's accept backlog is full (it is busy): wait for room instead.
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"liteqd did not accept a connection within "
                                       f"{timeout:g} s (its backlog is full)") from None
                time.sleep(0.01)
        try:
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once (too many connections): its reason is there to read
        buf = b""
        while b"\n" not in buf:
            try:
                data = sock.recv(1 << 16)
            except socket.timeout:
                raise TimeoutError(f"liteqd did not answer {op!r} within {timeout:g} s") from None
            except ConnectionResetError:
                data = b""
            if not data:
                raise ControlError(f"liteqd closed the connection without answering {op!r}")
            buf += data
    finally:
        sock.close()
    reply: dict[str, Any] = json.loads(buf.split(b"\n", 1)[0])
    if not reply.get("ok"):
        raise ControlError(reply.get("error") or f"liteqd refused {op!r}")
    return reply


def queue_counts(db: str | None = None, estimate: bool = False) -> list[dict[str, Any]]:
    """[{queue, pending, claimed, running, done, failed, cancelled}] read from the database.

    running counts the tasks a child has started; claimed the tasks a daemon has
    claimed that no child has started yet (both have status "running" in the rows).

    estimate=True lets the backend estimate the counts of big groups (see
    Backend.queue_stats); each queue then has `estimated`, the statuses whose
    counts are estimates (empty when all are exact).
    """
    counts: dict[str, dict[str, Any]] = {}
    marks: dict[str, set[str]] = {}
    q: dict[str, Any] | None
    backend = get_backend(db)
    for row in backend.queue_stats(estimate=estimate):
        q = counts.setdefault(row["queue"], {"queue": row["queue"], "pending": 0, "claimed": 0,
                                             "running": 0, "done": 0, "failed": 0,
                                             "cancelled": 0})
        q[row["status"]] = q.get(row["status"], 0) + row["count"]
        if row.get("estimated"):
            marks.setdefault(row["queue"], set()).add(row["status"])
    for name, n in backend.claimed_counts().items():
        q = counts.get(name)
        if q is not None:   # (a claim committed between the two reads: not counted)
            q["claimed"] = min(n, q["running"])
            q["running"] -= q["claimed"]
    if estimate:
        for name, q in counts.items():
            q["estimated"] = [s for s in TASK_STATUSES if s in marks.get(name, ())]
    return [counts[k] for k in sorted(counts)]


def ping(**kw: Any) -> dict[str, Any]:
    """Check that the daemon answers; returns {"pong": True, "pid": ...}."""
    return request("ping", **kw)


def status(include_queues: bool = True, estimate: bool = True, **kw: Any) -> dict[str, Any]:
    """The daemon's state: pid, uptime_s, db, pools (with children) and, by default,
    per-queue counts read from the database (so the daemon's loop never scans it).

    The counts of big groups may be estimates, listed in each queue's `estimated`
    (see queue_counts); estimate=False counts everything exactly.
    """
    reply = request("status", **kw)
    reply.pop("ok", None)
    if include_queues:
        reply["queues"] = queue_counts(kw.get("db") or reply.get("db"), estimate=estimate)
    return reply


def scale(size: int, pool: str | None = None, **kw: Any) -> dict[str, Any]:
    """Set a pool's number of children (the first pool when pool is None)."""
    args: dict[str, Any] = {"size": size}
    if pool is not None:
        args["pool"] = pool
    return request("scale", **args, **kw)


def pause(queue: str, **kw: Any) -> dict[str, Any]:
    """Stop claiming tasks from `queue` (running ones finish)."""
    return request("pause", queue=queue, **kw)


def resume(queue: str, **kw: Any) -> dict[str, Any]:
    """Claim from `queue` again."""
    return request("resume", queue=queue, **kw)


def reload(**kw: Any) -> dict[str, Any]:
    """Re-import the app and replace every child, losing no task (like SIGHUP)."""
    return request("reload", **kw)


def shutdown(fast: bool = False, **kw: Any) -> dict[str, Any]:
    """Stop the daemon: graceful by default, fast (kill and requeue) with fast=True."""
    return request("shutdown", fast=fast, **kw)


def schedules(**kw: Any) -> list[dict[str, Any]]:
    """The cron schedules, as the daemon sees them."""
    found: list[dict[str, Any]] = request("schedules", **kw)["schedules"]
    return found


def wake(db: str | None = None) -> None:
    """Nudge the daemon to look for due tasks now; silently does nothing without one."""
    get_backend(db).notify()
