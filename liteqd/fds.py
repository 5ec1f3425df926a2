"""The supervisor's file descriptors: what its select loop watches, and for whom."""

import selectors
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from structlog.typing import FilteringBoundLogger

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

# A plugin's handler: called with the ready file object and the event mask.
Handler = Callable[[Any, int], object]


class Fds:
    """The selector of the supervisor's loop; children's sockets are tagged "child",
    the signal pipe "signal", everything else (plugins, output pipes) "plugin"."""

    def __init__(self, log: FilteringBoundLogger) -> None:
        self.log = log
        self.selector = selectors.DefaultSelector()
        self.extra: list[int] = []   # fds not watched that a child must close all the same

    def register_fd(self, fileobj: "FileDescriptorLike", handler: Handler,
                    events: int = selectors.EVENT_READ) -> None:
        """Call handler(fileobj, mask) when fileobj is ready."""
        self.selector.register(fileobj, events, ("plugin", handler))

    def modify_fd(self, fileobj: "FileDescriptorLike", handler: Handler, events: int) -> None:
        """Change what a plugin's file object is watched for."""
        self.selector.modify(fileobj, events, ("plugin", handler))

    def unregister_fd(self, fileobj: "FileDescriptorLike") -> None:
        """Stop watching a file object (nothing when it is not watched)."""
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def supervisor_fds(self) -> list[int]:
        """File descriptors a forked child must close (they belong to the supervisor)."""
        return [key.fd for key in list(self.selector.get_map().values())] + self.extra
