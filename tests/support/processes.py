"""Processes and files of the tests: bounded waits, reading logs, killing process trees.

Every process a test starts carries a per-test tag (TAG_VAR) in its environment, so
teardown can find and SIGKILL all of them. Every wait polls with a deadline.
"""

import contextlib
import os
import resource
import signal
import subprocess
import time

import psutil
import pytest


TAG_VAR = "LITEQ_TEST_TAG"


# ---- waiting --------------------------------------------------------------------------------

def wait_for(predicate, timeout, message=None, interval=0.02):
    """Poll `predicate` until it returns something truthy (returned); fail the test after
    `timeout` s with `message` (a string, or a callable that makes one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(text or f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def is_gone(p) -> bool:
    """True when a psutil.Process (or pid) is no longer running (a zombie counts as gone)."""
    if isinstance(p, int):
        try:
            p = psutil.Process(p)
        except psutil.NoSuchProcess:
            return True
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs, timeout=10.0):
    """Wait until every psutil.Process in `procs` is gone (or a zombie); bounded.
    Returns those still running."""
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending:
        pending = [p for p in pending if not is_gone(p)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return pending


# ---- files and processes ----------------------------------------------------------------------

def read_lines(path) -> list:
    """The complete non-empty lines of a file ([] when it does not exist yet); a last line
    without its newline is still being written and is left out."""
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    if not data.endswith("\n"):
        data = data[: data.rfind("\n") + 1]
    return [line for line in data.split("\n") if line.strip()]


def cpu_seconds(p) -> float:
    """User plus system CPU time of a process (psutil.Process)."""
    t = p.cpu_times()
    return t.user + t.system


def fd_count(pid) -> int:
    """Open file descriptors of a process (entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def no_core_dumps():
    """preexec_fn of the processes tests start: no core files left behind."""
    # Segfault tests must not leave core files behind.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def kill_tree(proc, ps=None, seen=()):
    """SIGKILL a Popen that leads its own session: its process group, every psutil.Process
    in `seen`, and the live descendants of `ps` (its psutil.Process); then wait, bounded,
    for all of them. Returns those still running."""
    victims = list(seen)
    if ps is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            victims += ps.children(recursive=True)
    kill_group(proc)
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.send_signal(signal.SIGKILL)    # checks the start time: no pid reuse
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return wait_gone(victims, timeout=10)


def kill_group(proc):
    """SIGKILL the process group a Popen leads (it was started in a session of its own),
    but only while its leader is not reaped: until then the pid is the leader's, and
    after it the kernel may give it to any new process (pid_max can be as low as
    32768), which may lead a group of its own, another test's or another run's. What
    the group had left is still found by the test's tag and by the descendants seen."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def tagged_processes(tag) -> list:
    """Every live process (other than this one) whose environment carries `tag`."""
    found = []
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if p.environ().get(TAG_VAR) == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            pass
    return found
