"""Tasks for tests/daemon/test_fair_dispatch.py: tasks that hold a child until the test opens a gate
(a file), quick ones, and ones that end their child. Each records "TAG start PID" (and
"TAG end PID") in a log file, with O_APPEND so lines from several processes never mix.
"""

import os
import time

from liteq import task


def _append(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def _wait_gate(gate, limit=120.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)


@task(max_retries=1)
def held(gate, log, tag):
    """Start, then hold the child until `gate` exists (two minutes at most)."""
    _append(log, f"{tag} start {os.getpid()}")
    _wait_gate(gate)
    _append(log, f"{tag} end {os.getpid()}")
    return tag


@task(max_retries=1)
def note(log, tag):
    """A quick task: one line."""
    _append(log, f"{tag} start {os.getpid()}")
    return tag


@task
def noop():
    return None


@task(max_retries=0)
def crash_at(gate, log, tag):
    """Hold the child until `gate` exists, then end it (os._exit): a crash."""
    _append(log, f"{tag} start {os.getpid()}")
    _wait_gate(gate)
    os._exit(3)


@task(timeout=1, max_retries=0)
def overrun(log, tag):
    """Run past the one-second limit: the child is killed and replaced."""
    _append(log, f"{tag} start {os.getpid()}")
    time.sleep(60)


@task(timeout=1, max_retries=0)
def brief(log, tag, seconds):
    """Run `seconds` (under its one-second limit), however long it waited for its child."""
    _append(log, f"{tag} start {os.getpid()}")
    time.sleep(seconds)
    return tag
