"""The daemon end of producers' wake-ups: the backend's wake-up channel in the
supervisor's select() loop.

The channel is a hint: when it breaks (a PostgreSQL LISTEN connection lost in an
outage) the supervisor's poll still finds every task, and the channel is opened
again once the database answers. A cancel message is a hint too: a task is only
stopped once the database says it is cancelled, so a forged message stops nothing.

Floods are coalesced: a drain that finds a backlog (at least BACKLOG messages
queued up since the previous one: producers send at most one wake-up a
millisecond each, and the daemon reads them as they come) rests the channel (it
is not watched) for COALESCE_S, so however many messages arrive, the loop wakes
for them at most 1/COALESCE_S times a second and reads what queued up in one go;
meanwhile the kernel refuses what does not fit in the socket's queue. Ordinary
wake-ups are acted on at once. A cancel hint for a task the database says is not
cancelled is not looked up again for HINT_RECHECK_S.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from liteq.backends.base import Backend, WakeChannel
from liteq.errors import DatabaseError

from .loop_host import FdHost
from .plugins import Plugin

REOPEN_S = 1.0   # between attempts to open a broken channel again
BACKLOG = 4          # messages read by one drain that make it a flood...
COALESCE_S = 0.02    # ...after which the channel rests this long before it is watched again
HINT_RECHECK_S = 1.0


class _Run(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def cancelled(self) -> bool: ...


class _Child(Protocol):
    @property
    def inflight(self) -> Iterable[_Run]: ...


class _Lifecycle(Protocol):
    def all_children(self) -> Iterable[_Child]:
        """Every child of every pool."""
        ...


class _Outage(Protocol):
    @property
    def down(self) -> bool: ...


class _Dispatch(Protocol):
    @property
    def outage(self) -> _Outage: ...

    def claim_soon(self) -> None:
        """Claim on the next turn of the loop."""
        ...

    def cancel(self, task_ids: Sequence[int]) -> None:
        """Stop these tasks where a child holds them."""
        ...


class WakeHost(FdHost, Protocol):
    """What the wake-up listener uses of the supervisor."""

    @property
    def backend(self) -> Backend | None:
        """The daemon's backend; set before any plugin is registered."""
        ...

    @property
    def stopping(self) -> str | None: ...

    @property
    def dispatch(self) -> _Dispatch: ...

    @property
    def lifecycle(self) -> _Lifecycle: ...

    def wake(self, due: float | None = None) -> None:
        """Claim now, or at `due` (epoch s)."""
        ...


def _backend(sup: WakeHost) -> Backend:
    """The supervisor's backend: plugins run only once it is connected."""
    assert sup.backend is not None, "a plugin ran before the daemon connected"
    return sup.backend


class WakeListener(Plugin):
    """Wakes the supervisor's claim loop when a producer says a task is due."""

    def __init__(self, control_socket_path: str) -> None:
        self.control_socket = control_socket_path
        self.channel: WakeChannel | None = None
        self.next_open = 0.0
        self.failing = False       # the last attempt to open it failed (logged once)
        self.rest_until: float | None = None  # monotonic time to watch a resting channel
        # task id -> when the database said it is not cancelled
        self.refuted: dict[int, float] = {}

    def register(self, sup: WakeHost) -> None:
        """Open the backend's wake-up channel and watch it from the supervisor's loop."""
        self._open(sup)

    def _open(self, sup: WakeHost) -> None:
        try:
            channel = _backend(sup).open_wake_channel(self.control_socket)
        except DatabaseError as exc:
            self.channel = None
            self.next_open = time.monotonic() + REOPEN_S
            if not self.failing:
                sup.log.warning("wake.unavailable", error=str(exc))
            self.failing = True
            return
        self.channel = channel
        if self.failing:
            sup.log.info("wake.restored")
        self.failing = False
        self.rest_until = None
        self._watch(sup, channel)
        sup.dispatch.claim_soon()  # anything announced while it was closed

    def _watch(self, sup: WakeHost, channel: WakeChannel) -> None:
        sup.register_fd(channel, lambda _f, _mask: self._drain(sup, channel))

    def _drain(self, sup: WakeHost, channel: WakeChannel) -> None:
        try:
            now_due, later = channel.drain()
        except DatabaseError as exc:
            sup.log.warning("wake.lost", error=str(exc))
            # Said once: reopening it logs wake.restored, a failed reopen nothing more.
            self.failing = True
            self._close(sup)
            self.next_open = time.monotonic() + REOPEN_S
            sup.dispatch.claim_soon()
            return
        backlog: bool = getattr(channel, "last_count", 0) >= BACKLOG
        if now_due or backlog:  # with a backlog, the kernel may have refused a wake-up
            sup.wake()
        if later is not None:
            sup.wake(due=later)
        hints = channel.cancelled()
        if hints:
            self._cancel_confirmed(sup, hints)
        if backlog:
            # Rest: what arrives meanwhile queues in the socket and is read in one go.
            sup.unregister_fd(channel)
            self.rest_until = time.monotonic() + COALESCE_S

    def _cancel_confirmed(self, sup: WakeHost, hints: list[int]) -> None:
        """Stop the hinted tasks that a child holds and the database says are cancelled."""
        now = time.monotonic()
        if len(self.refuted) > 1024:
            self.refuted = {k: t for k, t in self.refuted.items() if now - t < HINT_RECHECK_S}
        wanted = {i for i in hints if now - self.refuted.get(i, -1e9) >= HINT_RECHECK_S}
        held = [run.id for child in sup.lifecycle.all_children() for run in child.inflight
                if run.id in wanted and not run.cancelled]
        if not held:
            return
        try:
            rows = _backend(sup).get_tasks(held)
        except DatabaseError:
            return  # the poll (dispatch.check_cancelled) looks again
        confirmed = [row["id"] for row in rows if row["status"] == "cancelled"]
        self.refuted.update((row["id"], now) for row in rows if row["status"] != "cancelled")
        if confirmed:
            sup.dispatch.cancel(confirmed)

    def next_deadline(self) -> float | None:
        """When a resting channel is watched again (keeps the loop's sleep bounded)."""
        return self.rest_until

    def on_tick(self, sup: WakeHost) -> None:
        """Watch a rested channel again; open it again after it broke, once the
        database answers."""
        if self.rest_until is not None and time.monotonic() >= self.rest_until:
            self.rest_until = None
            if self.channel is not None:
                self._watch(sup, self.channel)
        if self.channel is None and not sup.stopping and not sup.dispatch.outage.down \
                and time.monotonic() >= self.next_open:
            self._open(sup)

    def _close(self, sup: WakeHost) -> None:
        if self.channel is not None:
            if self.rest_until is None:
                sup.unregister_fd(self.channel)
            self.rest_until = None
            try:
                self.channel.close()
            except DatabaseError:
                pass
            self.channel = None

    def close(self) -> None:
        """Stop listening."""
        if self.channel is not None:
            try:
                self.channel.close()
            except DatabaseError:
                pass
            self.channel = None
