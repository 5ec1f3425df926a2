"""The interface every queue backend implements (SQLite today; PostgreSQL next).

A backend owns its SQL, its driver and its connections; nothing outside
liteq/backends/ builds SQL or treats the database as a file. Callers speak to
this interface: the library's producers (`.delay()`), the daemon (claim,
outcomes, heartbeat, reclaim), the monitor (reads), operators (cancel, retry,
purge) and the scheduler (schedules).

Conventions every implementation keeps:
- Times are epoch seconds (float). "Now" and due times are judged by the
  database's clock where the database has one (PostgreSQL); callers pass delays
  in seconds, never their own "now", where that matters. The daemons judge
  heartbeats by whether they change, not by their age (liteqd/liveness.py).
- Every state change is an UPDATE guarded by the state it expects (and the
  worker that owns the row), so a late writer never overwrites a newer state.
- Rows are returned as plain dicts whose keys are the column names below.
- Driver errors surface as liteq.errors.DatabaseError (or a subclass), with the
  driver's exception as __cause__.

Task rows (dicts) carry: id, name, queue, status, priority, attempts,
max_retries, worker_id, run_at, created_at, started_at, finished_at, result,
error, payload, timeout, retry_delay, retry_backoff, retry_max_delay, unique_key.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..taskspec import NewTask, NewTasks
    from .filters import TaskFilter
    from .limits import Limits

TASK_STATUSES = ("pending", "running", "done", "failed", "cancelled")

# The error a task cancelled while running gets.
CANCEL_TEXT = "TaskCancelled: cancelled while it was running"

# get_backend(), handed over by liteq.backends (which imports this module, not the reverse).
_thread_lookup: list[Callable[[str | None], Backend]] = []


def set_thread_lookup(lookup: Callable[[str | None], Backend]) -> None:
    """Make backend_in_thread() find the calling thread's backend with `lookup`."""
    _thread_lookup[:] = [lookup]


