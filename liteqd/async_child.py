"""The serve loop of a child that runs up to N coroutine tasks at once
(`liteqd --async-concurrency N`, N > 1).

The child keeps one event loop and runs each `async def` task as an asyncio task
on it, up to N at a time. The socket to the supervisor is read by the loop
itself, so task messages, cancels and give-backs are acted on while coroutines
run. Because the child decides when a task starts, it tells the supervisor in a
Started message (protocol.Started), and the task's time limit runs from then.

Per task: its own time limit (a timer that cancels just that asyncio task), its
own cancel, its own liteq.current_task (asyncio gives each task a copy of the
context), hooks, result and retry (liteqd.executor.run_coroutine). A coroutine
that ignores its cancellation is left to the supervisor's hard limit, which kills
the child, as with a sync task.

Sync tasks keep running one at a time: in the order they came, a sync task waits
until the child's coroutines have finished, then runs alone on the main thread
(the loop stands still meanwhile, so no coroutine starts), exactly as in a
one-task child: SIGALRM time limit, cancel by signal, and the child exits after
a sync task's timeout. The supervisor, for its part, gives sync tasks to children
with nothing running when it can (see dispatch).

A loop watchdog (liteqd.loop_watchdog) logs `task.loop_blocked` with the task id
when one coroutine holds the loop past --async-block-threshold.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from typing import Any

from setproctitle import setproctitle

from liteq.core import TASK_REGISTRY

from . import protocol, task_output
from .child_channel import Channel, StopRequest, SupervisorGone
from .child_state import (OrphanWatch, Recycling, kill_descendants, on_socket_closed,
                          reap_adopted, set_waker)
from .executor import CoroutineStop, Executor, Outcome, StopReason, run_coroutine
from .loop_watchdog import LoopWatchdog


class _Running:
    """One coroutine task the child runs."""

    __slots__ = ("msg", "task", "stop", "timer", "started")

    def __init__(self, msg: protocol.TaskMessage) -> None:
        self.msg = msg
        self.stop = CoroutineStop(msg.timeout)
        self.task: asyncio.Task[Outcome] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = time.time()


class AsyncServer:
    """Runs the tasks of one child, up to `slots` coroutines at once."""

    def __init__(self, channel: Channel, executor: Executor, index: int, slots: int,
                 block_threshold: float, recycling: Recycling) -> None:
        self.channel = channel
        self.executor = executor
        self.index = index
        self.slots = slots
        self.recycling = recycling
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.running: dict[int, _Running] = {}
        self.by_task: dict[asyncio.Task[Outcome], _Running] = {}
        self.outbox: list[protocol.Message] = []
        self.started_ids: list[int] = []
        self.eof = False
        self.turn_due = False
        self.title = ""
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.watchdog = LoopWatchdog(self.loop, block_threshold, self._owner_of,
                                     lambda: bool(self.running))

    # ---- the loop ----------------------------------------------------------------

    def serve(self) -> None:
        """Serve until a stop (or the supervisor's end of the socket) and no task runs."""
        sock = self.channel.sock
        self.loop.add_reader(sock.fileno(), self._on_readable)
        self.watchdog.start()
        set_waker(self.wake)
        try:
            self.loop.call_soon(self.process)
            self.loop.run_until_complete(self.finished)
        finally:
            set_waker(None)
            self.watchdog.stop()

    def wake(self) -> None:
        """Look at the channel again soon (from a signal handler: a stop, a cancel)."""
        self.loop.call_soon_threadsafe(self._turn_soon)

    def _turn_soon(self) -> None:
        if not self.turn_due:
            self.turn_due = True
            self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        self.turn_due = False
        self.process()

    def _on_readable(self) -> None:
        channel = self.channel
        if channel.busy:
            return  # a signal handler is reading; it wakes us when done
        channel.busy = True
        try:
            while True:
                try:
                    data = channel.sock.recv(1 << 16, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    data = b""
                if not data:
                    self.eof = True
                    self.loop.remove_reader(channel.sock.fileno())
                    break
                channel.parse(data)
        finally:
            channel.busy = False
        if self.eof and not StopRequest.requested:
            # Only a dying supervisor closes the socket without a stop: this waits
            # for the verdict and exits as an orphan, or returns after a stop.
            on_socket_closed()
        self.process()

    def process(self) -> None:
        """Act on what the supervisor sent: give-backs, cancels, and new tasks while
        there is room; then send what is due and finish when the child may exit."""
        channel = self.channel
        if channel.recalled:
            channel.hand_back(only=channel.recalled)
        if channel.cancelled:
            for task_id in channel.cancelled:
                run = self.running.get(task_id)
                if run is not None and run.stop.reason is None:
                    self._stop(run, StopReason.CANCEL)
        pending = channel.pending
        while pending and not StopRequest.requested:
            msg = pending[-1]
            answer = channel.refusal(msg)
            if answer is not None:
                pending.pop()
                self.outbox.append(answer)
                continue
            task = TASK_REGISTRY.get(msg.name)
            if task is not None and task.is_async:
                if len(self.running) >= self.slots:
                    break
                pending.pop()
                self._start(msg)
            else:
                if self.running:
                    break  # a sync task runs alone: wait for the coroutines to finish
                pending.pop()
                self._run_sync(msg)
        if StopRequest.requested:
            self._flush()
            channel.hand_back()
        self._flush()
        if (StopRequest.requested or self.eof) and not self.running \
                and not self.finished.done():
            self.finished.set_result(None)

    # ---- coroutine tasks -------------------------------------------------------------

    def _start(self, msg: protocol.TaskMessage) -> None:
        run = _Running(msg)
        task = self.loop.create_task(run_coroutine(msg, self.worker, run.stop))
        run.task = task
        self.running[msg.id] = run
        self.by_task[task] = run
        task.add_done_callback(functools.partial(self._finished, run))
        if msg.timeout:
            run.timer = self.loop.call_later(msg.timeout, self._stop, run, StopReason.TIMEOUT)
        self.started_ids.append(msg.id)

    def _stop(self, run: _Running, reason: StopReason) -> None:
        """Cancel one coroutine task (its time limit passed, or it was cancelled)."""
        if run.stop.reason is not None or run.task is None or run.task.done():
            return
        run.stop.reason = reason
        run.task.cancel()

    def _finished(self, run: _Running, task: asyncio.Task[Outcome]) -> None:
        self.running.pop(run.msg.id, None)
        self.by_task.pop(task, None)
        if run.timer is not None:
            run.timer.cancel()
        try:
            outcome = task.result()
        except asyncio.CancelledError:
            # Cancelled before its first step: it never ran a line.
            error = run.stop.error()
            text = f"{type(error).__name__}: {error}" if error else "TaskCancelled: cancelled"
            timed_out = run.stop.reason is StopReason.TIMEOUT
            outcome = Outcome(False, text, timed_out=timed_out,
                              retry=None if timed_out else False)
        except BaseException as exc:  # noqa: B902 - never unwind into the loop
            outcome = Outcome(False, f"{type(exc).__name__}: {exc}")
        task_output.end_task(run.msg.id)
        self._result(run.msg.id, outcome, run.started, time.time())
        self._turn_soon()

    def _result(self, task_id: int, outcome: Outcome, started: float,
                finished: float) -> None:
        rss = self.recycling.rss()
        self.outbox.append(protocol.result(task_id, outcome.ok, outcome.text, started,
                                           finished, rss, outcome.timed_out, outcome.retry))
        self.recycling.task_done(rss)

    def _owner_of(self, task: asyncio.Task[Any] | None) -> tuple[int, str] | None:
        run = self.by_task.get(task) if task is not None else None
        return (run.msg.id, run.msg.name) if run is not None else None

    # ---- sync tasks ----------------------------------------------------------------

    def _run_sync(self, msg: protocol.TaskMessage) -> None:
        """Run a sync task (or one the app does not know) alone, as a one-task child."""
        started = time.time()
        self.started_ids.append(msg.id)
        self._flush()  # its Started message first: the supervisor's clock runs from here
        OrphanWatch.task_id = msg.id
        setproctitle(f"liteqd: worker {self.index} running {msg.name}#{msg.id}")
        self.title = ""
        self.watchdog.paused = True
        try:
            outcome = self.executor.run(msg, self.worker)
        finally:
            self.watchdog.resume()
            OrphanWatch.task_id = None
        finished = time.time()
        if outcome.timed_out:
            # As in the one-task child: end what it started and leave.
            kill_descendants()
            StopRequest.requested = True
        task_output.end_task(msg.id)
        self._result(msg.id, outcome, started, finished)
        reap_adopted()

    # ---- sending ---------------------------------------------------------------------

    def _flush(self) -> None:
        """Send the Started and Result messages gathered this turn, in one write."""
        if self.started_ids:
            self.outbox.insert(0, protocol.started(self.started_ids, time.time()))
            self.started_ids = []
        if self.outbox:
            messages, self.outbox = self.outbox, []
            channel = self.channel
            channel.busy = True
            try:
                channel.sock.sendall(protocol.encode(messages))
            except (BrokenPipeError, ConnectionResetError) as exc:
                # Raised out of a loop callback it would only be logged: end the loop
                # with it, so that child_main handles it as in a one-task child.
                if not self.finished.done():
                    self.finished.set_exception(SupervisorGone(str(exc)))
            finally:
                channel.busy = False
        n = len(self.running)
        title = f"liteqd: worker {self.index} running {n} coroutines" if n else \
            f"liteqd: worker {self.index} idle"
        if title != self.title:
            setproctitle(title)
            self.title = title


def serve_async(channel: Channel, executor: Executor, index: int, slots: int,
                block_threshold: float, recycling: Recycling) -> None:
    """Serve a child's tasks with up to `slots` coroutines at once (see the module)."""
    task_output.tag_by_task()
    server = AsyncServer(channel, executor, index, slots, block_threshold, recycling)
    server.serve()
