"""Periodic duties of the supervisor: the heartbeat, reclaiming dead daemons' tasks (who
is dead is liteqd.liveness's call), pruning old finished tasks (retention), and firing
cron schedules."""

import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from structlog.typing import FilteringBoundLogger

from liteq.backends.base import Backend
from liteq.errors import DatabaseError, DatabaseUnavailable

from . import liveness, proc
from .config import DaemonConfig
from .outage import Outage
from .pool import Pool

# Rows deleted per loop turn at most: a short write, so claims never wait long on it.
PRUNE_BATCH = 1000


class Duties:
    """Heartbeat, reclaim and pruning every heartbeat interval (pruning again each loop
    turn while a batch comes back full); cron fires when it is due."""

    def __init__(self, config: DaemonConfig, log: FilteringBoundLogger, backend: Backend,
                 outage: Outage, identity: proc.Identity, pools: Sequence[Pool],
                 claim_soon: Callable[[], None]) -> None:
        self.config = config
        self.log = log
        self.backend = backend
        self.outage = outage
        self.identity = identity
        self.pools = pools
        self.claim_soon = claim_soon    # new tasks may be due (reclaimed, or cron fired)
        self.next_heartbeat = 0.0
        self.next_schedule: float | None = None
        # (status, seconds kept) of the statuses pruned; 0 keeps forever.
        self.retention = [(status, keep) for status, keep in (
            ("done", self.config.keep_done), ("failed", self.config.keep_failed),
            ("cancelled", self.config.keep_cancelled)) if keep > 0]
        self.prune_due = False
        self.watch = liveness.HeartbeatWatch(self.config.stale_after)

    def deadlines(self, stopping: bool) -> list[float]:
        """The monotonic times at which a duty is due (for the loop's sleep)."""
        out = [self.next_heartbeat]
        if self.next_schedule is not None and not stopping:
            out.append(self.next_schedule)
        outage = self.outage
        if outage.down:
            out = [max(t, outage.retry_at) for t in out]
        if self.prune_due and not stopping:
            out.append(time.monotonic())   # more old tasks than one batch: go on now
        return out

    def run_due(self) -> None:
        """Do whichever duties are due now (none while the database is away and its next
        try is not due: a heartbeat or cron every interval would reconnect far more often
        than the back-off allows)."""
        now = time.monotonic()
        outage = self.outage
        if outage.down and now < outage.retry_at:
            return
        if now >= self.next_heartbeat:
            self.heartbeat()
            # Schedules registered by other processes show up within a heartbeat.
            if self.config.scheduler:
                self.next_schedule = min(self.next_schedule or now, now)
        if self.prune_due and not self.outage.down:
            self._prune()
        if self.config.scheduler and (self.next_schedule is None or now >= self.next_schedule):
            self._fire_schedules()

    # ---- heartbeat and reclaim ---------------------------------------------------

    def heartbeat(self, startup: bool = False) -> None:
        """Refresh this daemon's worker row, then reclaim dead daemons' tasks.

        At start-up a database error is raised (the daemon cannot start), unless the
        database just went away: that is an outage like any other, and so is any
        error later; they are logged and retried.
        """
        me = self.identity
        self.next_heartbeat = time.monotonic() + self.config.heartbeat_interval
        try:
            self.backend.heartbeat(me.worker_id, me.hostname, ",".join(self.config.queues),
                                   sum(p.size for p in self.pools), me.pid,
                                   # (None where /proc cannot tell: stored as NULL)
                                   cast(float, me.process_started), me.started_wall)
            self._reclaim()
        except DatabaseError as exc:
            if startup and not isinstance(exc, DatabaseUnavailable):
                raise
            self.outage.failed("heartbeat", exc)
            # Whatever kept this heartbeat out kept the others' out too: their silence
            # from now until the next heartbeat that works does not count against them.
            self.outage.up_since = None
            return
        self.outage.succeeded()
        self.prune_due = bool(self.retention)

    def _reclaim(self) -> None:
        outage = self.outage
        # The heartbeat just worked; an outage it ended is only marked over afterwards.
        up_since = time.monotonic() if outage.up_since is None else outage.up_since
        dead, stale = liveness.judge(self.identity, self.backend.list_workers(), self.watch,
                                     up_since)
        reclaimed = self.backend.reclaim(dead, None, reason="its worker died (no heartbeat)",
                                        stale_heartbeats=stale)
        if dead:
            for pid in proc.kill_tagged(dead):
                self.log.warning("child.orphan_killed", pid=pid, reason="its daemon died")
        for task_id, status in reclaimed:
            self.log.warning("task.reclaimed", task_id=task_id, status=status)
        if reclaimed:
            self.claim_soon()

    # ---- retention -----------------------------------------------------------------

    def _prune(self) -> None:
        """Delete one batch (PRUNE_BATCH rows at most) of finished tasks past their
        status's age; the next loop turn does another while a batch comes back full."""
        budget = PRUNE_BATCH
        pruned: dict[str, int] = {}
        try:
            for status, keep in self.retention:
                if budget <= 0:
                    break
                n = self.backend.prune(status, keep, budget)
                budget -= n
                if n:
                    pruned[status] = n
        except DatabaseError as exc:
            self.prune_due = False      # the next heartbeat tries again
            self.outage.failed("prune", exc)
            return
        self.prune_due = budget <= 0
        if pruned:
            self.log.info("tasks.pruned", **pruned, total=PRUNE_BATCH - budget,
                          more=self.prune_due)

    # ---- cron ----------------------------------------------------------------------

    def _fire_schedules(self) -> None:
        # croniter is the daemon's dependency, loaded only when the daemon runs.
        from liteq import scheduler

        now = time.monotonic()
        try:
            ids = scheduler.fire_due(self.backend, log=self._schedule_event)
            upcoming = scheduler.next_fire_time(self.backend)
        except DatabaseError as exc:
            self.outage.failed("schedules", exc)
            self.next_schedule = now + 1.0
            return
        if ids:
            self.claim_soon()
        # Wall clock for cron; the sleep itself is measured on the monotonic clock.
        wait = self.config.heartbeat_interval if upcoming is None else \
            min(max(upcoming - time.time(), 0.0), self.config.heartbeat_interval)
        self.next_schedule = now + wait

    def _schedule_event(self, event: str, **fields: Any) -> None:
        level = "warning" if event.endswith("error") else "info"
        getattr(self.log, level)(event, **fields)
