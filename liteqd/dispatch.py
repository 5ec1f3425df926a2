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
from collections.abc import Sequence
from typing import Any

from structlog.typing import FilteringBoundLogger

from liteq.backends.base import Backend
from liteq.backends.limits import Limits
from liteq.core import TASK_REGISTRY
from liteq.errors import DatabaseError

from . import handout, protocol
from .config import DaemonConfig
from .exits import ChildExit, ExitCause, Fate, fates
from .lifecycle import Lifecycle
from .outage import Outage
from .outcomes import Outcomes, empty
from .pool import RECALL_AFTER_S, ChildHandle, Pool, TaskRun

# A claim leaves a task's started_at empty ("claimed, waiting for a child"); once a
# child starts it, the start is written with the next sync, but only for a task that
# has run this long by then: a shorter one's outcome records its real start anyway,
# so a drain of short tasks pays no extra write for it.
MARK_STARTED_AFTER_S = 0.05

# (pool, queues, room) of a pool worth a claim.
Wanted = tuple[Pool, list[str], int]


class Dispatcher:
    """Claims, hands out and records the tasks of one supervisor, and decides what
    becomes of them when their child ends."""

    def __init__(self, config: DaemonConfig, log: FilteringBoundLogger, backend: Backend,
                 outage: Outage, pools: Sequence[Pool], lifecycle: Lifecycle,
                 worker_id: str, paused: set[str]) -> None:
        self.config = config
        self.log = log
        self.backend = backend
        self.outage = outage
        self.pools = pools
        self.lifecycle = lifecycle
        self.worker_id = worker_id
        self.paused = paused            # queues an operator paused (the supervisor's set)
        self.outcomes = Outcomes(log)
        self.next_poll = 0.0
        self.due_hint: float | None = None  # epoch time of the next delayed task we know of
        self.polling = False            # this loop turn is a fallback poll
        self.follow_ups: list[float] = []  # claims owed shortly after a wake-up (monotonic)
        self.rescan_due = False         # the known due time passed: look up the next one
        self.check_claims = False       # give back claims this daemon never heard of
        self.limits: Limits | None = None  # global concurrency and rate limits
        self.rate_due: float | None = None  # monotonic time a rate limit allows a start again
        self.next_cancel_check = 0.0

    def after_outage(self) -> None:
        """The database is back: only the next successful sync can tell which claims
        were lost."""
        self.check_claims = True

    # ---- tasks and their children -------------------------------------------------

    def start_next(self, child: ChildHandle, when: float) -> None:
        """The one-task child goes on with the next task it holds, if any: its clock
        starts (`when`, epoch s), and a task cancelled meanwhile is told to stop."""
        child.recalling = False
        if not child.inflight:
            return
        nxt = child.inflight[0]
        nxt.started_mono = time.monotonic()
        nxt.started_wall = when
        self.outcomes.log_started(child, nxt)
        if nxt.cancelled:
            self.lifecycle.signal_cancel(child)

    def child_ended(self, child: ChildHandle, ended: ChildExit) -> int:
        """Carry out what becomes of the tasks of a child that ended (see exits.fates);
        returns how many went back to pending."""
        many = child.pool.async_slots > 1
        released: list[int] = []
        for decision in fates(child.channel.take_all(), ended, many, self.config.kill_grace):
            run, fate = decision.run, decision.fate
            if fate is Fate.RELEASE:
                released.append(run.id)
            elif fate in (Fate.TIMED_OUT, Fate.DIED):
                self.outcomes.record(run, False, decision.error, run.started_wall,
                                     time.time(), fate is Fate.TIMED_OUT)
            elif fate is Fate.CANCELLED:
                self.log.warning("task.cancelled", task_id=run.id, name=run.name,
                                 queue=run.queue, attempt=run.attempts, pid=child.pid,
                                 how="killed: it did not stop within the kill grace")
        self.outcomes.release(released)
        self.claim_soon()
        return len(released)

    def release_held(self, children: Sequence[ChildHandle]) -> None:
        """Hand back every task of children let go of without their exit."""
        for child in children:
            self.outcomes.release([run.id for run in child.channel.take_all()])

    def recall(self, child: ChildHandle) -> None:
        """Ask a busy child to hand back the tasks it holds unstarted, now (its running
        task turned out long: they would wait behind it while other children idle)."""
        child.recalling = True
        queued = [run.id for run in list(child.inflight)[1:]]
        if not child.channel.send([protocol.give_back(queued)]):
            self.lifecycle.kill(child, ExitCause.CRASH)
            return
        self.lifecycle.poke(child)

    def cancel(self, task_ids: Sequence[int]) -> None:
        """Stop the cancelled tasks among those the children hold: a queued one is never
        started; a running one gets TaskCancelled, and its child's process tree is
        killed if it has not stopped after the kill grace."""
        wanted = set(task_ids)
        for child in self.lifecycle.all_children():
            hit = [run for run in child.inflight if run.id in wanted and not run.cancelled]
            if not hit or child.kill_reason:
                continue
            for run in hit:
                run.cancelled = True
                self.log.info("task.cancelling", task_id=run.id, name=run.name, pid=child.pid)
            if not child.channel.send([protocol.cancel(run.id) for run in hit]):
                self.lifecycle.kill(child, ExitCause.CRASH)
                continue
            if any(run.cancelled for run in child.started_runs()):
                self.lifecycle.signal_cancel(child)

    # ---- syncing with the database ---------------------------------------------------

    def has_outcomes(self) -> bool:
        """True while outcomes wait to be recorded."""
        return self.outcomes.pending()

    def sync(self, stopping: bool) -> None:
        """Record this round's outcomes and claim the next tasks, in one commit; then
        hand the claimed tasks to the children (none while `stopping`)."""
        if time.monotonic() < self.outage.retry_at:
            return
        if not self.config.prefetch and not stopping:
            self._recall_overdue()
        wanted = [] if stopping else self._claims_wanted()
        checking = self.check_claims
        marks = self._starts_to_mark()
        if not wanted and not self.outcomes.pending() and not checking and not marks:
            return
        out = self.outcomes.held
        try:
            claims, recorded, unheld = self._write(out, marks, wanted, checking)
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
            self.outcomes.started.pop(run.id, None)
        self.outcomes.report(recorded, self.backend.get_tasks)
        if out["release"]:
            self.claim_soon()
        for _, _, _, delay in out["retry"]:
            self.wake(due=time.time() + delay)
        self.outcomes.held = empty()
        for pool, rows in claims:
            self._hand_out(pool, rows)

    def _write(self, out: dict[str, list[Any]], marks: list[TaskRun], wanted: list[Wanted],
               checking: bool) -> tuple[list[tuple[Pool, list[dict[str, Any]]]],
                                        Sequence[int], Sequence[int]]:
        """One transaction: starts, outcomes, releases, the check of lost claims and the
        claims; returns (claims, ids recorded, ids given back as unheld)."""
        backend = self.backend
        claims: list[tuple[Pool, list[dict[str, Any]]]] = []
        recorded: Sequence[int] = ()
        unheld: Sequence[int] = ()
        with backend.batch():
            if marks:
                backend.mark_started(self.worker_id, [(run.id, run.started_wall) for run in marks
                                                      if run.started_wall is not None])
            if out["done"] or out["failed"] or out["retry"]:
                recorded = backend.record_outcomes(
                    self.worker_id, done=out["done"], failed=out["failed"],
                    retry=out["retry"])
            if out["release"]:
                backend.release(self.worker_id, out["release"])
            if checking:
                unheld = backend.release_unheld(self.worker_id, self._held_ids())
            if wanted:
                claims = self._claim(wanted)
        return claims, recorded, unheld

    def _starts_to_mark(self) -> list[TaskRun]:
        """The started tasks whose start is due to be written (see MARK_STARTED_AFTER_S)."""
        started = self.outcomes.started
        if not started:
            return []
        ripe = time.monotonic() - MARK_STARTED_AFTER_S
        return [run for run in started.values()
                if run.started_mono is not None and run.started_mono <= ripe]

    def _mark_deadline(self) -> float | None:
        """When the earliest start not yet written is due to be (monotonic), or None."""
        starts = [run.started_mono for run in self.outcomes.started.values()
                  if run.started_mono is not None]
        return min(starts) + MARK_STARTED_AFTER_S if starts else None

    def _recall_overdue(self) -> None:
        """Automatic prefetch: take back the tasks queued behind a task that has run past
        RECALL_AFTER_S while a child of the pool is idle, so that they start there."""
        now = time.monotonic()
        for child in self._recallable():
            if Pool.overdue(child, now):
                self.recall(child)

    def _recallable(self) -> list[ChildHandle]:
        # Only while a child is idle: with every child busy a recall would only move
        # the tasks to another queue (and a busy machine, where a child waits for the
        # CPU past RECALL_AFTER_S, would churn them).
        out: list[ChildHandle] = []
        for pool in self.pools:
            if pool.async_slots > 1:
                continue  # nothing waits behind a coroutine: a child starts what it gets
            active = pool.active
            if any(c.ready and not c.inflight for c in active):
                out.extend(c for c in active if len(c.inflight) > 1 and not c.recalling
                           and c.inflight[0].started_mono is not None)
        return out

    def _recall_deadlines(self) -> list[float]:
        if self.config.prefetch:
            return []
        return [c.inflight[0].started_mono + RECALL_AFTER_S for c in self._recallable()
                if c.inflight[0].started_mono is not None]

    def _held_ids(self) -> set[int]:
        """Every task this daemon knows it has: in a child's hands, or with an outcome
        not recorded yet."""
        held = {run.id for child in self.lifecycle.all_children() for run in child.inflight}
        return held | self.outcomes.held_ids()

    # ---- when to claim ---------------------------------------------------------

    def claim_soon(self) -> None:
        """Let every pool claim at the next sync."""
        for pool in self.pools:
            pool.maybe_work = True

    def wake(self, due: float | None = None) -> None:
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
            self.follow_ups = [now + s for s in self.backend.wake_follow_ups_s]
        elif due <= time.time():
            self.claim_soon()
        elif self.due_hint is None or due < self.due_hint:
            self.due_hint = due

    def deadlines(self) -> list[float]:
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
        if self.outcomes.started:
            mark = self._mark_deadline()
            if mark is not None:
                out.append(max(mark, retry_at))
        return out + self._recall_deadlines()

    def _claims_wanted(self) -> list[Wanted]:
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
        wanted: list[Wanted] = []
        for pool in self.pools:
            if not pool.maybe_work:
                continue
            room = pool.capacity(self.config.prefetch, now)
            queues = [q for q in pool.queues if q not in self.paused]
            if room > 0 and queues:
                wanted.append((pool, queues, room))
        return wanted

    def _claim(self, wanted: list[Wanted]) -> list[tuple[Pool, list[dict[str, Any]]]]:
        """Claim due tasks for each wanted pool; returns [(pool, rows)]."""
        backend = self.backend
        claims: list[tuple[Pool, list[dict[str, Any]]]] = []
        idle_queues: list[str] = []
        for pool, queues, room in wanted:
            rows = backend.claim(self.worker_id, queues, room, limits=self.limits)
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
        held = [r.id for c in self.lifecycle.all_children() for r in c.inflight
                if not r.cancelled]
        if not held:
            return
        try:
            rows = self.backend.get_tasks(held)
        except DatabaseError as exc:
            self.outage.failed("cancel_check", exc)
            return
        cancelled = [r["id"] for r in rows if r["status"] == "cancelled"]
        if cancelled:
            self.cancel(cancelled)

    def refresh_limits(self) -> None:
        """Read the global concurrency and rate limits from the app's tasks,
        --queue-limit and --queue-rate (at start and after a reload)."""
        by_name = {name: n for name, t in TASK_REGISTRY.items() if (n := t.concurrency)}
        rate_by_name = {name: r for name, t in TASK_REGISTRY.items()
                        if (r := t.rate_per_second)}
        limits = Limits(by_name, dict(self.config.queue_limits), rate_by_name,
                        dict(self.config.queue_rates))
        self.limits = limits if limits else None

    # ---- handing out -------------------------------------------------------------

    def _hand_out(self, pool: Pool, rows: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        children = pool.takers(self.config.prefetch, now)
        # A frozen host: a child must not start a task after this (see TaskMessage).
        start_by = now + self.config.stale_after - self.config.heartbeat_interval
        timeout = self.config.timeout
        if pool.async_slots > 1:
            room = {c.pid: c.room() for c in children}
            slotted, unplaced = handout.by_slots(rows, room, pool.async_slots, _is_coroutine)
            if unplaced:
                self.outcomes.release(unplaced)
            batches = {pid: [(handout.task_run(row, timeout, co), row) for row, co in batch]
                       for pid, batch in slotted.items()}
        elif not children:
            # Their tasks turned out long between the claim and now: let others take these.
            self.outcomes.release([row["id"] for row in rows])
            return
        else:
            batches = {pid: [(handout.task_run(row, timeout), row) for row in batch]
                       for pid, batch in handout.least_loaded(rows, children).items()}
        for child in children:
            batch = batches.get(child.pid)
            if batch:
                self._give(child, [run for run, _ in batch],
                           [handout.task_message(run, row, start_by) for run, row in batch])

    def _give(self, child: ChildHandle, runs: list[TaskRun],
              messages: list[protocol.Message]) -> None:
        """Send tasks to a child; a one-task child that was idle starts the first."""
        was_idle = not child.inflight and child.pool.async_slots == 1
        sent = child.channel.hand(runs, messages)
        if was_idle:
            self.start_next(child, time.time())
        if not sent:
            # The child is gone; its exit requeues what it held.
            self.lifecycle.kill(child, ExitCause.CRASH)


def _is_coroutine(name: str) -> bool:
    task = TASK_REGISTRY.get(name)
    return bool(task is not None and task.is_async)
