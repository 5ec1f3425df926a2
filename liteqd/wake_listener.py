"""The daemon end of producers' wake-ups: the backend's wake-up channel in the
supervisor's select() loop."""


class WakeListener:
    """Wakes the supervisor's claim loop when a producer says a task is due."""

    def __init__(self, control_socket_path):
        self.control_socket = control_socket_path
        self.channel = None

    def register(self, sup):
        """Open the backend's wake-up channel and watch it from the supervisor's loop."""
        self.channel = sup.backend.open_wake_channel(self.control_socket)
        sup.register_fd(self.channel, lambda _f, _mask: self._drain(sup))

    def _drain(self, sup):
        now_due, later = self.channel.drain()
        if now_due:
            sup.wake()
        if later is not None:
            sup.wake(due=later)

    def on_tick(self, sup):
        """Nothing to do per loop iteration."""

    def close(self):
        """Stop listening."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
