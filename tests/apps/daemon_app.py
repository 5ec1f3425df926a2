"""Tasks for the liteqd tests (tests/daemon/).

The daemon loads this file with --app; the tests load it too (to call .delay()).
Tasks that leave traces write to files whose paths come in as arguments, with
O_APPEND so that lines from several processes never interleave.
"""

import asyncio
import ctypes
import os
import subprocess
import time

from liteq import TaskTimeout, task

# Failed attempts come back quickly in tests (the default first delay is 1 s).
FAST = dict(retry_delay=0.05, retry_backoff=1.0)


def append_line(path, text):
    """Append one line to `path` atomically (O_APPEND, one write)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path):
    """The lines of `path`, or [] when it does not exist yet."""
    try:
        with open(path) as f:
            return [line for line in f.read().splitlines() if line]
    except FileNotFoundError:
        return []


@task
def add(a, b):
    return a + b


@task
async def async_mul(a, b):
    await asyncio.sleep(0.01)
    return {"product": a * b, "loop": type(asyncio.get_running_loop()).__name__}


@task(queue="reports")
def report(name):
    return f"report {name}"


@task(queue="reports", **FAST)
def slow_report(seconds):
    time.sleep(seconds)
    return "report"


@task(queue="emails", **FAST)
def send_email(to):
    return f"sent to {to}"


@task(**FAST)
def record(path, n):
    """Record one execution: "n pid"."""
    append_line(path, f"{n} {os.getpid()}")
    return n


@task(**FAST)
def slow(seconds, path=None):
    """Sleep; when `path` is given, record each attempt ("start pid") first."""
    if path:
        append_line(path, f"start {os.getpid()}")
    time.sleep(seconds)
    return "slept"


@task(max_retries=3, **FAST)
def flaky(path, fails):
    """Fail `fails` times, then succeed; attempts are counted in `path`."""
    append_line(path, "attempt")
    n = len(read_lines(path))
    if n <= fails:
        raise RuntimeError(f"flaky failure number {n}")
    return n


@task(max_retries=0)
def always_fail(message):
    raise ValueError(message)


@task(max_retries=0, **FAST)
def returns_object():
    return object()


_HELD = []


@task(**FAST)
def hog(mb):
    """Allocate `mb` MiB and keep it, so the child's RSS stays high after the task."""
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1  # touch every page so it is resident
    _HELD.append(block)
    return mb


@task(timeout=1, max_retries=0)
def sleep_with_subprocess(pidfile):
    """Start `sleep 600`, record its pid, then sleep far past the time limit."""
    sub = subprocess.Popen(["sleep", "600"])
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{sub.pid} {os.getpid()}")
    os.rename(pidfile + ".tmp", pidfile)
    time.sleep(60)
    return "not reached"


@task(timeout=1, max_retries=0)
def sleep_with_detached_subprocess(pidfile):
    """Like sleep_with_subprocess, but the `sleep` leads a session of its own."""
    sub = subprocess.Popen(["sleep", "600"], start_new_session=True)
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{sub.pid} {os.getpid()}")
    os.rename(pidfile + ".tmp", pidfile)
    time.sleep(60)
    return "not reached"


@task(max_retries=3, **FAST)
def subprocess_then_sleep(pidfile, seconds):
    """Start `sleep 600`, record its pid, then sleep `seconds` (no time limit)."""
    sub = subprocess.Popen(["sleep", "600"])
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{sub.pid} {os.getpid()}")
    os.rename(pidfile + ".tmp", pidfile)
    time.sleep(seconds)
    sub.kill()
    sub.wait()
    return "slept"


@task(timeout=1, max_retries=0)
def swallow_timeout(pidfile):
    """Catch the soft timeout and keep sleeping: only the hard kill ends this."""
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pidfile + ".tmp", pidfile)
    caught = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            time.sleep(60)
        except TaskTimeout:
            caught += 1
    return caught


@task(max_retries=2, **FAST)
def segfault():
    ctypes.string_at(0)


@task(max_retries=2, **FAST)
def exit_one():
    os._exit(1)


@task(max_retries=5, **FAST)
def crash_always():
    os._exit(3)


@task(max_retries=0)
def daemonize_helper(pidfile):
    """Leave a double-forked `sleep 600` running (a daemonized helper) and return."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        sub = subprocess.Popen(["sleep", "600"])
        os.write(w, str(sub.pid).encode())
        os._exit(0)  # the `sleep` is orphaned: its parent exits at once
    os.close(w)
    pid = int(os.read(r, 64))
    os.close(r)
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(pidfile + ".tmp", pidfile)
    return pid


@task(max_retries=3, **FAST)
async def async_sleep(seconds, path):
    """Mark the start in `path`, then sleep on the event loop."""
    append_line(path, "started")
    await asyncio.sleep(seconds)
    return "slept"


@task(max_retries=3, **FAST)
def swallow_cancel(path):
    """Catch TaskCancelled and keep sleeping: only the kill after the grace ends this."""
    from liteq import TaskCancelled
    append_line(path, str(os.getpid()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            time.sleep(60)
        except TaskCancelled:
            append_line(path, "caught")
    return "not reached"