class WakeChannel(abc.ABC):
    """The daemon's end of the wake-up channel: a file descriptor for select().

    When it is readable, drain() returns what producers said since the last call.
    A channel whose connection breaks raises DatabaseError (DatabaseUnavailable)
    from drain(); the daemon then closes it and opens a new one once the database
    answers (its poll finds the tasks meanwhile).
    """

    @abc.abstractmethod
    def fileno(self) -> int:
        """The descriptor to watch for reading: the same number for the channel's whole
        life, even after its connection broke (the daemon unregisters it by it)."""

    @abc.abstractmethod
    def drain(self) -> tuple[bool, float | None]:
        """Read everything pending; returns (due_now: bool, due_later: epoch s or None).

        due_later is on this host's clock (time.time()), converted where the
        producer's clock is another machine's.
        """

    def cancelled(self) -> list[int]:
        """The ids of running tasks whose cancellation arrived in the drains since the
        last call (cleared by the call)."""
        ids: list[int] = list(getattr(self, "_cancelled", ()))
        self._cancelled: list[int] = []
        return ids

    def _note_cancel(self, task_id: int) -> None:
        if not hasattr(self, "_cancelled"):
            self._cancelled = []
        self._cancelled.append(int(task_id))

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening and release the descriptor (and any socket file)."""


class Backend(abc.ABC):
    """One queue database. Instances are never shared with a forked child, nor between
    threads unless shared_across_threads says so; use liteq.backends.get_backend()."""

    #: "sqlite" or "postgresql"
    kind: str | None = None

    #: When a daemon claims again after each wake-up (seconds after it), to pick up
    #: the enqueues whose producers skipped their wake-up because one had just gone
    #: out (sqlite/wake.py's THROTTLE_S for the socket wake-ups).
    wake_follow_ups_s: tuple[float, ...] = (0.002,)

    #: True when one instance serves every thread of a process (get_backend() then
    #: keeps one per process instead of one per thread).
    shared_across_threads = False

    #: A string that names the queue (an absolute file path, or a URL without its
    #: password). Control sockets and caches are keyed on it.
    identity: str | None = None

    #: What open_backend() was given (a path or URL; may hold a password: never shown).
    target: str | None = None

    # ---- producers ---------------------------------------------------------

    @abc.abstractmethod
    def enqueue(self, task: NewTask) -> int:
        """Insert one pending task (a liteq.taskspec.NewTask), commit, wake the
        daemons; returns its id. When the task has a unique_key that a pending or
        running task holds, insert nothing, wake no one, and return that task's id
        (race-free: the database enforces one holder per key)."""

    @abc.abstractmethod
    def enqueue_chain(self, tasks: list[NewTask]) -> list[int]:
        """Insert NewTasks in one transaction, each depending on the one before it (its
        parents: its own depends_on, then the previous step); returns their ids.

        A task with depends_on is claimed only once every parent is done. A parent
        that does not exist is a ValueError naming it, and nothing is written; a
        parent already failed or cancelled makes the task cancelled at once, with an
        error naming that parent. Cycles cannot form: a task can only depend on
        tasks that already exist. enqueue() of a task with depends_on is a chain of
        one."""

    @abc.abstractmethod
    def parent_results(self, task_id: int) -> list[str | None]:
        """The stored results (JSON text) of the task's parents, in depends_on order."""

    @abc.abstractmethod
    def enqueue_many(self, tasks: NewTasks) -> list[int]:
        """Insert every call of a liteq.taskspec.NewTasks in one transaction with one
        wake-up; returns the ids in order."""

    async def aenqueue(self, task: NewTask) -> int:
        """enqueue() for asyncio code: never blocks the event loop. This default runs it
        in a worker thread, on that thread's own backend (see backend_in_thread)."""
        import asyncio
        return await asyncio.to_thread(lambda: self.backend_in_thread().enqueue(task))

    async def aget_task(self, task_id: int) -> dict[str, Any] | None:
        """get_task() for asyncio code (default: in a worker thread)."""
        import asyncio
        return await asyncio.to_thread(lambda: self.backend_in_thread().get_task(task_id))

    def backend_in_thread(self) -> Backend:
        """The calling thread's backend of this queue (one not shared between threads
        must not be used from a worker thread)."""
        return _thread_lookup[0](self.target)

    @abc.abstractmethod
    def notify(self, due: float | None = None) -> None:
        """Tell the daemons a task is due at `due` (epoch s; None: now). Never raises,
        never blocks; a hint only (daemons also poll)."""

    @abc.abstractmethod
    def notify_cancel(self, task_id: int) -> None:
        """Tell the daemons task `task_id` was cancelled now (its runner stops it); a hint."""

    # ---- the daemon ----------------------------------------------------------

    @abc.abstractmethod
    def batch(self) -> AbstractContextManager[Any]:
        """A context manager that runs the calls inside it in one transaction
        (the daemon records a round of outcomes and claims in one commit)."""

    @abc.abstractmethod
    def claim(self, worker_id: str, queues: Sequence[str], limit: int,
              limits: Limits | None = None) -> list[dict[str, Any]]:
        """Mark up to `limit` due pending tasks of `queues` running for `worker_id`.

        limits (liteq.backends.limits.Limits): global concurrency and rate limits
        by task name and by queue, counted over every daemon, enforced in the
        claim's own transaction.

        Order: priority desc, due time, id. Each returned dict has id, name,
        payload, queue, priority, run_at, attempts (counting this one),
        max_retries, timeout, retry_delay, retry_backoff, retry_max_delay, created_at.
        """

    def rate_wait(self) -> float | None:
        """Seconds from now until a rate limit that held back due tasks in the last
        claim allows a start again (the daemon claims then instead of waiting for its
        poll), or None when no rate limit held one back. Read from the claim's own
        work: no query."""
        return None

    @abc.abstractmethod
    def record_outcomes(self, worker_id: str, done: Iterable[tuple[Any, ...]] = (),
                        failed: Iterable[tuple[Any, ...]] = (),
                        retry: Iterable[tuple[Any, ...]] = ()) -> list[int]:
        """Record finished attempts in one transaction; returns the ids recorded.

        done:   (task_id, result_json, started_at, finished_at)
        failed: (task_id, error_text, started_at, finished_at)
        retry:  (task_id, error_text, started_at, delay_s): pending again after delay_s
        Each applies only while the row is still running for this worker: an id
        missing from the result was refused (another daemon reclaimed the task, or it
        was cancelled), and its outcome must not be reported as recorded.

        In the same transaction, a done task's children wait for one parent fewer
        (the daemons are woken when one became claimable), and a failed task's
        pending dependents are cancelled, transitively, with an error naming it;
        the outcomes are added to the statistics (task_stats()), and each failed
        or retried attempt's error is kept (task_errors()).
        """

    @abc.abstractmethod
    def release(self, worker_id: str, task_ids: Iterable[int]) -> int:
        """Return claimed tasks that never started to pending, uncounting the attempt."""

    @abc.abstractmethod
    def mark_started(self, worker_id: str, started: Sequence[tuple[int, float]]) -> int:
        """Record when a child really started claimed tasks: started is
        [(task_id, epoch_s)]. A claim leaves started_at NULL (claimed, waiting for a
        child); this sets it, only while the row is still running for this worker
        and not marked yet. Returns how many rows changed."""

    @abc.abstractmethod
    def claimed_counts(self) -> dict[str, int]:
        """{queue: n} of tasks claimed by a daemon but not started by a child yet
        (status running, started_at NULL); queues without any are left out."""

    @abc.abstractmethod
    def release_unheld(self, worker_id: str, held_ids: Iterable[int]) -> list[int]:
        """Return to pending, uncounting the attempt, every task running for worker_id
        except `held_ids`; returns the ids given back.

        After an outage the daemon gives back the claims it never heard of: a claim
        whose commit took effect while the answer was lost with the connection.
        """

    @abc.abstractmethod
    def next_due(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest pending task of `queues` is due (<= 0: due now),
        or None when none is pending."""

    @abc.abstractmethod
    def heartbeat(self, worker_id: str, hostname: str, queues: Sequence[str], concurrency: int,
                  pid: int, process_started: float, started_at: float | None = None) -> None:
        """Insert or refresh this daemon's row in the workers table."""

    @abc.abstractmethod
    def remove_worker(self, worker_id: str) -> None:
        """Delete a daemon's worker row (on a clean stop)."""

    @abc.abstractmethod
    def list_workers(self) -> list[dict[str, Any]]:
        """Every worker row (worker_id, hostname, queues, concurrency,
        last_heartbeat, pid, process_started, started_at), newest heartbeat first."""

    @abc.abstractmethod
    def reclaim(self, dead_worker_ids: Iterable[str] = (), stale_after: float | None = None,
                reason: str = "worker died", stale_heartbeats: dict[str, Any] | None = None) -> list[tuple[int, str]]:
        """Give back the running tasks of dead workers in one guarded statement.

        Dead: named in dead_worker_ids, a row that still holds the heartbeat that
        stale_heartbeats ({worker_id: last_heartbeat as list_workers gave it}) names
        for it (one that beat meanwhile is alive), a heartbeat older than stale_after
        seconds (by the database's clock), or no worker row at all. Tasks with
        attempts left go back to pending, keeping their due time (run_at), the rest
        fail with `reason`. Dead worker rows are deleted. Returns [(task_id,
        new_status)]. The pending dependents of the tasks that failed are cancelled
        in the same transaction, transitively.
        """

    @abc.abstractmethod
    def open_wake_channel(self, control_socket: str) -> WakeChannel:
        """Start listening for producers' wake-ups (the daemon calls this once).

        control_socket is the daemon's control socket path; a backend whose
        wake-ups travel over a socket file puts it beside that one.
        """

    # ---- monitor reads ---------------------------------------------------------

    @abc.abstractmethod
    def get_task(self, task_id: int) -> dict[str, Any] | None:
        """One task row, or None."""

    def task_errors(self, task_id: int) -> list[dict[str, Any]]:
        """Every recorded attempt's error of a task, oldest first: [{attempt, error,
        finished_at}] (the failures, timeouts, reclaims and a cancel while it ran;
        the task row's `error` is the last one)."""
        return []

    async def atask_errors(self, task_id: int) -> list[dict[str, Any]]:
        """task_errors() for asyncio code (default: in a worker thread)."""
        import asyncio
        return await asyncio.to_thread(lambda: self.backend_in_thread().task_errors(task_id))

    def task_stats(self) -> list[dict[str, Any]]:
        """The outcome statistics, counted as outcomes are recorded and never lowered
        by retention or retries: [{queue, name, metric, bucket, count, total}]
        (liteq.backends.stats describes the metrics)."""
        return []

    @abc.abstractmethod
    def get_tasks(self, task_ids: Iterable[int]) -> list[dict[str, Any]]:
        """Rows for several ids (missing ids are skipped)."""

    @abc.abstractmethod
    def find_tasks(self, status: str | None = None, queue: str | None = None,
                   name: str | None = None, limit: int = 50, offset: int = 0,
                   order: str = "id", *, search: str | None = None,
                   statuses: tuple[str, ...] | None = None, below: int | None = None,
                   at_least: int | None = None) -> list[dict[str, Any]]:
        """Tasks matching the optional filters, newest first (order 'id' or 'finished').

        search: the name, the arguments' JSON text or the error contains it, ignoring
        case; statuses: the status is one of these; below / at_least: an id range
        (the panel's search scans the newest tasks one slice of ids at a time)."""

    @abc.abstractmethod
    def count_tasks(self, status: str | None = None, queue: str | None = None,
                    name: str | None = None, *, search: str | None = None,
                    statuses: tuple[str, ...] | None = None) -> int:
        """How many tasks match the optional filters (as find_tasks)."""

    @abc.abstractmethod
    def match_task_ids(self, statuses: tuple[str, ...], status: str | None = None,
                       queue: str | None = None, name: str | None = None,
                       search: str | None = None, below: int | None = None,
                       limit: int = 500) -> list[int]:
        """Ids of tasks whose status is in `statuses` and that match the filters, with
        ids below `below`, newest first, at most `limit` (a bulk action's batch)."""

    @abc.abstractmethod
    def queue_buckets(self, since: float, bucket: float) -> list[dict[str, Any]]:
        """[{queue, slot, done, failed, run_sum, run_max, timed}]: per queue and
        `bucket` seconds since `since`, the tasks finished done or failed, and the sum
        and maximum run time of the `timed` ones (those with a start time)."""

    @abc.abstractmethod
    def queue_stats(self, estimate: bool = False) -> list[dict[str, Any]]:
        """[{queue, status, count}] over all tasks, ordered by queue and status; exact.

        estimate=True is for monitors that ask again and again (liteqctl status, the
        panel's overview): a backend may then estimate a group (queue, status) too big
        to count quickly, from the database's statistics, instead of counting it.
        Every row then has `estimated` (a bool), and whoever shows the count marks
        an estimated one as such. Groups below the backend's limit stay exact, so a
        small queue's counts are exact either way. liteq.monitoring.get_queue_stats()
        is always exact.
        """

    @abc.abstractmethod
    def list_queues(self) -> list[str]:
        """Every queue name that has tasks or schedules, sorted."""

    @abc.abstractmethod
    def finish_window(self) -> tuple[float | None, float | None]:
        """(earliest started_at, latest finished_at) over done tasks: a drain's span."""

    @abc.abstractmethod
    def oldest_pending(self) -> list[dict[str, Any]]:
        """[{queue, oldest_run_at}]: the earliest due time of pending tasks per queue."""

    @abc.abstractmethod
    def finished_buckets(self, since: float, bucket: float) -> list[dict[str, Any]]:
        """[{slot, status, count}]: tasks finished since `since`, per `bucket` seconds."""

    @abc.abstractmethod
    def active_workers(self, window: float) -> list[dict[str, Any]]:
        """Workers with a heartbeat in the last `window` seconds: worker_id,
        hostname, queues, concurrency, last_heartbeat, pid, started_at,
        heartbeat_age_s (by the database's clock) and active_tasks (its running
        tasks)."""

    # ---- operator actions --------------------------------------------------------

    @abc.abstractmethod
    def cancel(self, task_id: int) -> bool:
        """Cancel a pending or running task; False when it is neither.

        A running one becomes `cancelled` at once (its late outcome is refused by
        the guards), and the daemon that runs it is told (wake-up channel; its
        poll is the fallback) to raise TaskCancelled in it and end its child. Its
        pending dependents are cancelled with it, transitively."""

    @abc.abstractmethod
    def cancel_tasks(self, f: TaskFilter) -> int:
        """Cancel the pending and running tasks the filter chooses (as cancel() does
        one); returns how many."""

    @abc.abstractmethod
    def retry_tasks(self, f: TaskFilter) -> int:
        """Put the failed and cancelled tasks the filter chooses back to pending (as
        retry_failed() does); returns how many."""

    @abc.abstractmethod
    def delete_tasks(self, f: TaskFilter) -> int:
        """Delete the finished tasks the filter chooses (as purge() does); returns how
        many."""

    @abc.abstractmethod
    def retry_failed(self, task_id: int | None = None, queue: str | None = None,
                     name: str | None = None, ids: Iterable[int] | None = None,
                     older_than: float | None = None) -> int:
        """Put failed tasks (or one failed or cancelled task, by id) back to pending
        with their attempts reset; returns how many. A unique task whose key a
        pending or running task holds is left as it is (and of several failed ones
        with one key, a bulk retry takes the newest).

        Without task_id the filters combine: queue, task name, older_than (finished
        over that many seconds ago) and ids (then failed or cancelled tasks among
        those ids)."""

    @abc.abstractmethod
    def purge(self, older_than: float | None,
              statuses: Iterable[str] = ("done", "failed", "cancelled"),
              queue: str | None = None, name: str | None = None,
              ids: Iterable[int] | None = None) -> int:
        """Delete finished tasks of `statuses` that finished over `older_than` seconds ago
        (None: any age) and match the optional queue, name and ids; returns how many.
        A task that a pending or running task depends on is kept."""

    @abc.abstractmethod
    def find_finished(self, statuses: Iterable[str], queue: str | None = None,
                      name: str | None = None, ids: Iterable[int] | None = None,
                      older_than: float | None = None,
                      limit: int = 50) -> list[dict[str, Any]]:
        """Finished tasks (statuses among done, failed, cancelled) matching the optional
        filters, latest finish first: what `liteqctl failed` lists, and what retry and
        purge would touch."""

    @abc.abstractmethod
    def count_finished(self, statuses: Iterable[str], queue: str | None = None,
                       name: str | None = None, ids: Iterable[int] | None = None,
                       older_than: float | None = None) -> int:
        """How many tasks find_finished() would find with no limit."""

    @abc.abstractmethod
    def prune(self, status: str, older_than: float, limit: int) -> int:
        """Delete at most `limit` tasks of one finished `status` ('done', 'failed' or
        'cancelled') that finished over `older_than` seconds ago, oldest first;
        returns how many (the daemon's retention, one short batch at a time)."""

    # ---- schedules ---------------------------------------------------------------

    @abc.abstractmethod
    def upsert_schedule(self, name: str, task_name: str, cron_expr: str, payload: str,
                        queue: str | None, priority: int | None, max_retries: int | None,
                        tz: str | None, catchup: str, enabled: bool | None, next_run: float) -> int:
        """Create a schedule or update the one of that name; returns its id.

        next_run is reset only when cron or tz change; enabled=None keeps an
        existing row's state (a new row starts enabled).
        """

    @abc.abstractmethod
    def list_schedules(self) -> list[dict[str, Any]]:
        """Every schedule row, by name."""

    @abc.abstractmethod
    def get_schedule(self, name: str) -> dict[str, Any] | None:
        """One schedule row by name, or None."""

    @abc.abstractmethod
    def set_schedule_enabled(self, name_or_id: str | int, enabled: bool,
                             next_run: float | None = None) -> bool:
        """Enable or disable a schedule by name or id; enabling may set a next_run."""

    @abc.abstractmethod
    def delete_schedule(self, schedule_id: int) -> bool:
        """Delete a schedule by id; False when there was none."""

    @abc.abstractmethod
    def due_schedules(self, at: float) -> list[dict[str, Any]]:
        """Enabled schedules whose next_run is at or before `at`."""

    @abc.abstractmethod
    def next_schedule_time(self) -> float | None:
        """The earliest next_run of any enabled schedule, or None."""

    @abc.abstractmethod
    def park_schedule(self, schedule_id: int, expected_next_run: float) -> bool:
        """Clear the next_run of a schedule whose next time cannot be computed,
        guarded by compare-and-set on next_run."""

    @abc.abstractmethod
    def fire_schedule(self, schedule_id: int, expected_next_run: float,
                      new_next_run: float | None, tasks: list[NewTask]) -> list[int] | None:
        """Move next_run from expected to new (compare-and-set) and insert `tasks`
        (NewTask list), atomically. Returns the new ids, or None when another
        scheduler fired this occurrence first."""

    # ---- lifetime ----------------------------------------------------------------

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections; the backend must not be used afterwards."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.identity}>"
