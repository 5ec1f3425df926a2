"""The daemon end of producers' wake-ups: the backend's wake-up channel in the
supervisor's select() loop.

The channel is a hint: when it breaks (a PostgreSQL LISTEN connection lost in an
outage) the supervisor's poll still finds every task, and the channel is opened
again once the database answers.
"""

import time

from liteq.errors import DatabaseError

REOPEN_S = 1.0   # between attempts to open a broken channel again


class WakeListener:
    """Wakes the supervisor's claim loop when a producer says a task is due."""

    def __init__(self, control_socket_path):
        self.control_socket = control_socket_path
        self.channel = None
        self.next_open = 0.0
        self.failing = False       # the last attempt to open it failed (logged once)

    def register(self, sup):
        """Open the backend's wake-up channel and watch it from the supervisor's loop."""
        self._open(sup)

    def _open(self, sup):
        try:
            self.channel = sup.backend.open_wake_channel(self.control_socket)
        except DatabaseError as exc:
            self.channel = None
            self.next_open = time.monotonic() + REOPEN_S
            if not self.failing:
                sup.log.warning("wake.unavailable", error=str(exc))
            self.failing = True
            return
        if self.failing:
            sup.log.info("wake.restored")
        self.failing = False
        sup.register_fd(self.channel, lambda _f, _mask: self._drain(sup))
        sup.dispatch.claim_soon()  # anything announced while it was closed

    def _drain(self, sup):
        try:
            now_due, later = self.channel.drain()
        except DatabaseError as exc:
            sup.log.warning("wake.lost", error=str(exc))
            # Said once: reopening it logs wake.restored, a failed reopen nothing more.
            self.failing = True
            self._close(sup)
            self.next_open = time.monotonic() + REOPEN_S
            sup.dispatch.claim_soon()
            return
        if now_due:
            sup.wake()
        if later is not None:
            sup.wake(due=later)
        cancelled = self.channel.cancelled()
        if cancelled:
            sup.lifecycle.cancel(cancelled)

    def on_tick(self, sup):
        """Open the channel again after it broke, once the database answers."""
        if self.channel is None and not sup.stopping and not sup.dispatch.outage.down \
                and time.monotonic() >= self.next_open:
            self._open(sup)

    def _close(self, sup):
        if self.channel is not None:
            sup.unregister_fd(self.channel)
            try:
                self.channel.close()
            except DatabaseError:
                pass
            self.channel = None

    def close(self):
        """Stop listening."""
        if self.channel is not None:
            try:
                self.channel.close()
            except DatabaseError:
                pass
            self.channel = None
