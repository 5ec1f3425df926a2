"""Riding out a database that does not answer: back off, say so once, say when it is back.

A lost connection, a restarting server or a network cut is an outage, not a
crash: the supervisor keeps its children running, keeps outcomes in memory, and
retries with exponential back-off (capped at MAX_BACKOFF_S, and lower by
limit_backoff()). Other database errors (a lock held too long, a full disk) are
retried at the short DB_RETRY_S.

`up_since` is when the database last started answering this daemon: other
daemons' heartbeats are judged only over time after it (see liteqd.liveness),
because while the database was away nobody could write one.
"""

import time
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from liteq.errors import DatabaseUnavailable

DB_RETRY_S = 0.5
MAX_BACKOFF_S = 30.0


class Outage:
    """Whether the database answers, and when to try it again (monotonic time)."""

    def __init__(self, log: FilteringBoundLogger, on_recovered: Callable[[], object] | None = None) -> None:
        self.log = log
        self.on_recovered = on_recovered   # called once each time an outage ends
        self.since: float | None = None          # monotonic time the outage began, or None
        self.backoff = 0.0
        self.retry_at = 0.0
        self.last_error: str | None = None
        self.max_backoff = MAX_BACKOFF_S
        self.up_since: float | None = None       # monotonic time since which every call worked, or None

    def limit_backoff(self, seconds: float) -> None:
        """Never wait longer than `seconds` between tries (at least DB_RETRY_S)."""
        self.max_backoff = max(DB_RETRY_S, min(MAX_BACKOFF_S, seconds))

    @property
    def down(self) -> bool:
        """True while the database is unavailable."""
        return self.since is not None

    def failed(self, op: str, exc: BaseException) -> None:
        """A database call failed: schedule the next try and log (an outage once)."""
        now = time.monotonic()
        if isinstance(exc, DatabaseUnavailable):
            self.up_since = None
            self.last_error = str(exc)
            if self.since is None:
                self.since = now
                self.backoff = DB_RETRY_S
                self.log.error("db.unavailable", op=op, error=self.last_error,
                               retry_in_s=self.backoff)
            else:
                self.backoff = min(self.backoff * 2, self.max_backoff)
            self.retry_at = now + self.backoff
        else:
            self.log.warning("db.retrying", op=op, error=str(exc))
            self.retry_at = now + DB_RETRY_S

    def succeeded(self) -> None:
        """A database call worked: end an outage if there was one."""
        if self.up_since is None:
            self.up_since = time.monotonic()
        if self.since is not None:
            self.log.info("db.recovered", down_s=round(time.monotonic() - self.since, 3))
            self.since = None
            self.backoff = 0.0
            self.last_error = None
            if self.on_recovered is not None:
                self.on_recovered()

    def describe(self) -> str:
        """One line for the systemd status while the database is down ('' when it is up)."""
        if self.since is None:
            return ""
        down = time.monotonic() - self.since
        wait = max(0.0, self.retry_at - time.monotonic())
        return (f"database unavailable for {down:.0f} s, next try in {wait:.0f} s "
                f"({self.last_error})")
