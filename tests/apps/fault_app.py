"""Tasks for the fault-injection, bad-input and load tests
(tests/daemon/test_fault_injection.py, ...).

liteqd loads this file with --app; the tests and their producer processes load it
too, to call .delay(). Every execution of a task that matters to a test is recorded
by the task itself: one line "TASK_ID PID" appended with O_APPEND in a single write,
so lines from many processes never interleave and the count is exact.

The task id comes from the worker's process title, which the daemon sets to
"liteqd: worker N running NAME#ID" while a task runs (see liteqd's process titles).
"""

import ctypes
import os
import resource
import select
import signal
import socket
import subprocess
import time

from setproctitle import getproctitle

from liteq import TaskTimeout, task

# Failed attempts come back at once: the tests are about faults, not back-off.
QUICK = dict(retry_delay=0.01, retry_backoff=1.0)

_HELD = []


def current_task_id() -> int:
    """The id of the task this worker runs now, from its process title."""
    title = getproctitle()
    head, sep, tail = title.rpartition("#")
    if not sep or " running " not in head:
        raise RuntimeError(f"cannot tell the task id from the process title {title!r}")
    return int(tail.split()[0])


def append_line(path, text):
    """Append one line to `path` in one O_APPEND write."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def record(path):
    """Record this execution: "TASK_ID PID"."""
    append_line(path, f"{current_task_id()} {os.getpid()}")


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


# ---- ordinary work ---------------------------------------------------------------------

@task(max_retries=10, **QUICK)
def work(path, seconds=0.0):
    """Record the execution, then sleep `seconds` (a short task)."""
    record(path)
    if seconds:
        time.sleep(seconds)
    return True


@task(max_retries=10, **QUICK)
def work_on_host_until(path, release, limit=120.0):
    """work_on_host() that runs until the file `release` exists (at most `limit` s), so
    a test decides when it ends, however slowly a loaded machine runs the test."""
    append_line(path, f"{current_task_id()} {os.getpid()} {socket.gethostname()}")
    deadline = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


@task(max_retries=10, **QUICK)
def stamp(path):
    """Record the execution with the time it started: "TASK_ID PID EPOCH_SECONDS"."""
    append_line(path, f"{current_task_id()} {os.getpid()} {time.time()!r}")


@task(max_retries=10, **QUICK)
def work_on_host(path, seconds=0.0):
    """Record the execution with the host's name ("TASK_ID PID HOSTNAME"), then sleep
    `seconds` (tests/postgres/test_hosts.py: each daemon runs in a UTS namespace of its own)."""
    append_line(path, f"{current_task_id()} {os.getpid()} {socket.gethostname()}")
    if seconds:
        time.sleep(seconds)
    return True


@task(max_retries=0)
def add(a, b):
    return a + b


@task(max_retries=0)
def returns_object():
    return object()


@task(max_retries=0, **QUICK)
def work_or_exit(path, crash):
    """Record the execution; when `crash`, kill the worker process with os._exit(1)."""
    record(path)
    if crash:
        os._exit(1)
    return True


@task(max_retries=3, **QUICK)
def grow(path, mb):
    """Record the execution and keep `mb` MiB more resident in this worker process."""
    record(path)
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1  # touch every page so it counts in RSS
    _HELD.append(block)
    return mb


# ---- time limits -------------------------------------------------------------------------

@task(timeout=1, max_retries=0)
def stoppable(marker):
    """Record the start, then sleep far past the 1 s limit (the test SIGSTOPs us)."""
    append_line(marker, f"{current_task_id()} {os.getpid()}")
    time.sleep(30)
    return "not reached"


@task(timeout=1, max_retries=0)
def blocked_with_grandchildren(pidfile):
    """Block SIGTERM and SIGALRM (so neither the soft limit nor a TERM gets through),
    start grandchildren three ways, then sit in a C-level sleep far past the limit.

    pidfile gets "WORKER PLAIN SESSION ORPHAN": a plain `sleep 600`; one in a session
    of its own; and one double-forked after setsid(), whose parent exits at once so it
    is an orphan no longer under this worker.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGALRM})
    plain = subprocess.Popen(["sleep", "600"])
    session = subprocess.Popen(["sleep", "600"], start_new_session=True)
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            os.setsid()
            orphan = os.fork()
            if orphan == 0:
                os.close(w)
                os.execvp("sleep", ["sleep", "600"])
            os.write(w, str(orphan).encode())
        finally:
            os._exit(0)
    os.close(w)
    orphan = int(os.read(r, 64).decode())
    os.close(r)
    os.waitpid(middle, 0)
    write_atomically(pidfile, f"{os.getpid()} {plain.pid} {session.pid} {orphan}")
    time.sleep(60)
    return "not reached"


@task(timeout=1, max_retries=0)
def swallow_timeout(marker):
    """Catch the soft-timeout exception and go on sleeping: only the hard kill ends this."""
    append_line(marker, f"start {os.getpid()}")
    try:
        time.sleep(30)
    except TaskTimeout:
        append_line(marker, f"caught {time.time()!r}")
        time.sleep(60)
    return "not reached"


@task(max_retries=0)
def hold(marker, seconds):
    """Record the start ("TASK_ID PID"), then sleep `seconds`."""
    append_line(marker, f"{current_task_id()} {os.getpid()}")
    time.sleep(seconds)
    return seconds


@task(max_retries=0)
def hold_without_sleep(marker, seconds):
    """hold() that waits on select() instead: libfaketime, when it leaves the monotonic
    clock alone, makes time.sleep() fail with EINVAL (tests/postgres/test_liveness.py)."""
    append_line(marker, f"{current_task_id()} {os.getpid()}")
    select.select([], [], [], seconds)
    return seconds


@task(max_retries=0)
def hold_until(marker, go):
    """Record the start ("TASK_ID PID"), then wait until the file `go` exists."""
    append_line(marker, f"{current_task_id()} {os.getpid()}")
    while not os.path.exists(go):
        time.sleep(0.05)
    return "went"


# ---- poison ------------------------------------------------------------------------------

@task(max_retries=2, **QUICK)
def segfault():
    ctypes.string_at(0)


@task(max_retries=2, **QUICK)
def exit_one():
    os._exit(1)


def _vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@task(max_retries=2, **QUICK)
def huge_allocation():
    """Cap this process's address space (RLIMIT_AS) just above what it uses, then ask
    for 8 GiB: the kernel refuses the mapping and the allocation fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + 256 * 1024 * 1024, hard))
    try:
        block = bytearray(8 * 1024 * 1024 * 1024)
        return len(block)
    finally:
        # The worker process lives on: give it back its address space.
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
