"""Process lifecycle: spawning children, talking to them, reaping them, and killing
the ones that pass their time limit (the supervisor's view of its processes).

A child is identified by its pid while it lives; its socket carries the
messages of liteqd.protocol. What happens to a dead child's tasks is decided
here (timed out, crashed, or stopped by us) and handed to the dispatcher.
"""

import os
import selectors
import signal
import socket
import sys
import time

from . import logs, proc, protocol, task_output
from .child import BOOT_ERROR_EXIT, child_main
from .pool import ChildHandle

MAX_RESPAWN_DELAY = 30.0
MAX_BOOT_ERRORS = 5
_SIGNAMES = {s.value: s.name for s in signal.Signals}


def describe_exit(status) -> str:
    """'exited with code N' or 'killed by signal NAME (N)' for a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {_SIGNAMES.get(sig, sig)} ({sig})"
    return f"exited with code {os.WEXITSTATUS(status)}"


def signal_name(sig):
    """SIGTERM for 15, and so on."""
    return _SIGNAMES.get(sig, str(sig))


class Lifecycle:
    """Spawns, feeds, reaps and kills the children of one supervisor's pools."""

    def __init__(self, sup) -> None:
        self.sup = sup
        self.log = sup.log
        self.config = sup.config

    def all_children(self):
        """Every child of every pool (a list: safe to change the pools meanwhile)."""
        return [c for p in self.sup.pools for c in p.children.values()]

    # ---- spawning -------------------------------------------------------------

    def _free_slot(self):
        used = {c.slot for c in self.all_children()}
        slot = 1
        while slot in used:
            slot += 1
        return slot

    def spawn_missing(self) -> None:
        """Fork children until every pool has its size (with back-off after crashes)."""
        if self.sup.stopping:
            return
        now = time.monotonic()
        for pool in self.sup.pools:
            while len(pool.active) < pool.size and now >= pool.next_spawn:
                self._spawn(pool)
                if pool.failures:
                    # Crash-looping: one child per back-off period, not a burst.
                    pool.next_spawn = now + min(0.1 * 2 ** pool.failures, MAX_RESPAWN_DELAY)
                    break

    def _spawn(self, pool):
        parent_sock, child_sock = socket.socketpair()
        slot = self._free_slot()
        close_fds = self.sup.supervisor_fds() + [parent_sock.fileno()]
        pipes = task_output.Pipes()  # the child's stdout, stderr and logging records
        logs.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            pipes.in_child(self.config.log_level)
            child_main(child_sock, slot, self.sup.pid, close_fds=close_fds,
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
        child = ChildHandle(pid=pid, slot=slot, pool=pool, sock=parent_sock,
                            reader=protocol.LineReader())
        pool.children[pid] = child
        child.output = pipes.in_parent(self.sup, child)
        self.sup.selector.register(parent_sock, selectors.EVENT_READ, ("child", child))
        self.log.info("child.spawned", pid=pid, pool=pool.name, slot=slot)
        return child

    # ---- talking ---------------------------------------------------------------

    def send(self, child, messages) -> bool:
        """Queue messages for a child and write what its socket takes now; False when
        the child is gone.

        The supervisor never waits on a child: what the socket does not take at once
        (a big argument, a child busy with a long task behind its prefetch) stays in
        the child's outbox and is written as the socket drains, from where it stopped.
        """
        child.outbox.append(memoryview(protocol.encode(messages)))
        return self.flush(child)

    def flush(self, child) -> bool:
        """Write as much of the child's outbox as its socket takes; False when it is gone."""
        outbox = child.outbox
        while outbox:
            try:
                sent = child.sock.send(outbox[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                outbox.clear()
                self._watch_writes(child, False)
                return False
            if sent == len(outbox[0]):
                outbox.popleft()
            else:
                outbox[0] = outbox[0][sent:]
        self._watch_writes(child, bool(outbox))
        return True

    def _watch_writes(self, child, on) -> None:
        if child.watching_writes == on or child.sock.fileno() < 0:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            self.sup.selector.modify(child.sock, events, ("child", child))
        except (KeyError, ValueError):
            return  # no longer watched (its end of the socket was closed)
        child.watching_writes = on

    def on_ready(self, child, mask) -> None:
        """The child's socket is readable or writable (from the select loop)."""
        if mask & selectors.EVENT_WRITE and not self.flush(child):
            self.kill(child, "crash")
        if mask & selectors.EVENT_READ:
            self.read(child)

    def read(self, child) -> bool:
        """Read and handle what a child sent; False once nothing more is there."""
        try:
            data = child.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self.sup.unregister_fd(child.sock)  # EOF: the exit is handled when it is reaped
            return False
        try:
            messages = child.reader.feed(data)
        except ValueError as exc:
            self.log.error("child.protocol_error", pid=child.pid, error=str(exc))
            self.kill(child, "crash")
            return False
        for msg in messages:
            self._on_message(child, msg)
        return True

    def _on_message(self, child, msg) -> None:
        if msg.kind == "r":
            self._on_result(child, msg)
        elif msg.kind == "g":
            self._on_started(child, msg)
        elif msg.kind == "s" and child.pool.async_slots > 1:
            for run in child.inflight:
                if run.id == msg.id:
                    child.inflight.remove(run)
                    self.sup.dispatch.release([run.id])
                    break
        elif msg.kind == "s":
            # Handed back unstarted; it may sit behind the task still running, or be the
            # one we took for started (the child starts the next in its place).
            for i, run in enumerate(child.inflight):
                if run.id == msg.id:
                    del child.inflight[i]
                    self.sup.dispatch.release([run.id])
                    if i == 0:
                        self._start_next(child, time.time())
                    break
            if len(child.inflight) <= 1:
                child.recalling = False
        elif msg.kind == "ready":
            child.ready = True
            self.sup.dispatch.claim_soon()

    def _on_started(self, child, msg):
        """A child of many coroutines started these tasks: their clocks run from now."""
        wanted = set(msg.ids)
        now = time.monotonic()
        dispatch = self.sup.dispatch
        for run in child.inflight:
            if run.id in wanted and run.started_mono is None:
                run.started_mono = now
                run.started_wall = msg.started
                dispatch.log_started(child, run)

    def _take_result(self, child, msg):
        """The run a Result is about, out of the child's inflight; None when unknown."""
        if child.pool.async_slots > 1:
            for run in child.inflight:
                if run.id == msg.id:
                    child.inflight.remove(run)
                    child.output.task_done(run)
                    if run.started_mono is None:  # (its Started was lost: never mind)
                        run.started_mono, run.started_wall = time.monotonic(), msg.started
                    return run
            return None
        child.output.task_done()  # output read later up to the task's end mark is still its
        run = child.inflight.popleft() if child.inflight else None
        return run if run is not None and run.id == msg.id else None

    def _on_result(self, child, msg):
        run = self._take_result(child, msg)
        if run is None:
            self.log.error("child.protocol_error", pid=child.pid, task_id=msg.id)
            return
        if run.cancelled:
            child.cancel_deadline = None
            self.log.info("task.cancelled", task_id=run.id, name=run.name, queue=run.queue,
                          attempt=run.attempts, pid=child.pid,
                          how="stopped" if not msg.ok else "finished before the signal")
        child.tasks_done += 1
        child.rss = msg.rss or child.rss
        child.pool.observe(msg.finished - msg.started)
        if child.pool.async_slots == 1:
            self._start_next(child, msg.finished)
        elif child.cancel_deadline is not None and not any(
                r.cancelled for r in child.started_runs()):
            child.cancel_deadline = None
        if not run.cancelled:   # a cancelled task's row is final already
            self.sup.dispatch.record(run, msg.ok, msg.text, msg.started, msg.finished,
                                     msg.timed_out, msg.retry)
        if msg.ok:
            child.pool.failures = 0
        if msg.timed_out and not (run.coroutine and child.pool.async_slots > 1):
            # The child exits after a timeout (it may have left subprocesses
            # behind); its process group is killed when it is reaped. (A child of
            # many coroutines cancels just the one that timed out and goes on.)
            self.retire(child, time.monotonic() + self.config.kill_grace)
        else:
            self._maybe_recycle(child)

    def _start_next(self, child, when) -> None:
        """The child goes on with the next task it holds, if any: its clock starts."""
        child.recalling = False
        if not child.inflight:
            return
        nxt = child.inflight[0]
        nxt.started_mono = time.monotonic()
        nxt.started_wall = when
        self.sup.dispatch.log_started(child, nxt)
        if nxt.cancelled:
            self._signal_cancel(child)

    def recall(self, child) -> None:
        """Ask a busy child to hand back the tasks it holds unstarted, now (its running
        task turned out long: they would wait behind it while other children idle)."""
        child.recalling = True
        queued = [run.id for run in list(child.inflight)[1:]]
        if not self.send(child, [protocol.give_back(queued)]):
            self.kill(child, "crash")
            return
        try:
            os.kill(child.pid, protocol.CANCEL_SIGNAL)
        except ProcessLookupError:
            pass

    def cancel(self, task_ids) -> None:
        """Stop the cancelled tasks among those the children hold: a queued one is never
        started; a running one gets TaskCancelled, and its child's process tree is
        killed if it has not stopped after the kill grace."""
        wanted = set(task_ids)
        for child in self.all_children():
            hit = [run for run in child.inflight if run.id in wanted and not run.cancelled]
            if not hit or child.kill_reason:
                continue
            for run in hit:
                run.cancelled = True
                self.log.info("task.cancelling", task_id=run.id, name=run.name, pid=child.pid)
            if not self.send(child, [protocol.cancel(run.id) for run in hit]):
                self.kill(child, "crash")
                continue
            if any(run.cancelled for run in child.started_runs()):
                self._signal_cancel(child)

    def _signal_cancel(self, child) -> None:
        try:
            os.kill(child.pid, protocol.CANCEL_SIGNAL)
        except ProcessLookupError:
            return
        child.cancel_deadline = time.monotonic() + self.config.kill_grace

    def _maybe_recycle(self, child) -> None:
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

    def retire(self, child, deadline) -> None:
        """Ask a child to finish its current task and exit; queued tasks come back."""
        if child.retiring or child.kill_reason:
            return
        child.retiring = True
        child.retire_deadline = deadline
        try:
            os.kill(child.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
        try:
            child.sock.shutdown(socket.SHUT_WR)  # an idle child sees EOF and exits
        except OSError:
            pass

    def kill(self, child, reason, task=None) -> None:
        """SIGKILL a child's whole tree; the reason decides what happens to its tasks."""
        if child.kill_reason is None:
            child.kill_reason = reason
            child.timed_out_task = task
        proc.kill_tree(child.pid)

    def reap(self) -> None:
        """Collect every exited child (and adopted orphan) without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for pool in self.sup.pools:
                child = pool.children.pop(pid, None)
                if child is not None:
                    self._on_exit(child, status)
                    break
            # else: an orphaned grandchild we adopted as subreaper; nothing to do.

    def _on_exit(self, child, status) -> None:
        # Results it wrote before dying are still in the socket: take them first.
        while self.read(child):
            pass
        child.output.close()
        self.sup.unregister_fd(child.sock)
        child.sock.close()
        how = describe_exit(status)
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        runs = list(child.inflight)
        head = runs[0] if runs else None
        # Kill anything the child left behind in its process group.
        proc.kill_tree(child.pid)
        dispatch = self.sup.dispatch
        if child.pool.async_slots > 1:
            runs = self._exit_many(child, runs, how, clean)
        elif child.kill_reason == "timeout" and head is not None:
            dispatch.record(head, False, f"TaskTimeout: timed out after {head.limit:g} s (the "
                            f"child was killed {self.config.kill_grace:g} s after the limit)",
                            head.started_wall, time.time(), True)
            runs = runs[1:]
        elif child.kill_reason == "cancel" and head is not None and head.cancelled:
            self.log.warning("task.cancelled", task_id=head.id, name=head.name,
                             queue=head.queue, attempt=head.attempts, pid=child.pid,
                             how="killed: it did not stop within the kill grace")
            runs = runs[1:]
        elif child.kill_reason == "stop" or (child.retiring and child.kill_reason):
            pass  # stopped by us: everything it held goes back untouched
        elif head is not None and not (child.retiring and clean):
            dispatch.record(head, False, f"ChildDied: the worker process {how} while running "
                            f"this task", head.started_wall, time.time(), False)
            runs = runs[1:]
        dispatch.release([r.id for r in runs])
        # "crash": a send found the child already gone; it died on its own all the same.
        abnormal = not clean and child.kill_reason in (None, "crash") and not child.retiring
        if abnormal:
            child.pool.failures += 1
            child.pool.next_spawn = time.monotonic() + min(
                0.1 * 2 ** child.pool.failures, MAX_RESPAWN_DELAY)
        self._check_boot_error(child, status)
        self.log.log(30 if abnormal else 20, "child.exited", pid=child.pid,
                     pool=child.pool.name, how=how, reason="crashed" if abnormal else
                     child.kill_reason or ("retired" if child.retiring else "exited"),
                     tasks_done=child.tasks_done, requeued=len(runs),
                     failing=child.pool.failing)
        dispatch.claim_soon()
        self.sup.show_title()

    def _exit_many(self, child, runs, how, clean):
        """What becomes of the tasks of a child of many coroutines that exited; returns
        those to release unstarted.

        Killed for one task's time limit (its coroutine ignored the cancellation):
        that task times out; killed for an ignored cancel: the cancelled ones are
        cancelled; either way the other tasks go back to pending untouched, as on a
        stop (they did nothing wrong). A crash: every started task failed its attempt
        (ChildDied, retried per its policy), as the one task of a one-task child.
        """
        dispatch = self.sup.dispatch
        started = [r for r in runs if r.started_mono is not None]
        rest = [r for r in runs if r.started_mono is None]
        if child.kill_reason == "timeout":
            victim = child.timed_out_task
            for run in started:
                if run is victim:
                    dispatch.record(run, False, f"TaskTimeout: timed out after {run.limit:g} "
                                    f"s (the child was killed {self.config.kill_grace:g} s "
                                    f"after the limit)", run.started_wall, time.time(), True)
                else:
                    rest.append(run)
        elif child.kill_reason == "cancel":
            for run in started:
                if run.cancelled:
                    self.log.warning("task.cancelled", task_id=run.id, name=run.name,
                                     queue=run.queue, attempt=run.attempts, pid=child.pid,
                                     how="killed: it did not stop within the kill grace")
                else:
                    rest.append(run)
        elif child.kill_reason == "stop" or (child.retiring and child.kill_reason) or \
                (child.retiring and clean):
            rest.extend(started)
        else:
            for run in started:
                if run.cancelled:
                    continue  # its row is final already
                dispatch.record(run, False, f"ChildDied: the worker process {how} while "
                                f"running this task", run.started_wall, time.time(), False)
        return rest

    def _check_boot_error(self, child, status):
        """Stop the daemon when children keep failing to even start (gunicorn's
        WORKER_BOOT_ERROR): respawning them would only loop."""
        pool = child.pool
        if child.ready:
            pool.boot_errors = 0
            return
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == BOOT_ERROR_EXIT):
            return  # died some other way (signal, os._exit): back off and keep trying
        pool.boot_errors += 1
        if pool.boot_errors >= MAX_BOOT_ERRORS and not self.sup.stopping:
            message = (f"children of pool {pool.name} failed to start {pool.boot_errors} "
                       f"times in a row (see the traceback above); stopping")
            self.log.critical("daemon.fatal", pool=pool.name, reason=message)
            print(f"liteqd: error: {message}", file=sys.stderr)
            self.sup.exit_code = 3
            self.sup.request_stop(fast=True, reason="children cannot start")

    # ---- time limits and stop deadlines -------------------------------------------

    def hard_deadline(self, child):
        """When the task the child runs must be killed (monotonic), or None."""
        found = self._first_deadline(child)
        return found[0] if found else None

    def _first_deadline(self, child):
        """(hard deadline, run) of the child's started task that must be killed first."""
        if child.kill_reason:
            return None
        if child.pool.async_slots > 1:
            best = None
            grace = self.config.kill_grace
            for run in child.inflight:
                if run.limit is None or run.started_mono is None:
                    continue
                deadline = run.started_mono + run.limit + grace
                if best is None or deadline < best[0]:
                    best = (deadline, run)
            return best
        run = child.running
        if run is None or run.limit is None or run.started_mono is None:
            return None
        return run.started_mono + run.limit + self.config.kill_grace, run

    def deadlines(self):
        """Every time limit and retire deadline of the children (monotonic)."""
        out = []
        for child in self.all_children():
            deadline = self.hard_deadline(child)
            if deadline is not None:
                out.append(deadline)
            if child.retire_deadline is not None:
                out.append(child.retire_deadline)
            if child.cancel_deadline is not None:
                out.append(child.cancel_deadline)
        return out

    def enforce_deadlines(self) -> None:
        """Kill children past their task's hard limit, their retire deadline, or the
        stop deadline."""
        now = time.monotonic()
        for child in self.all_children():
            found = self._first_deadline(child)
            if found is not None and now >= found[0]:
                run = found[1]
                self.log.warning("task.timed_out", task_id=run.id, name=run.name,
                                 queue=run.queue, attempt=run.attempts, pid=child.pid,
                                 limit_s=run.limit)
                self.kill(child, "timeout", run)
            elif child.cancel_deadline is not None and now >= child.cancel_deadline \
                    and not child.kill_reason:
                self.log.warning("child.killed", pid=child.pid,
                                 reason="its cancelled task did not stop within the kill grace")
                self.kill(child, "cancel")
            elif child.retire_deadline is not None and now >= child.retire_deadline \
                    and not child.kill_reason:
                self.log.warning("child.killed", pid=child.pid,
                                 reason="graceful timeout passed")
                self.kill(child, "stop")
        sup = self.sup
        if sup.stopping and sup.stop_deadline is not None and now >= sup.stop_deadline:
            for child in self.all_children():
                if child.kill_reason is None:
                    self.kill(child, "stop")
            if sup.stopping == "fast" or now >= sup.stop_deadline + 5.0:
                # Children ignoring SIGKILL (stuck in the kernel) do not hold us hostage.
                for child in self.all_children():
                    self.abandon(child)

    def abandon(self, child) -> None:
        """Forget a child (its tasks go back to pending) without waiting for its exit."""
        child.pool.children.pop(child.pid, None)
        self.sup.dispatch.release([r.id for r in child.inflight])
        child.inflight.clear()
        self.sup.unregister_fd(child.sock)
        child.sock.close()

    def kill_all_for_exit(self) -> None:
        """At exit: kill every child's tree and hand its tasks back."""
        for child in self.all_children():
            proc.kill_tree(child.pid)
            self.sup.dispatch.release([r.id for r in child.inflight])
            child.inflight.clear()

    def end_leftovers(self) -> None:
        """End the processes tasks left behind that outlived their child (a double
        fork, a daemonized helper): TERM, then KILL after the kill grace. Under
        systemd the unit's cgroup does this; without it, we do."""
        leftovers = proc.tagged_processes([self.sup.worker_id])
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
