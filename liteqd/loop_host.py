"""What the supervisor's side of the child modules (the output pump, the control
server, the wake-up listener) uses of the supervisor: its select loop and its log.
Declared as protocols, so each part names only what it calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from structlog.typing import FilteringBoundLogger

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

#: Called as handler(fileobj, mask) when a watched file object is ready.
FdHandler = Callable[[Any, int], object]


class FdHost(Protocol):
    """The select loop a part watches its file objects in, and the log it writes to."""

    @property
    def log(self) -> FilteringBoundLogger: ...

    def register_fd(self, fileobj: FileDescriptorLike, handler: FdHandler) -> None:
        """Call handler(fileobj, mask) when fileobj is readable."""
        ...

    def unregister_fd(self, fileobj: FileDescriptorLike) -> None:
        """Stop watching fileobj."""
        ...
