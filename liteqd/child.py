"""The worker child: a pure executor forked from the supervisor.

It never opens the database for the queue's bookkeeping. It reads task
messages from its socket, runs each one (coroutines on an event loop it keeps),
and writes back the outcome. The messages are those of liteqd.protocol.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from collections.abc import Iterable
from types import FrameType

from setproctitle import setproctitle

from . import protocol, task_output
from .child_channel import Channel, StopRequest, SupervisorGone
from .child_state import (OrphanWatch, Recycling, exit_orphaned, kill_descendants,
                          on_socket_closed, reap_adopted, wake_loop)
from .executor import Executor, install_alarm_handler
from .proc import become_subreaper, die_with_parent

__all__ = ["BOOT_ERROR_EXIT", "Channel", "PARENT_DEATH_SIGNAL", "child_main"]

# Exit code of a child whose own set-up or loop raised; before "ready" it is a boot error.
BOOT_ERROR_EXIT = 70

# The kernel sends this signal when the supervisor dies (PR_SET_PDEATHSIG). It is caught,
# not SIGKILL, so that the child can say why it leaves: one log line, not a traceback
# or nothing. A task stuck in C code that holds the interpreter lock delays the exit
# until it returns to Python.
PARENT_DEATH_SIGNAL = signal.SIGUSR2


_channel: Channel | None = None
_executor: Executor | None = None


def _on_stop(signum: int, frame: FrameType | None) -> None:
    # The current task finishes; the queued ones go back now.
    StopRequest.requested = True
    if _channel is not None:
        _channel.hand_back()
    wake_loop()


def _on_cancel(signum: int, frame: FrameType | None) -> None:
    # The supervisor sent Cancel or GiveBack messages: if the running task is
    # cancelled, stop it; hand back the recalled tasks now, not after the task.
    channel = _channel
    if channel is None:
        return
    channel.poll()
    if channel.recalled:
        channel.hand_back(only=channel.recalled)
    wake_loop()  # the loop cancels the coroutines (it may not be reading right now)
    if OrphanWatch.task_id is not None and OrphanWatch.task_id in channel.cancelled \
            and _executor is not None:
        _executor.cancel_running()


def _on_parent_death(signum: int, frame: FrameType | None) -> None:
    if os.getppid() == OrphanWatch.parent_pid:
        return  # sent by someone else: the supervisor lives
    exit_orphaned()


def _install_signals(parent_pid: int) -> None:
    """The child's signal dispositions; exits at once if the supervisor already died."""
    die_with_parent(PARENT_DEATH_SIGNAL)
    # Orphans of the task (a double fork after setsid()) are adopted by this process
    # instead of the supervisor, so they stay under it and die with it on a timeout.
    become_subreaper()
    if os.getppid() != parent_pid:
        os._exit(1)  # the supervisor died before the prctl took effect
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTTIN, signal.SIG_IGN)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _on_stop)
    signal.signal(protocol.CANCEL_SIGNAL, _on_cancel)
    install_alarm_handler()
    signal.signal(PARENT_DEATH_SIGNAL, _on_parent_death)
    if os.getppid() != parent_pid:
        os._exit(1)  # the supervisor died before the handler was in place


def child_main(sock: socket.socket, index: int, parent_pid: int, close_fds: Iterable[int] = (),
               report_rss: bool = False, max_tasks: int = 0, max_rss: int = 0,
               async_slots: int = 1, block_threshold: float = 0.5) -> None:
    """Entry point of a forked child; never returns (always os._exit)."""
    code = 0
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    try:
        signal.set_wakeup_fd(-1)  # the supervisor's wake-up fd is not ours
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        OrphanWatch.parent_pid, OrphanWatch.slot = parent_pid, index
        _install_signals(parent_pid)
        os.environ.pop("NOTIFY_SOCKET", None)
        _serve(sock, index, report_rss, max_tasks, max_rss, async_slots, block_threshold)
    except SupervisorGone:
        on_socket_closed()
    except BaseException:  # noqa: B902 - never unwind into the supervisor's code
        traceback.print_exc()
        code = BOOT_ERROR_EXIT
    finally:
        os._exit(code)


def _serve(sock: socket.socket, index: int, report_rss: bool, max_tasks: int = 0,
           max_rss: int = 0, async_slots: int = 1, block_threshold: float = 0.5) -> None:
    global _channel, _executor
    setproctitle(f"liteqd: worker {index} idle")
    executor = _executor = Executor()
    sock.setblocking(True)
    channel = _channel = Channel(sock)
    channel.send(protocol.ready(os.getpid()))
    recycling = Recycling(report_rss, max_tasks, max_rss)
    if async_slots > 1:
        from .async_child import serve_async
        serve_async(channel, executor, index, async_slots, block_threshold, recycling)
        return
    _OneTaskServer(channel, executor, index, recycling).serve()


class _OneTaskServer:
    """The serve loop of a child that runs one task at a time."""

    def __init__(self, channel: Channel, executor: Executor, index: int,
                 recycling: Recycling) -> None:
        self.channel = channel
        self.executor = executor
        self.index = index
        self.recycling = recycling
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.title_idle = f"liteqd: worker {index} idle"

    def serve(self) -> None:
        """Run the tasks the supervisor sends, one at a time, until a stop or its end."""
        channel = self.channel
        while True:
            if StopRequest.requested:
                channel.hand_back()
                return
            if not channel.pending:
                try:
                    if not channel.receive():
                        on_socket_closed()
                        return
                except InterruptedError:
                    pass
                continue
            msg = channel.pending.pop()
            if not self._refused(msg):
                self._run(msg)

    def _refused(self, msg: protocol.TaskMessage) -> bool:
        """Answer a task that must not start here (recalled, held too long, cancelled)."""
        answer = self.channel.refusal(msg)
        if answer is None:
            return False
        if isinstance(answer, protocol.Result):
            task_output.mark_end()  # one mark per result, as for the tasks that ran
        self.channel.send_held(answer)
        return True

    def _run(self, msg: protocol.TaskMessage) -> None:
        OrphanWatch.task_id = msg.id
        setproctitle(f"liteqd: worker {self.index} running {msg.name}#{msg.id}")
        started = time.time()
        outcome = self.executor.run(msg, self.worker)
        finished = time.time()
        if outcome.timed_out:
            # Subprocesses the task started die with it, even those in a session of
            # their own that killing our process group would miss: once we exit they
            # are reparented and can no longer be found under us.
            kill_descendants()
        rss = self.recycling.rss()
        task_output.mark_end()  # what follows in the pipes is the next task's
        self.channel.send_held(protocol.result(msg.id, outcome.ok, outcome.text, started,
                                               finished, rss, outcome.timed_out,
                                               outcome.retry))
        OrphanWatch.task_id = None
        if outcome.timed_out:
            # The task may have left subprocesses or threads running: hand back what is
            # queued and exit, so the supervisor replaces this process and its group.
            StopRequest.requested = True
        self.recycling.task_done(rss)
        reap_adopted()
        setproctitle(self.title_idle)
