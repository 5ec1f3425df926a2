"""The operations of the control channel (liteqd.control_server): what each request
does to the supervisor, and which of them only read."""

from __future__ import annotations

import abc

import os
import socket
from collections.abc import Sequence
from typing import Any, Protocol

from liteq.backends.base import Backend

from .loop_host import FdHandler, FdHost

READ_ONLY_OPS = frozenset({"ping", "status", "schedules", "wake"})

#: A request or a reply: one JSON object.
Request = dict[str, Any]
Reply = dict[str, Any]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class ControlHost(FdHost, Protocol):
    """What the control server uses of the supervisor it serves."""

    @property
    def pools(self) -> Sequence[_Named]: ...

    @property
    def paused(self) -> set[str]: ...

    @property
    def backend(self) -> Backend | None: ...

    def modify_fd(self, fileobj: socket.socket, handler: FdHandler, events: int) -> None:
        """Change what fileobj is watched for."""
        ...

    def status(self) -> Reply:
        """The daemon's snapshot."""
        ...

    def wake(self) -> None:
        """Look for due tasks now."""
        ...

    def scale(self, pool_name: str, size: int) -> None:
        """Set a pool's number of children."""
        ...

    def reload(self) -> str | None:
        """Re-import the app; the error text, or None when it loaded."""
        ...

    def request_stop(self, fast: bool = False, reason: str = "request") -> None:
        """Stop the daemon."""
        ...


class ControlError(Exception):
    """A request that cannot be served; its message is the reply's error."""


class ControlOps(abc.ABC):
    """The op_* methods a request's "op" names; each returns the reply's fields."""

    @property
    @abc.abstractmethod
    def sup(self) -> ControlHost:
        """The supervisor served."""

    @classmethod
    def ops(cls) -> list[str]:
        """The names of the operations this server knows."""
        return [name[3:] for name in dir(cls) if name.startswith("op_")]

    def op_ping(self, request: Request) -> Reply:
        """Answer {"pong": true, "pid": ...}: the daemon is alive."""
        return {"pong": True, "pid": os.getpid()}

    def op_status(self, request: Request) -> Reply:
        """The supervisor's snapshot: pid, uptime, pools and children."""
        return self.sup.status()

    def op_wake(self, request: Request) -> Reply:
        """Look for due tasks now."""
        self.sup.wake()
        return {}

    def op_scale(self, request: Request) -> Reply:
        """Set a pool's number of children: {"pool": name, "size": N}."""
        size = request.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ControlError(f"scale needs \"size\", a whole number >= 0; got {size!r}")
        name = request.get("pool", self.sup.pools[0].name)
        if not isinstance(name, str):
            raise ControlError(f"\"pool\" must be a string; got {name!r}")
        try:
            self.sup.scale(name, size)
        except (KeyError, ValueError) as exc:
            raise ControlError(exc.args[0]) from None
        return {"pool": name, "size": size}

    def _queue_arg(self, request: Request) -> str:
        queue = request.get("queue")
        if not isinstance(queue, str) or not queue:
            raise ControlError(f"\"queue\" must be a non-empty string; got {queue!r}")
        return queue

    def op_pause(self, request: Request) -> Reply:
        """Stop claiming from {"queue": name}; running tasks finish."""
        queue = self._queue_arg(request)
        self.sup.paused.add(queue)
        self.sup.log.info("queue.paused", queue=queue)
        return {"paused": sorted(self.sup.paused)}

    def op_resume(self, request: Request) -> Reply:
        """Claim from {"queue": name} again."""
        queue = self._queue_arg(request)
        self.sup.paused.discard(queue)
        self.sup.wake()
        self.sup.log.info("queue.resumed", queue=queue)
        return {"paused": sorted(self.sup.paused)}

    def op_reload(self, request: Request) -> Reply:
        """Re-import the app and replace every child (like SIGHUP); an error reply when
        the new code does not load (the daemon keeps the code it had)."""
        failure = self.sup.reload()
        if failure:
            raise ControlError(f"reload failed: {failure}")
        return {}

    def op_shutdown(self, request: Request) -> Reply:
        """Stop gracefully, or fast with {"fast": true}."""
        self.sup.request_stop(fast=bool(request.get("fast")), reason="control")
        return {}

    def op_schedules(self, request: Request) -> Reply:
        """Every cron schedule with its next and last run."""
        from liteq.scheduler import list_schedules
        return {"schedules": list_schedules(self.sup.backend)}
