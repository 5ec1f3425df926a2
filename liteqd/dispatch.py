"""Dispatch: claiming tasks for the children, and recording what became of them.

Each loop turn the supervisor records the outcomes gathered since the last one
and claims as many due tasks as its children have room for, in one transaction;
then it hands the claimed tasks out. With nothing to record or claim it does not
touch the database at all (on SQLite the write lock is the producers' too).

When to claim: after a wake-up from a producer (and once more shortly after, to
pick up the wake-ups producers skip), when a known due time comes, when a child
frees up, and at the fallback poll.

After an outage the first sync also gives back the tasks running for this daemon
that it does not hold: a claim can commit on the server while its answer is lost
with the connection, and such a task would otherwise stay running for good, its
daemon alive and heartbeating.
"""

import time

from liteq import retry as retry_policy
from liteq.backends.limits import Limits
from liteq.core import TASK_REGISTRY
from liteq.errors import DatabaseError

from . import protocol
from .outage import Outage
from .pool import RECALL_AFTER_S, Pool, TaskRun

# A claim leaves a task's started_at empty ("claimed, waiting for a child"); once a
# child starts it, the start is written with the next sync, but only for a task that
# has run this long by then: a shorter one's outcome records its real start anyway,
# so a drain of short tasks pays no extra write for it.
MARK_STARTED_AFTER_S = 0.05


