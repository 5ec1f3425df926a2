"""A worker child's end of its socket to the supervisor: reading, parsing, sending.

The supervisor's messages are sorted by type as they arrive (liteqd.protocol): tasks
queue in `pending`, Cancel ids gather in `cancelled`, GiveBack ids in `recalled`.
"""

from __future__ import annotations

import socket
import time

from . import protocol


class StopRequest:
    """Whether the child was asked to stop (SIGUSR1, a recycling limit, a timeout)."""
    requested = False


class SupervisorGone(ConnectionError):
    """The child's socket to the supervisor failed: the supervisor has died.

    An OSError, so hand_back() (which may run in a signal handler) still swallows it.
    """


class Channel:
    """The child's end of its socket.

    A stop (SIGUSR1) must hand queued tasks back at once, even while a task runs,
    so the signal handler may call hand_back(). Python runs handlers between any
    two bytecodes of the main code, so `busy` marks the stretches where the main
    code is reading or sending; the handler then leaves the hand-back to the main
    code, which does it as soon as it is done (a line is never interleaved).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = protocol.LineReader()
        self.pending: list[protocol.TaskMessage] = []  # next one last
        self.cancelled: set[int] = set()  # ids of tasks the supervisor cancelled
        self.recalled: set[int] = set()   # ids of queued tasks the supervisor wants back
        self.busy = False

    def send(self, msg: protocol.Message) -> None:
        """Send one message (a JSON line); SupervisorGone when the other end is closed."""
        try:
            self.sock.sendall(protocol.encode([msg]))
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise SupervisorGone(str(exc)) from None

    def send_held(self, msg: protocol.Message) -> None:
        """send(), from the main code: a signal handler leaves the socket alone meanwhile."""
        self.busy = True
        try:
            self.send(msg)
        finally:
            self.busy = False

    def parse(self, data: bytes) -> None:
        """Sort the messages completed by `data` into pending, cancelled and recalled."""
        new = self.reader.feed(data)
        if not new:
            return
        tasks = [msg for msg in new if type(msg) is protocol.TaskMessage]
        if len(tasks) < len(new):
            for msg in new:
                if isinstance(msg, protocol.Cancel):
                    self.cancelled.add(msg.id)
                elif isinstance(msg, protocol.GiveBack):
                    self.recalled.update(msg.ids)
        tasks.reverse()
        self.pending = tasks + self.pending

    def refusal(self, msg: protocol.TaskMessage) -> protocol.Skipped | protocol.Result | None:
        """The answer to a queued task that must not start here, or None to start it.

        Skipped when it was recalled, or held past its start_by: by then the daemon
        may have been frozen long enough for another to reclaim and run it. A
        TaskCancelled Result when it was cancelled before it started.
        """
        if msg.id in self.recalled or (msg.start_by is not None
                                       and time.monotonic() > msg.start_by):
            self.recalled.discard(msg.id)
            return protocol.skipped(msg.id)
        if msg.id in self.cancelled:
            now = time.time()
            return protocol.result(msg.id, False, "TaskCancelled: cancelled before it started",
                                   now, now, 0, False, False)
        return None

    def _read_waiting(self) -> None:
        """Parse whatever has arrived, without blocking (the caller holds `busy`)."""
        try:
            while True:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
                if not data:
                    break
                self.parse(data)
        except (BlockingIOError, InterruptedError):
            pass

    def poll(self) -> None:
        """Read what has arrived without blocking (from the cancel signal's handler);
        nothing when the main code is reading or sending itself."""
        if self.busy:
            return
        self.busy = True
        try:
            self._read_waiting()
        except OSError:
            pass  # the supervisor is gone; the main code finds out on its next read
        finally:
            self.busy = False

    def receive(self) -> bool:
        """Block until at least one more message is queued; False at end of stream.

        SupervisorGone when the other end was closed with our messages unread.
        """
        self.busy = True
        try:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError as exc:
                raise SupervisorGone(str(exc)) from None
            if data:
                self.parse(data)
            return bool(data)
        finally:
            self.busy = False
            if StopRequest.requested:
                self.hand_back()

    def hand_back(self, only: set[int] | None = None) -> None:
        """Return every queued task (or those whose ids are in `only`, removed from it)
        to the supervisor, unstarted (Skipped messages)."""
        if self.busy:
            return
        self.busy = True
        try:
            self._read_waiting()
            if only is not None:
                keep = [m for m in self.pending if m.id not in only]
                back = [m for m in self.pending if m.id in only]
                self.pending = keep
                for m in reversed(back):
                    self.send(protocol.skipped(m.id))
                only.difference_update(m.id for m in back)
                return
            while self.pending:
                self.send(protocol.skipped(self.pending.pop().id))
        except OSError:
            pass  # the supervisor is gone; it requeues whatever we held
        finally:
            self.busy = False
