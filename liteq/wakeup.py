"""Fire-and-forget wake-ups from producers to the daemon.

After an enqueue commits, the producer sends a one-byte datagram to the
daemon's wake socket so a waiting task starts at once instead of at the next
poll. It never blocks and never fails the enqueue.

The socket is connected once and reused, so a send costs a few microseconds.
When no daemon listens, connecting is retried at most every RETRY_S seconds,
so an app without a daemon pays almost nothing; a daemon that starts claims
everything due at start-up anyway.
"""

import os
import socket
import time

from .paths import socket_path, wake_path

RETRY_S = 0.5


class _Waker:
    __slots__ = ("sock", "next_try", "target")

    def __init__(self, target):
        self.sock = None
        self.next_try = 0.0
        self.target = target

    def send(self):
        if self.sock is None:
            t = time.monotonic()
            if t < self.next_try:
                return
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(self.target)
            except OSError:
                sock.close()
                self.next_try = t + RETRY_S
                return
            self.sock = sock
        try:
            self.sock.send(b"w")
        except BlockingIOError:
            pass  # its queue is full: wake-ups are pending already
        except OSError:
            # The daemon went away or restarted (a new socket file): reconnect next time.
            self.sock.close()
            self.sock = None


_pid = None
_wakers = {}


def wake(db_path=None) -> None:
    """Nudge the daemon serving `db_path`; silently does nothing when none listens."""
    global _pid, _wakers
    pid = os.getpid()
    if pid != _pid:  # a forked child must not share its parent's sockets
        _pid, _wakers = pid, {}
    key = (db_path, os.environ.get("LITEQ_SOCKET"))
    waker = _wakers.get(key)
    if waker is None:
        waker = _wakers[key] = _Waker(wake_path(socket_path(db_path)))
    waker.send()
