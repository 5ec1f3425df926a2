"""The supervisor's plugins: parts that live in its loop without being the loop (the
control server, the wake-up listener, systemd notification, an embedded Worker's stop
request). A plugin overrides the hooks it needs; the others do nothing."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .supervisor import Supervisor


class Plugin:
    """A part of the supervisor's loop; every hook does nothing unless overridden."""

    def register(self, sup: "Supervisor") -> None:
        """Called once at start, connected to the database: watch file descriptors
        (sup.register_fd), hook callbacks."""

    def on_tick(self, sup: "Supervisor") -> None:
        """Called at the end of every loop turn."""

    def next_deadline(self) -> float | None:
        """When the loop must run next for this plugin (monotonic), or None."""
        return None

    def on_waiting(self, sup: "Supervisor") -> None:
        """Called while the daemon waits for the database at start."""

    def on_reloading(self, sup: "Supervisor") -> None:
        """Called when a reload begins."""

    def on_stopping(self, sup: "Supervisor") -> None:
        """Called when a stop begins."""

    def close(self) -> None:
        """Called once at exit (also after a failed start)."""

