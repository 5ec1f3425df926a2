"""Start a liteqd daemon in the background from Python: for examples, scripts and tests.

    from liteq.launcher import start_daemon
    with start_daemon("tasks.py", concurrency=2) as daemon:
        task_id = add.delay(1, 2)
        ...
    # leaving the block stops it gracefully (SIGTERM) and waits for it

It runs `python -m liteqd.cli` as a child process with the same LITEQ_DB as this
process, and returns once the daemon has logged `daemon.ready`.

With hostname="...", the daemon runs as if on a host of its own: in its own
UTS, PID and mount namespaces (`unshare`, which needs root), under that host
name, with /proc of its own. Stopping it (or its supervisor dying) ends every
process of that namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, cast

from . import settings
from .errors import LiteQError
from .backends import identity_of
from .paths import socket_path


# Runs in the new namespaces: names the host, then becomes the daemon (same pid).
_AS_HOST = ("import os, socket, sys; socket.sethostname(sys.argv[1]); "
            "os.execv(sys.executable, [sys.executable] + sys.argv[2:])")
NAMESPACES = ["unshare", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc"]


class DaemonHandle:
    """A running background daemon; use as a context manager or call stop()."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: str,
                 supervisor_pid: int | None = None) -> None:
        self.process = process
        self.log_path = log_path
        self._supervisor_pid = supervisor_pid

    @property
    def pid(self) -> int:
        """The supervisor's process id (in this process's PID namespace)."""
        return self._supervisor_pid or self.process.pid

    def events(self) -> list[dict[str, Any]]:
        """The daemon's log events so far, as dicts."""
        out: list[dict[str, Any]] = []
        try:
            with open(self.log_path) as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        except FileNotFoundError:
            pass
        return out

    def stop(self, timeout: float = 30.0) -> int:
        """Stop gracefully (SIGTERM), waiting up to `timeout` s; returns the exit code."""
        if self.process.poll() is None:
            # The supervisor itself: in namespaces, self.process is unshare, which
            # waits for it and exits with its code.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)   # a namespace's init: all of it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode

    def __enter__(self) -> DaemonHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        # None (not a bool): checkers then know an exception in the block propagates.
        self.stop()


def _stderr_text(log_path: str, start: int) -> str:
    """The non-JSON lines (stderr) the daemon wrote to its log from offset `start`."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines if not line.startswith("{")).strip()


def _children_ready(sock: str) -> bool:
    """True once the daemon answers and every pool has a child ready (or size 0).

    Asked over the control socket rather than read from the log, so any
    --log-level works.
    """
    from . import control
    try:
        status = control.request("status", path=sock, timeout=1.0)
    except (control.DaemonNotRunning, control.ControlError, TimeoutError, OSError):
        return False
    return all(pool["size"] == 0 or any(c["state"] in ("idle", "running")
                                        for c in pool["children"])
               for pool in status["pools"])


def namespaces_unavailable() -> str | None:
    """None when daemons can run in namespaces of their own here (start_daemon's
    hostname=); else why not, in a line."""
    try:
        done = subprocess.run(NAMESPACES + ["true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare: {exc}"
    if done.returncode != 0:
        return (f"unshare cannot create UTS and PID namespaces here (it needs root): "
                f"{done.stderr.strip() or f'exit code {done.returncode}'}")
    return None


def _only_child(pid: int, timeout: float = 5.0) -> int | None:
    """The pid of the one child of process `pid` (unshare's forked child), or None."""
    deadline = time.monotonic() + timeout
    path = f"/proc/{pid}/task/{pid}/children"
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                children = f.read().split()
        except OSError:
            return None
        if children:
            return int(children[0])
        time.sleep(0.005)
    return None


def start_daemon(app: str, db: str | None = None, *, ready_timeout: float = 30.0,
                 log_path: str | None = None, hostname: str | None = None,
                 **options: Any) -> DaemonHandle:
    """Start `liteqd --app APP` in the background and wait until it is ready.

    Keyword options become flags (concurrency=2 -> --concurrency 2; a list
    repeats the flag). Logs (JSON) go to `log_path`, by default a temp file,
    and so does anything the daemon or its tasks write to stderr. hostname:
    run it in namespaces of its own under that host name (see the module's
    docstring; give each such daemon a socket= of its own).
    """
    db = db or settings.db_path()
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="liteqd-", suffix=".log")
        os.close(fd)
    argv = [sys.executable, "-m", "liteqd.cli", "--app", str(app), "--db", db,
            "--log-format", "json"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        # (Any narrowed by isinstance is list[Unknown] to pyright: its items are Any too.)
        for item in cast("list[Any]", value) if isinstance(value, (list, tuple)) else [value]:
            argv += [flag] if item is True else [flag, str(item)]
    if hostname is not None:
        argv = NAMESPACES + ["--", sys.executable, "-c", _AS_HOST, hostname] + argv[1:]
    env = dict(os.environ, LITEQ_DB=db)
    with open(log_path, "ab") as log:
        start = log.tell()
        # stderr goes to the log too: a pipe nobody reads would fill up and block the
        # daemon, or a task, at its 64 KiB-th byte of stderr.
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    supervisor = _only_child(process.pid) if hostname is not None else None
    handle = DaemonHandle(process, log_path, supervisor)
    sock: str = options.get("socket") or env.get("LITEQ_SOCKET") or socket_path(identity_of(db))
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LiteQError(f"liteqd exited with code {process.returncode}: "
                             f"{_stderr_text(log_path, start)}")
        if _children_ready(sock):
            return handle
        time.sleep(0.02)
    handle.stop(timeout=5)
    raise LiteQError(f"liteqd did not become ready within {ready_timeout:g} s; "
                     f"see its log {log_path}")
