"""What a worker child knows of itself outside its serve loop: whether its supervisor
still lives, the task it runs, and the processes below it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil

from . import logs
from .child_channel import StopRequest
from .proc import descendants


class OrphanWatch:
    """What the child needs to notice and report that its supervisor is gone."""
    parent_pid: int | None = None
    slot: int | None = None
    task_id: int | None = None      # the task running now, if any
    exiting = False


_waker: Callable[[], None] | None = None  # makes a many-coroutine child's loop look again


def set_waker(waker: Callable[[], None] | None) -> None:
    """Let the signal handlers wake an event loop that reads the channel itself
    (liteqd.async_child), or stop doing so (None)."""
    global _waker
    _waker = waker


def wake_loop() -> None:
    """Make the child's event loop look at the channel (when it reads it itself)."""
    fn = _waker
    if fn is not None:
        fn()


def exit_orphaned() -> None:
    """Log that the supervisor is gone, once, and exit at once.

    The task of a dead supervisor is reclaimed by the next daemon on the database,
    which also ends any subprocess the task left (they carry its worker id).
    """
    if OrphanWatch.exiting:
        return  # a signal came while the main code was already on its way out
    OrphanWatch.exiting = True
    try:
        fields: dict[str, object] = {"pid": os.getpid(), "slot": OrphanWatch.slot,
                                     "supervisor_pid": OrphanWatch.parent_pid}
        if OrphanWatch.task_id is not None:
            fields["task_id"] = OrphanWatch.task_id
        logs.get_logger().warning("child.orphaned", **fields)
        logs.write_now()
    finally:
        os._exit(0)


def on_socket_closed() -> None:
    """Our socket to the supervisor ended. After a stop request that is the normal way
    out (return). Otherwise only a dying supervisor closes it: the kernel closes its
    sockets a moment before it signals us, so wait briefly for the verdict (a stop
    request may also still be on its way), then exit as an orphan."""
    deadline = time.monotonic() + 2.0
    while not StopRequest.requested and time.monotonic() < deadline:
        if os.getppid() != OrphanWatch.parent_pid:
            break
        time.sleep(0.005)
    if not StopRequest.requested:
        exit_orphaned()


def own_rss() -> int:
    """This process's resident memory in bytes (0 when /proc cannot tell)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def kill_descendants() -> None:
    """Kill every process below this one (what a timed-out task started)."""
    for proc in descendants(os.getpid()):
        try:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def reap_adopted() -> None:
    """Collect exited processes this child adopted as subreaper (a task's double-forked
    orphans), so they do not stay zombies while the child lives on."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Recycling:
    """A child's recycling limits (tasks, resident memory) and its count of tasks done."""

    def __init__(self, report_rss: bool, max_tasks: int, max_rss: int) -> None:
        self.report_rss = report_rss
        self.max_tasks = max_tasks
        self.max_rss = max_rss
        self.done = 0

    def rss(self) -> int:
        """The child's resident memory to report with a result (0 when not reported)."""
        return own_rss() if self.report_rss else 0

    def task_done(self, rss: int) -> None:
        """Count one more task. Past a limit the child stops: it hands back what is
        queued (the supervisor's SIGUSR1 would come too late for short tasks) and
        exits once what runs has finished; the supervisor replaces it."""
        self.done += 1
        if (self.max_tasks and self.done >= self.max_tasks) or \
                (self.max_rss and rss > self.max_rss):
            StopRequest.requested = True
