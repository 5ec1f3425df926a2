"""Signals for the supervisor's loop: handlers only record the signal and wake the
select() through a socket pair (signal.set_wakeup_fd); the loop acts on them
(gunicorn's arbiter)."""

import selectors
import signal
import socket
from types import FrameType

from .fds import Fds

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
           signal.SIGCHLD)


class SignalPipe:
    """The signals received and not yet acted on, and the pipe that wakes the loop."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._r: socket.socket | None = None
        self._w: socket.socket | None = None   # kept open: the signals write to it

    def install(self, fds: Fds) -> None:
        """Record HANDLED signals from now on, and wake the loop watching `fds`."""
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        fds.extra.append(self._w.fileno())
        signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, self._record)
        fds.selector.register(self._r, selectors.EVENT_READ, ("signal", None))

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def drain(self) -> None:
        """Empty the wake-up pipe (the signals themselves are in `received`)."""
        try:
            while self._r is not None and self._r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def pop(self) -> int | None:
        """The oldest signal not yet acted on, or None."""
        return self.received.pop(0) if self.received else None
