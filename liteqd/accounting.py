"""What the children say: results, starts, hand-backs and readiness, read off their
channels and dispatched by message type (the types of liteqd.protocol).

A result's task leaves its child's channel here and its outcome goes to the
dispatcher; the child's own state (tasks done, memory, whether it must be
recycled or retired after a timeout) goes to the lifecycle.
"""

import selectors
import time
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from . import protocol
from .config import DaemonConfig
from .dispatch import Dispatcher
from .exits import ExitCause
from .fds import Fds
from .lifecycle import Lifecycle
from .pool import ChildHandle, TaskRun


class ChildMessages:
    """Reads the children's sockets and acts on each message by its type."""

    def __init__(self, config: DaemonConfig, log: FilteringBoundLogger, fds: Fds,
                 lifecycle: Lifecycle, dispatch: Dispatcher) -> None:
        self.config = config
        self.log = log
        self.fds = fds
        self.lifecycle = lifecycle
        self.dispatch = dispatch
        self._handlers: dict[type, Callable[[ChildHandle, object], None]] = {
            protocol.Result: self._on_result,
            protocol.Started: self._on_started,
            protocol.Skipped: self._on_skipped,
            protocol.Ready: self._on_ready_msg,
        }

    def on_ready(self, child: ChildHandle, mask: int) -> None:
        """The child's socket is readable or writable (from the select loop)."""
        if mask & selectors.EVENT_WRITE and not child.channel.flush():
            self.lifecycle.kill(child, ExitCause.CRASH)
        if mask & selectors.EVENT_READ:
            self.read(child)

    def read(self, child: ChildHandle) -> bool:
        """Read and handle what a child sent; False once nothing more is there."""
        channel = child.channel
        try:
            messages = channel.receive()
        except ValueError as exc:
            self.log.error("child.protocol_error", pid=child.pid, error=str(exc))
            self.lifecycle.kill(child, ExitCause.CRASH)
            return False
        if messages is None:
            if channel.eof:
                self.fds.unregister_fd(channel.sock)  # the exit is handled when it is reaped
            return False
        handlers = self._handlers
        for msg in messages:
            handler = handlers.get(type(msg))
            if handler is not None:
                handler(child, msg)
        return True

    def drain(self, child: ChildHandle) -> None:
        """Handle every message an exited child wrote before dying."""
        while self.read(child):
            pass

    # ---- by message type ---------------------------------------------------------

    def _on_ready_msg(self, child: ChildHandle, msg: object) -> None:
        child.ready = True
        self.dispatch.claim_soon()

    def _on_skipped(self, child: ChildHandle, msg: object) -> None:
        assert isinstance(msg, protocol.Skipped)
        if child.pool.async_slots > 1:
            run = child.channel.take(msg.id)
            if run is not None:
                self.dispatch.outcomes.release([run.id])
            return
        # Handed back unstarted; it may sit behind the task still running, or be the
        # one we took for started (the child starts the next in its place).
        was_head = bool(child.inflight) and child.inflight[0].id == msg.id
        run = child.channel.take(msg.id)
        if run is not None:
            self.dispatch.outcomes.release([run.id])
            if was_head:
                self.dispatch.start_next(child, time.time())
        if len(child.inflight) <= 1:
            child.recalling = False

    def _on_started(self, child: ChildHandle, msg: object) -> None:
        """A child of many coroutines started these tasks: their clocks run from now."""
        assert isinstance(msg, protocol.Started)
        wanted = set(msg.ids)
        now = time.monotonic()
        for run in child.inflight:
            if run.id in wanted and run.started_mono is None:
                run.started_mono = now
                run.started_wall = msg.started
                self.dispatch.outcomes.log_started(child, run)

    def _take_result(self, child: ChildHandle, msg: protocol.Result) -> TaskRun | None:
        """The run a Result is about, out of the child's inflight; None when unknown."""
        output = child.output
        if child.pool.async_slots > 1:
            run = child.channel.take(msg.id)
            if run is not None:
                if output is not None:
                    output.task_done(run)
                if run.started_mono is None:  # (its Started was lost: never mind)
                    run.started_mono, run.started_wall = time.monotonic(), msg.started
            return run
        if output is not None:
            output.task_done()  # output read later up to the task's end mark is still its
        return child.channel.take_head(msg.id)

    def _on_result(self, child: ChildHandle, msg: object) -> None:
        assert isinstance(msg, protocol.Result)
        run = self._take_result(child, msg)
        if run is None:
            self.log.error("child.protocol_error", pid=child.pid, task_id=msg.id)
            return
        many = child.pool.async_slots > 1
        if run.cancelled:
            child.cancel_deadline = None
            self.log.info("task.cancelled", task_id=run.id, name=run.name, queue=run.queue,
                          attempt=run.attempts, pid=child.pid,
                          how="stopped" if not msg.ok else "finished before the signal")
        child.tasks_done += 1
        child.rss = msg.rss or child.rss
        child.pool.observe(msg.finished - msg.started)
        if not many:
            self.dispatch.start_next(child, msg.finished)
        elif child.cancel_deadline is not None and not any(
                r.cancelled for r in child.started_runs()):
            child.cancel_deadline = None
        if not run.cancelled:   # a cancelled task's row is final already
            self.dispatch.outcomes.record(run, msg.ok, msg.text, msg.started, msg.finished,
                                          msg.timed_out, msg.retry)
        if msg.ok:
            child.pool.failures = 0
        if msg.timed_out and not (run.coroutine and many):
            # The child exits after a timeout (it may have left subprocesses
            # behind); its process group is killed when it is reaped. (A child of
            # many coroutines cancels just the one that timed out and goes on.)
            self.lifecycle.retire(child, time.monotonic() + self.config.kill_grace)
        else:
            self.lifecycle.maybe_recycle(child)