class Dispatcher:
    """Claims, hands out and records the tasks of one supervisor."""

    def __init__(self, sup) -> None:
        self.sup = sup
        self.log = sup.log
        self.config = sup.config
        self.outcomes = {"done": [], "failed": [], "retry": [], "release": []}
        self.next_poll = 0.0
        self.due_hint = None            # epoch time of the next delayed task we know of
        self.polling = False            # this loop turn is a fallback poll
        self.follow_ups = []            # claims owed shortly after a wake-up (monotonic)
        self.rescan_due = False         # the known due time passed: look up the next one
        self.outage = Outage(sup.log, on_recovered=self._after_outage)
        self.check_claims = False       # give back claims this daemon never heard of
        self.limits = None              # global concurrency and rate limits (refresh_limits)
        self.rate_due = None            # monotonic time a rate limit allows a start again
        self.next_cancel_check = 0.0
        self.reports = []               # (event, fields) of outcomes not yet recorded
        self.started = {}               # task id -> TaskRun started, start not yet written
        self.tasks_done = 0             # outcomes the database recorded ...
        self.tasks_failed = 0
        self.tasks_refused = 0          # ... and those it refused

    # ---- outcomes ------------------------------------------------------------

    def log_started(self, child, run):
        """Log that a child started a task (its start is written to the database with
        a later sync, see MARK_STARTED_AFTER_S)."""
        self.started[run.id] = run
        self.log.info("task.started", task_id=run.id, name=run.name, queue=run.queue,
                      attempt=run.attempts, pid=child.pid)

    def record(self, run, ok, text, started, finished, timed_out, retry=None) -> None:
        """Queue the outcome of one attempt: done, a retry after its back-off, or failed.

        retry=False fails the task at once (an error no retry can fix); a number
        is a retry the task asked for (liteq.Retry) after that many seconds, while
        retries remain; otherwise the retry policy decides. The outcome is logged
        and counted once the database has recorded it (see sync()).
        """
        self.started.pop(run.id, None)  # the outcome records the start itself
        duration_ms = round((finished - started) * 1000, 3) if started and finished else None
        fields = dict(task_id=run.id, name=run.name, queue=run.queue, attempt=run.attempts,
                      duration_ms=duration_ms)
        if ok:
            self.outcomes["done"].append((run.id, text, started, finished))
            self.reports.append(("task.succeeded", fields))
            return
        error, _, details = text.partition("\n")
        fields.update(error=error, timed_out=timed_out)
        if details.strip():
            fields["traceback"] = details.strip("\n")
        if retry is not False and retry_policy.should_retry(run.attempts, run.max_retries):
            delay = retry if isinstance(retry, (int, float)) and retry is not True else \
                retry_policy.retry_delay(run.attempts, run.retry_delay, run.retry_backoff,
                                         run.retry_max_delay)
            self.outcomes["retry"].append((run.id, text, started, delay))
            self.reports.append(("task.retrying", dict(fields, retry_in_s=round(delay, 3))))
        else:
            self.outcomes["failed"].append((run.id, text, started, finished))
            self.reports.append(("task.failed", fields))

    def release(self, task_ids) -> None:
        """Queue claimed tasks that never started, to go back to pending."""
        for task_id in task_ids:
            self.started.pop(task_id, None)
        self.outcomes["release"].extend(task_ids)

    def has_outcomes(self) -> bool:
        """True while outcomes wait to be recorded."""
        return any(self.outcomes.values())

    def sync(self) -> None:
        """Record this round's outcomes and claim the next tasks, in one commit; then
        hand the claimed tasks to the children."""
        if time.monotonic() < self.outage.retry_at:
            return
        out = self.outcomes
        backend = self.sup.backend
        if not self.config.prefetch and not self.sup.stopping:
            self._recall_overdue()
        wanted = [] if self.sup.stopping else self._claims_wanted()
        checking = self.check_claims
        marks = self._starts_to_mark()
        if not wanted and not self.has_outcomes() and not checking and not marks:
            return
        claims, recorded, unheld = [], (), ()
        try:
            with backend.batch():
                if marks:
                    backend.mark_started(self.sup.worker_id,
                                         [(run.id, run.started_wall) for run in marks])
                if out["done"] or out["failed"] or out["retry"]:
                    recorded = backend.record_outcomes(
                        self.sup.worker_id, done=out["done"], failed=out["failed"],
                        retry=out["retry"])
                if out["release"]:
                    backend.release(self.sup.worker_id, out["release"])
                if checking:
                    unheld = backend.release_unheld(self.sup.worker_id, self._held_ids())
                if wanted:
                    claims = self._claim(wanted)
        except DatabaseError as exc:
            # Keep the outcomes and try again shortly; supervision goes on meanwhile.
            self.outage.failed("sync", exc)
            return
        if checking:
            self.check_claims = False
            for task_id in unheld:
                self.log.warning("task.released", task_id=task_id,
                                 reason="claimed by this daemon when an outage cut off "
                                        "the answer; it never started")
            if unheld:
                self.claim_soon()
        self.outage.succeeded()  # when this ends an outage, the next sync checks
        for run in marks:
            self.started.pop(run.id, None)
        self._report(recorded)
        if out["release"]:
            self.claim_soon()
        for _, _, _, delay in out["retry"]:
            self.wake(due=time.time() + delay)
        self.outcomes = {"done": [], "failed": [], "retry": [], "release": []}
        for pool, rows in claims:
            self._hand_out(pool, rows)

    def _starts_to_mark(self):
        """The started tasks whose start is due to be written (see MARK_STARTED_AFTER_S)."""
        if not self.started:
            return []
        ripe = time.monotonic() - MARK_STARTED_AFTER_S
        return [run for run in self.started.values()
                if run.started_mono is not None and run.started_mono <= ripe]

    def _mark_deadline(self):
        """When the earliest start not yet written is due to be (monotonic), or None."""
        starts = [run.started_mono for run in self.started.values()
                  if run.started_mono is not None]
        return min(starts) + MARK_STARTED_AFTER_S if starts else None

    def _recall_overdue(self):
        """Automatic prefetch: take back the tasks queued behind a task that has run past
        RECALL_AFTER_S while a child of the pool is idle, so that they start there."""
        now = time.monotonic()
        for child in self._recallable():
            if Pool.overdue(child, now):
                self.sup.lifecycle.recall(child)

    def _recallable(self):
        # Only while a child is idle: with every child busy a recall would only move
        # the tasks to another queue (and a busy machine, where a child waits for the
        # CPU past RECALL_AFTER_S, would churn them).
        out = []
        for pool in self.sup.pools:
            if pool.async_slots > 1:
                continue  # nothing waits behind a coroutine: a child starts what it gets
            active = pool.active
            if any(c.ready and not c.inflight for c in active):
                out.extend(c for c in active if len(c.inflight) > 1 and not c.recalling
                           and c.running.started_mono is not None)
        return out

    def _recall_deadlines(self):
        if self.config.prefetch:
            return []
        return [c.running.started_mono + RECALL_AFTER_S for c in self._recallable()]

    def _after_outage(self) -> None:
        # Only the next successful sync can tell which claims were lost.
        self.check_claims = True

    def _held_ids(self):
        """Every task this daemon knows it has: in a child's hands, or with an outcome
        not recorded yet."""
        held = {run.id for child in self.sup.lifecycle.all_children()
                for run in child.inflight}
        for kind in ("done", "failed", "retry"):
            held.update(row[0] for row in self.outcomes[kind])
        held.update(self.outcomes["release"])
        return held

    def _report(self, recorded) -> None:
        """Log and count the outcomes the database recorded; the others were refused."""
        if not self.reports:
            return
        recorded = set(recorded)
        refused = []
        for event, fields in self.reports:
            if fields["task_id"] not in recorded:
                refused.append((event, fields))
                continue
            if event == "task.succeeded":
                self.tasks_done += 1
                self.log.info(event, **fields)
            elif event == "task.retrying":
                self.log.warning(event, **fields)
            else:
                self.tasks_failed += 1
                self.log.error(event, **fields)
        self.reports = []
        if refused:
            self._report_refused(refused)

    def _report_refused(self, refused) -> None:
        # Rare (this daemon was frozen or cut off past stale-after): say what the task
        # became, so an operator sees why the outcome was not kept.
        try:
            now_rows = {r["id"]: r for r in self.sup.backend.get_tasks(
                [f["task_id"] for _, f in refused])}
        except DatabaseError:
            now_rows = {}
        for event, fields in refused:
            self.tasks_refused += 1
            row = now_rows.get(fields["task_id"])
            if row is None:
                reason = "the task no longer exists"
            elif row["status"] == "running":
                reason = f"the task was reclaimed and now runs on {row['worker_id']}"
            else:
                reason = f"the task is no longer running for this daemon (now {row['status']})"
            self.log.warning("task.outcome_refused", outcome=event.split(".", 1)[1],
                             reason=reason, **fields)

    # ---- when to claim ---------------------------------------------------------

    def claim_soon(self) -> None:
        """Let every pool claim at the next sync."""
        for pool in self.sup.pools:
            pool.maybe_work = True

    def wake(self, due=None) -> None:
        """A producer enqueued something: look for work now, or at `due` (epoch s)."""
        if due is None:
            self.claim_soon()
            # Producers skip wake-ups that follow another closely (socket wake-ups
            # within THROTTLE_S, PostgreSQL's NOTIFY within NOTIFY_INTERVAL_S of
            # liteq.backends.postgres.tasks); a claim or a few after the latest
            # wake-up (the backend's wake_follow_ups_s) pick up what they enqueued
            # meanwhile, the later ones what committed late on a busy server. A
            # claim that finds nothing is one index probe; the fallback poll
            # bounds whatever comes later still.
            now = time.monotonic()
            self.follow_ups = [now + s for s in self.sup.backend.wake_follow_ups_s]
        elif due <= time.time():
            self.claim_soon()
        elif self.due_hint is None or due < self.due_hint:
            self.due_hint = due

    def deadlines(self):
        """The monotonic times at which a claim may be due (for the loop's sleep)."""
        now = time.monotonic()
        retry_at = self.outage.retry_at
        out = [max(self.next_poll, retry_at)]
        if self.due_hint is not None:
            out.append(max(now + self.due_hint - time.time(), retry_at))
        if self.follow_ups:
            out.append(self.follow_ups[0])
        if self.rate_due is not None:
            out.append(max(self.rate_due, retry_at))
        if self.started:
            mark = self._mark_deadline()
            if mark is not None:
                out.append(max(mark, retry_at))
        return out + self._recall_deadlines()

    def _claims_wanted(self):
        """The pools worth a claim now: [(pool, queues, room)].

        A pool is worth one when something may be due (a wake-up, a known due
        time that has come, or the fallback poll) and its children have room.
        """
        now, wall = time.monotonic(), time.time()
        if self.due_hint is not None and wall >= self.due_hint:
            # Only the earliest due time is kept: once it passes, ask the database
            # for the next one (below), or later tasks would wait for the poll.
            self.due_hint = None
            self.rescan_due = True
            self.claim_soon()
        if self.follow_ups and now >= self.follow_ups[0]:
            self.follow_ups = [t for t in self.follow_ups if t > now]
            self.claim_soon()
        if self.rate_due is not None and now >= self.rate_due:
            self.rate_due = None
            self.claim_soon()
        self.polling = now >= self.next_poll
        if self.polling:
            # The fallback poll: finds work whose wake-up was lost or never sent.
            self.claim_soon()
            self.next_poll = now + self.config.poll_interval
        wanted = []
        for pool in self.sup.pools:
            if not pool.maybe_work:
                continue
            room = pool.capacity(self.config.prefetch, now)
            queues = [q for q in pool.queues if q not in self.sup.paused]
            if room > 0 and queues:
                wanted.append((pool, queues, room))
        return wanted

    def _claim(self, wanted):
        """Claim due tasks for each wanted pool; returns [(pool, rows)]."""
        backend = self.sup.backend
        claims, idle_queues = [], []
        for pool, queues, room in wanted:
            rows = backend.claim(self.sup.worker_id, queues, room, limits=self.limits)
            if len(rows) < room:
                pool.maybe_work = False  # nothing more is due now
                idle_queues.extend(queues)
            rate_wait = backend.rate_wait() if self.limits else None
            if rate_wait is not None:
                # A rate limit held back due tasks: claim again when it allows the next
                # start, not at the next poll.
                at = time.monotonic() + rate_wait
                self.rate_due = at if self.rate_due is None else min(self.rate_due, at)
            if rows:
                claims.append((pool, rows))
        if (self.polling or self.rescan_due) and idle_queues:
            self.rescan_due = False
            # Learn when the next delayed task is due, so we sleep until exactly
            # then. Only here: with a backlog due now this scan is not needed.
            wait = backend.next_due(idle_queues)
            if wait is not None and wait > 0:
                self.wake(due=time.time() + wait)
        return claims

    def check_cancelled(self) -> None:
        """Every poll interval, look up whether a task the children hold was cancelled:
        the fallback when the wake-up channel's message was lost."""
        now = time.monotonic()
        if now < self.next_cancel_check or now < self.outage.retry_at:
            return
        self.next_cancel_check = now + self.config.poll_interval
        held = [r.id for c in self.sup.lifecycle.all_children() for r in c.inflight
                if not r.cancelled]
        if not held:
            return
        try:
            rows = self.sup.backend.get_tasks(held)
        except DatabaseError as exc:
            self.outage.failed("cancel_check", exc)
            return
        cancelled = [r["id"] for r in rows if r["status"] == "cancelled"]
        if cancelled:
            self.sup.lifecycle.cancel(cancelled)

    def refresh_limits(self):
        """Read the global concurrency and rate limits from the app's tasks,
        --queue-limit and --queue-rate (at start and after a reload)."""
        by_name = {name: t.concurrency for name, t in TASK_REGISTRY.items()
                   if getattr(t, "concurrency", None)}
        rate_by_name = {name: t.rate_per_second for name, t in TASK_REGISTRY.items()
                        if getattr(t, "rate_per_second", None)}
        limits = Limits(by_name, dict(self.config.queue_limits), rate_by_name,
                        dict(self.config.queue_rates))
        self.limits = limits if limits else None

    # ---- handing out -------------------------------------------------------------

    def _hand_out(self, pool, rows):
        if pool.async_slots > 1:
            self._hand_out_slots(pool, rows)
            return
        now = time.monotonic()
        children = pool.takers(self.config.prefetch, now)
        if not children:
            # Their tasks turned out long between the claim and now: let others take these.
            self.release([row["id"] for row in rows])
            return
        batches = {c.pid: [] for c in children}
        # A frozen host: a child must not start a task after this (see TaskMessage).
        start_by = now + self.config.stale_after - self.config.heartbeat_interval
        for row in rows:
            # Least-loaded child first, so the best task goes to an idle child.
            child = min(children, key=lambda c: len(c.inflight) + len(batches[c.pid]))
            limit = row["timeout"] if row["timeout"] is not None else self.config.timeout
            run = TaskRun(row["id"], row["name"], row["queue"], row["attempts"],
                          row["max_retries"], limit, row["retry_delay"],
                          row["retry_backoff"], row["retry_max_delay"])
            batches[child.pid].append(
                (run, protocol.task(run.id, run.name, row["payload"], limit, run.queue,
                                    run.attempts, run.max_retries, row["created_at"],
                                    start_by)))
        lifecycle = self.sup.lifecycle
        for child in children:
            batch = batches[child.pid]
            if not batch:
                continue
            was_idle = not child.inflight
            child.inflight.extend(run for run, _ in batch)
            if was_idle:
                head = child.inflight[0]
                head.started_mono = time.monotonic()
                head.started_wall = time.time()
                self.log_started(child, head)
            if not lifecycle.send(child, [m for _, m in batch]):
                # The child is gone; its exit requeues what it held.
                lifecycle.kill(child, "crash")

    def _hand_out_slots(self, pool, rows):
        """Hand claimed tasks to the children of a pool with --async-concurrency N > 1.

        A coroutine task takes one of a child's N slots and goes to the child with the
        most free; a sync task takes all N (it runs alone in its child) and goes to a
        child with nothing in hand when there is one, else behind the coroutines of
        the child with the most free slots (which then starts nothing more until it has
        run it). A task that fits nowhere goes back to pending. The children say when
        they start each task (Started), and its clock runs from then.
        """
        n = pool.async_slots
        room = {c.pid: c.room() for c in pool.takers(self.config.prefetch, time.monotonic())}
        children = {c.pid: c for c in pool.active if c.pid in room}
        batches = {pid: [] for pid in room}
        unplaced = []
        now = time.monotonic()
        start_by = now + self.config.stale_after - self.config.heartbeat_interval
        for row in rows:
            task = TASK_REGISTRY.get(row["name"])
            coroutine = bool(task is not None and task.is_async)
            pid = None
            if not coroutine:
                pid = next((p for p, r in room.items() if r == n), None)
            if pid is None and room:
                pid = max(room, key=room.__getitem__)
                if room[pid] <= 0:
                    pid = None
            if pid is None:
                unplaced.append(row["id"])
                continue
            room[pid] = room[pid] - 1 if coroutine else 0
            limit = row["timeout"] if row["timeout"] is not None else self.config.timeout
            run = TaskRun(row["id"], row["name"], row["queue"], row["attempts"],
                          row["max_retries"], limit, row["retry_delay"],
                          row["retry_backoff"], row["retry_max_delay"], coroutine=coroutine)
            batches[pid].append(
                (run, protocol.task(run.id, run.name, row["payload"], limit, run.queue,
                                    run.attempts, run.max_retries, row["created_at"],
                                    start_by)))
        if unplaced:
            self.release(unplaced)
        lifecycle = self.sup.lifecycle
        for pid, batch in batches.items():
            if not batch:
                continue
            child = children[pid]
            child.inflight.extend(run for run, _ in batch)
            if not lifecycle.send(child, [m for _, m in batch]):
                lifecycle.kill(child, "crash")
