"""Process lifecycle: forking children, reaping them, and killing the ones that pass
their time limit or their stop deadline (the supervisor's view of its processes).

A child is identified by its pid while it lives. The lifecycle knows nothing of
tasks beyond their deadlines: it reports each exit with its cause (liteqd.exits),
and the dispatcher decides what becomes of the tasks.
"""

import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence

from structlog.typing import FilteringBoundLogger

from . import logs, proc, protocol, task_output
from .channel import ChildChannel, selector_watch
# (child.py and task_output.py are not annotated yet: pyright cannot see their types.)
from .child import BOOT_ERROR_EXIT, child_main  # pyright: ignore[reportUnknownVariableType]
from .config import DaemonConfig
from .exits import ChildExit, ExitCause, classify
from .fds import Fds
from .pool import ChildHandle, Output, Pool, TaskRun

MAX_RESPAWN_DELAY = 30.0
MAX_BOOT_ERRORS = 5


class Lifecycle:
    """Spawns, reaps, retires and kills the children of one supervisor's pools."""

    def __init__(self, pools: Sequence[Pool], config: DaemonConfig, log: FilteringBoundLogger,
                 fds: Fds, identity: proc.Identity) -> None:
        self.pools = pools
        self.log = log
        self.config = config
        self.fds = fds
        self.identity = identity
        # Children let go of without their exit: the dispatcher hands their tasks back.
        self.abandoned: list[ChildHandle] = []

    def all_children(self) -> list[ChildHandle]:
        """Every child of every pool (a list: safe to change the pools meanwhile)."""
        return [c for p in self.pools for c in p.children.values()]

    # ---- spawning -------------------------------------------------------------

    def _free_slot(self) -> int:
        used = {c.slot for c in self.all_children()}
        slot = 1
        while slot in used:
            slot += 1
        return slot

    def spawn_missing(self) -> None:
        """Fork children until every pool has its size (with back-off after crashes)."""
        now = time.monotonic()
        for pool in self.pools:
            while len(pool.active) < pool.size and now >= pool.next_spawn:
                self._spawn(pool)
                if pool.failures:
                    # Crash-looping: one child per back-off period, not a burst.
                    pool.next_spawn = now + min(0.1 * 2 ** pool.failures, MAX_RESPAWN_DELAY)
                    break

    def _spawn(self, pool: Pool) -> ChildHandle:
        parent_sock, child_sock = socket.socketpair()
        slot = self._free_slot()
        close_fds = self.fds.supervisor_fds() + [parent_sock.fileno()]
        pipes = task_output.Pipes()  # the child's stdout, stderr and logging records
        logs.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            pipes.in_child(self.config.log_level)
            child_main(child_sock, slot, self.identity.pid, close_fds=close_fds,
                       report_rss=bool(self.config.max_memory_per_child),
                       max_tasks=self.config.max_tasks_per_child,
                       max_rss=int(self.config.max_memory_per_child * 1024 * 1024),
                       async_slots=pool.async_slots,
                       block_threshold=getattr(self.config, "async_block_threshold", 0.5))
        child_sock.close()
        try:
            os.setpgid(pid, pid)  # also done in the child: whichever runs first wins
        except OSError:
            pass
        parent_sock.setblocking(False)
        selector = self.fds.selector
        channel = ChildChannel(parent_sock, lambda on: False)
        child = ChildHandle(pid=pid, slot=slot, pool=pool, channel=channel)
        channel.watch = selector_watch(selector, parent_sock, ("child", child))
        pool.children[pid] = child
        pump: Callable[[Fds, ChildHandle], Output] = pipes.in_parent  # pyright: ignore
        child.output = pump(self.fds, child)
        selector.register(parent_sock, selectors.EVENT_READ, ("child", child))
        self.log.info("child.spawned", pid=pid, pool=pool.name, slot=slot)
        return child

    def signal_cancel(self, child: ChildHandle) -> None:
        """Tell the child to stop its cancelled running task; it is killed if it has not
        stopped after the kill grace."""
        if self.poke(child):
            child.cancel_deadline = time.monotonic() + self.config.kill_grace

    @staticmethod
    def poke(child: ChildHandle) -> bool:
        """Make a busy child read its messages now; False when it is gone."""
        try:
            os.kill(child.pid, protocol.CANCEL_SIGNAL)
        except ProcessLookupError:
            return False
        return True

    def maybe_recycle(self, child: ChildHandle) -> None:
        """Retire a child that has done its max tasks or grown past its max memory."""
        cfg = self.config
        reason = None
        if cfg.max_tasks_per_child and child.tasks_done >= cfg.max_tasks_per_child:
            reason = "max_tasks"
        elif cfg.max_memory_per_child and child.rss > cfg.max_memory_per_child * 1024 * 1024:
            reason = "max_memory"
        if reason and not child.retiring:
            self.log.info("child.recycling", pid=child.pid, reason=reason,
                          tasks_done=child.tasks_done, rss_bytes=child.rss)
            self.retire(child, time.monotonic() + cfg.graceful_timeout)

    # ---- ending ----------------------------------------------------------------

    def retire(self, child: ChildHandle, deadline: float) -> None:
        """Ask a child to finish its current task and exit; queued tasks come back."""
        if child.retiring or child.kill_reason:
            return
        child.retiring = True
        child.retire_deadline = deadline
        try:
            os.kill(child.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
        child.channel.close_writes()  # an idle child sees EOF and exits

    def kill(self, child: ChildHandle, reason: ExitCause, task: TaskRun | None = None) -> None:
        """SIGKILL a child's whole tree; the reason decides what happens to its tasks."""
        if child.kill_reason is None:
            child.kill_reason = reason
            child.timed_out_task = task
        proc.kill_tree(child.pid)

    def reap(self) -> list[tuple[ChildHandle, ChildExit, int]]:
        """Collect every exited child (and adopted orphan) without blocking; returns the
        children that exited, how they ended, and their waitpid status."""
        out: list[tuple[ChildHandle, ChildExit, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return out
            if pid == 0:
                return out
            for pool in self.pools:
                child = pool.children.pop(pid, None)
                if child is not None:
                    out.append((child, classify(status, child.kill_reason, child.retiring,
                                                child.timed_out_task), status))
                    break
            # else: an orphaned grandchild we adopted as subreaper; nothing to do.

    def close(self, child: ChildHandle) -> None:
        """Let go of an exited child's pipes and socket, and kill anything it left behind
        in its process group."""
        if child.output is not None:
            child.output.close()
        self.fds.unregister_fd(child.channel.sock)
        child.channel.sock.close()
        proc.kill_tree(child.pid)

    def ended(self, child: ChildHandle, ended: ChildExit, status: int, requeued: int,
              stopping: bool) -> bool:
        """Account for an exited child: back off respawns after a crash, and log the
        exit. True when children keep failing to even start (the daemon must stop)."""
        if ended.abnormal:
            child.pool.failures += 1
            child.pool.next_spawn = time.monotonic() + min(
                0.1 * 2 ** child.pool.failures, MAX_RESPAWN_DELAY)
        fatal = self._check_boot_error(child, status) and not stopping
        if fatal:
            self.fatal_boot_errors(child)
        self.log.log(30 if ended.abnormal else 20, "child.exited", pid=child.pid,
                     pool=child.pool.name, how=ended.how, reason=ended.reason,
                     tasks_done=child.tasks_done, requeued=requeued,
                     failing=child.pool.failing)
        return fatal

    def _check_boot_error(self, child: ChildHandle, status: int) -> bool:
        """True when children keep failing to even start (gunicorn's WORKER_BOOT_ERROR):
        respawning them would only loop."""
        pool = child.pool
        if child.ready:
            pool.boot_errors = 0
            return False
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == BOOT_ERROR_EXIT):
            return False  # died some other way (signal, os._exit): back off and keep trying
        pool.boot_errors += 1
        return pool.boot_errors >= MAX_BOOT_ERRORS

    def fatal_boot_errors(self, child: ChildHandle) -> None:
        """Say that the children of the pool keep failing to start."""
        pool = child.pool
        message = (f"children of pool {pool.name} failed to start {pool.boot_errors} "
                   f"times in a row (see the traceback above); stopping")
        self.log.critical("daemon.fatal", pool=pool.name, reason=message)
        print(f"liteqd: error: {message}", file=sys.stderr)

    # ---- time limits and stop deadlines -------------------------------------------

    def hard_deadline(self, child: ChildHandle) -> float | None:
        """When the task the child runs must be killed (monotonic), or None."""
        found = self._first_deadline(child)
        return found[0] if found else None

    def _first_deadline(self, child: ChildHandle) -> tuple[float, TaskRun] | None:
        """(hard deadline, run) of the child's started task that must be killed first."""
        if child.kill_reason:
            return None
        if child.pool.async_slots > 1:
            best: tuple[float, TaskRun] | None = None
            grace = self.config.kill_grace
            for run in child.inflight:
                if run.limit is None or run.started_mono is None:
                    continue
                deadline = run.started_mono + run.limit + grace
                if best is None or deadline < best[0]:
                    best = (deadline, run)
            return best
        head = child.running
        if head is None or head.limit is None or head.started_mono is None:
            return None
        return head.started_mono + head.limit + self.config.kill_grace, head

    def deadlines(self) -> list[float]:
        """Every time limit and retire deadline of the children (monotonic)."""
        out: list[float] = []
        for child in self.all_children():
            deadline = self.hard_deadline(child)
            if deadline is not None:
                out.append(deadline)
            if child.retire_deadline is not None:
                out.append(child.retire_deadline)
            if child.cancel_deadline is not None:
                out.append(child.cancel_deadline)
        return out

    def enforce_deadlines(self, stop_deadline: float | None, fast: bool) -> None:
        """Kill children past their task's hard limit, their retire deadline, or the
        stop deadline (None while not stopping; `fast`: a fast stop)."""
        now = time.monotonic()
        for child in self.all_children():
            found = self._first_deadline(child)
            if found is not None and now >= found[0]:
                run = found[1]
                self.log.warning("task.timed_out", task_id=run.id, name=run.name,
                                 queue=run.queue, attempt=run.attempts, pid=child.pid,
                                 limit_s=run.limit)
                self.kill(child, ExitCause.TIMEOUT, run)
            elif child.cancel_deadline is not None and now >= child.cancel_deadline \
                    and not child.kill_reason:
                self.log.warning("child.killed", pid=child.pid,
                                 reason="its cancelled task did not stop within the kill grace")
                self.kill(child, ExitCause.CANCEL)
            elif child.retire_deadline is not None and now >= child.retire_deadline \
                    and not child.kill_reason:
                self.log.warning("child.killed", pid=child.pid,
                                 reason="graceful timeout passed")
                self.kill(child, ExitCause.STOP)
        if stop_deadline is not None and now >= stop_deadline:
            for child in self.all_children():
                if child.kill_reason is None:
                    self.kill(child, ExitCause.STOP)
            if fast or now >= stop_deadline + 5.0:
                # Children ignoring SIGKILL (stuck in the kernel) do not hold us hostage.
                for child in self.all_children():
                    self.abandon(child)

    def abandon(self, child: ChildHandle) -> None:
        """Forget a child without waiting for its exit (its tasks go back to pending
        with the dispatcher's next look at the children it holds, see release_held)."""
        child.pool.children.pop(child.pid, None)
        self.fds.unregister_fd(child.channel.sock)
        child.channel.sock.close()
        self.abandoned.append(child)

    def kill_all_for_exit(self) -> None:
        """At exit: kill every child's tree (their tasks go back, see release_held)."""
        for child in self.all_children():
            proc.kill_tree(child.pid)
            self.abandoned.append(child)

    def take_abandoned(self) -> list[ChildHandle]:
        """The children let go of without their exit since the last call."""
        out, self.abandoned = self.abandoned, []
        return out

    def end_leftovers(self) -> None:
        """End the processes tasks left behind that outlived their child (a double
        fork, a daemonized helper): TERM, then KILL after the kill grace. Under
        systemd the unit's cgroup does this; without it, we do."""
        leftovers = proc.tagged_processes([self.identity.worker_id])
        if not leftovers:
            return
        for pid, name, how in proc.end_processes(leftovers, self.config.kill_grace):
            self.log.warning("child.leftover_killed", pid=pid, process=name, signal=how,
                             reason="a task left it running; the daemon is stopping")

    @staticmethod
    def reap_remaining(timeout: float = 2.0) -> None:
        """Wait (bounded) for the last children to be collected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.02)
