"""Start a liteqd daemon in the background from Python: for examples, scripts and tests.

    from liteq.launcher import start_daemon
    with start_daemon("tasks.py", concurrency=2) as daemon:
        task_id = add.delay(1, 2)
        ...
    # leaving the block stops it gracefully (SIGTERM) and waits for it

It runs `python -m liteqd.cli` as a child process with the same LITEQ_DB as this
process, and returns once the daemon has logged `daemon.ready`.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from . import settings
from .errors import LiteQError
from .backends import identity_of
from .paths import socket_path


class DaemonHandle:
    """A running background daemon; use as a context manager or call stop()."""

    def __init__(self, process, log_path):
        self.process = process
        self.log_path = log_path

    @property
    def pid(self):
        """The supervisor's process id."""
        return self.process.pid

    def events(self):
        """The daemon's log events so far, as dicts."""
        out = []
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

    def stop(self, timeout=30.0) -> int:
        """Stop gracefully (SIGTERM), waiting up to `timeout` s; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def _stderr_text(log_path, start):
    """The non-JSON lines (stderr) the daemon wrote to its log from offset `start`."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in lines if not line.startswith("{")).strip()


def _children_ready(sock) -> bool:
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


def start_daemon(app, db=None, *, ready_timeout=30.0, log_path=None, **options) -> DaemonHandle:
    """Start `liteqd --app APP` in the background and wait until it is ready.

    Keyword options become flags (concurrency=2 -> --concurrency 2; a list
    repeats the flag). Logs (JSON) go to `log_path`, by default a temp file,
    and so does anything the daemon or its tasks write to stderr.
    """
    db = db or settings.db_path()
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="liteqd-", suffix=".log")
        os.close(fd)
    argv = [sys.executable, "-m", "liteqd.cli", "--app", str(app), "--db", db,
            "--log-format", "json"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        for item in value if isinstance(value, (list, tuple)) else [value]:
            argv += [flag] if item is True else [flag, str(item)]
    env = dict(os.environ, LITEQ_DB=db)
    with open(log_path, "ab") as log:
        start = log.tell()
        # stderr goes to the log too: a pipe nobody reads would fill up and block the
        # daemon, or a task, at its 64 KiB-th byte of stderr.
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    handle = DaemonHandle(process, log_path)
    sock = options.get("socket") or env.get("LITEQ_SOCKET") or socket_path(identity_of(db))
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
