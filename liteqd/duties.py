"""Periodic duties of the supervisor: the heartbeat, reclaiming dead daemons' tasks,
and firing cron schedules."""

import time

from liteq.errors import DatabaseError, DatabaseUnavailable

from . import proc


class Duties:
    """Heartbeat and reclaim every heartbeat interval; cron fires when they are due."""

    def __init__(self, sup):
        self.sup = sup
        self.log = sup.log
        self.config = sup.config
        self.next_heartbeat = 0.0
        self.next_schedule = None

    def deadlines(self):
        """The monotonic times at which a duty is due (for the loop's sleep)."""
        out = [self.next_heartbeat]
        if self.next_schedule is not None and not self.sup.stopping:
            out.append(self.next_schedule)
        outage = self.sup.dispatch.outage
        if outage.down:
            out = [max(t, outage.retry_at) for t in out]
        return out

    def run_due(self):
        """Do whichever duties are due now (none while the database is away and its next
        try is not due: a heartbeat or cron every interval would reconnect far more often
        than the back-off allows)."""
        now = time.monotonic()
        outage = self.sup.dispatch.outage
        if outage.down and now < outage.retry_at:
            return
        if now >= self.next_heartbeat:
            self.heartbeat()
            # Schedules registered by other processes show up within a heartbeat.
            if self.config.scheduler:
                self.next_schedule = min(self.next_schedule or now, now)
        if self.config.scheduler and (self.next_schedule is None or now >= self.next_schedule):
            self._fire_schedules()

    # ---- heartbeat and reclaim ---------------------------------------------------

    def heartbeat(self, startup=False):
        """Refresh this daemon's worker row, then reclaim dead daemons' tasks.

        At start-up a database error is raised (the daemon cannot start), unless the
        database just went away: that is an outage like any other, and so is any
        error later; they are logged and retried.
        """
        sup = self.sup
        self.next_heartbeat = time.monotonic() + self.config.heartbeat_interval
        try:
            sup.backend.heartbeat(sup.worker_id, sup.hostname, ",".join(self.config.queues),
                                  sum(p.size for p in sup.pools), sup.pid,
                                  sup.process_started, sup.started_wall)
            self._reclaim()
        except DatabaseError as exc:
            if startup and not isinstance(exc, DatabaseUnavailable):
                raise
            sup.dispatch.outage.failed("heartbeat", exc)
            return
        sup.dispatch.outage.succeeded()

    def _reclaim(self):
        sup = self.sup
        dead = []
        for w in sup.backend.list_workers():
            if w["worker_id"] == sup.worker_id or w["hostname"] != sup.hostname:
                continue
            # A pid names a process only in the pid space it came from. A daemon with
            # this hostname in another PID namespace (a container with the host's name)
            # or from an earlier boot is judged by its heartbeat alone: read here, its
            # pid would be some other process, or none, and a live daemon's tasks would
            # be taken from it and run twice.
            space = proc.pid_space_of(w["worker_id"])
            if space is not None and space != sup.pid_space:
                continue
            # In this pid space a daemon is alive only if its pid runs with its start time.
            if not proc.is_same_process_alive(w["pid"], w["process_started"]):
                dead.append(w["worker_id"])
        reclaimed = sup.backend.reclaim(dead, self.config.stale_after,
                                        reason="its worker died (no heartbeat)")
        if dead:
            for pid in proc.kill_tagged(dead):
                self.log.warning("child.orphan_killed", pid=pid, reason="its daemon died")
        for task_id, status in reclaimed:
            self.log.warning("task.reclaimed", task_id=task_id, status=status)
        if reclaimed:
            sup.dispatch.claim_soon()

    # ---- cron ----------------------------------------------------------------------

    def _fire_schedules(self):
        # croniter is the daemon's dependency, loaded only when the daemon runs.
        from liteq import scheduler

        now = time.monotonic()
        try:
            ids = scheduler.fire_due(self.sup.backend, log=self._schedule_event)
            upcoming = scheduler.next_fire_time(self.sup.backend)
        except DatabaseError as exc:
            self.sup.dispatch.outage.failed("schedules", exc)
            self.next_schedule = now + 1.0
            return
        if ids:
            self.sup.dispatch.claim_soon()
        # Wall clock for cron; the sleep itself is measured on the monotonic clock.
        wait = self.config.heartbeat_interval if upcoming is None else \
            min(max(upcoming - time.time(), 0.0), self.config.heartbeat_interval)
        self.next_schedule = now + wait

    def _schedule_event(self, event, **fields):
        level = "warning" if event.endswith("error") else "info"
        getattr(self.log, level)(event, **fields)
