"""PostgreSQL: the producers' inserts (.delay(), unique tasks, batches, chains and a
schedule's fire), each with its wake-up; the statements of the shared enqueue logic
(liteq.backends.enqueue).

Every "now" is the server's now(): delays are added to it, so a producer whose
clock is off neither delays nor advances a task.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Generator, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import DatabaseError
from ..enqueue import TASK_COLUMNS, Dependent
from . import deps
from .wake import NOTIFY_PAYLOAD

if TYPE_CHECKING:
    from ...taskspec import NewTask, NewTasks, TaskOptions

# When a task is due: to_timestamp(run_at) when given (absolute epoch seconds),
# else the server's now() plus the delay (0 when none). Parameters: run_at, delay.
_DUE = "COALESCE(to_timestamp(%s::float8), now() + %s::float8 * interval '1 second')"

_INSERT_COLUMNS = ", ".join(TASK_COLUMNS)

# .delay(): one statement, one round trip, in autocommit. pg_notify is called in
# the statement itself, so the wake-up is part of the enqueue's own transaction
# (sent at its commit, never for a rolled-back row), and no trigger is involved.
ENQUEUE = (
    f"WITH ins AS (INSERT INTO tasks ({_INSERT_COLUMNS}) "
    f"VALUES (%s, %s, %s, %s, %s, {_DUE}, %s, %s, %s, %s) RETURNING id, queue, run_at) "
    f"SELECT ins.id, pg_notify(%s, {NOTIFY_PAYLOAD.format(queue='ins.queue', due='ins.run_at')}) "
    f"FROM ins")

# .delay() of a task due now within NOTIFY_INTERVAL_S of this process's previous
# wake-up: the same INSERT without pg_notify (see should_notify).
ENQUEUE_QUIET = (f"INSERT INTO tasks ({_INSERT_COLUMNS}) "
                 f"VALUES (%s, %s, %s, %s, %s, {_DUE}, %s, %s, %s, %s) RETURNING id")

# Wake-ups that do not serialise producers. PostgreSQL makes every transaction that
# sent a NOTIFY commit under one server-wide lock, held across the commit's WAL
# flush, so with a NOTIFY in each .delay() parallel producers enqueue one at a
# time (8 producers: ~2,900 tasks/s against ~7,000 for plain INSERTs). So a
# process in a burst (a .delay() within BURST_GAP_S of its previous one's return)
# sends a "due now" wake-up only once per interval: NOTIFY_INTERVAL_S, or
# NOTIFY_COST_FACTOR times what its last notifying enqueue took when that is more
# (a slow disk, or waiting for the lock: the busier the server, the fewer
# notifies), at most NOTIFY_INTERVAL_MAX_S. An enqueue after a pause always
# notifies, so a lone task (or one per request) is woken for as before. The
# daemon claims again several times after each wake-up it gets (the backend's
# wake_follow_ups_s, up to 0.3 s on), which picks up the skipped ones; its
# fallback poll bounds anything later still. Tasks due later, unique tasks and
# bulk enqueues always notify.
BURST_GAP_S = 0.001
NOTIFY_INTERVAL_S = 0.01
NOTIFY_COST_FACTOR = 20
NOTIFY_INTERVAL_MAX_S = 0.2


class _Notified:
    """This process's wake-up bookkeeping (monotonic times)."""
    last = float("-inf")        # the last "due now" wake-up went out
    done = float("-inf")        # the last .delay() returned
    interval = NOTIFY_INTERVAL_S


def should_notify(task: NewTask) -> bool:
    """True when this enqueue must carry a wake-up (then it counts as sent): the
    task is due later, or this process is not in a burst, or its interval passed."""
    if task.run_at is not None or task.delay:
        return True
    t = time.monotonic()
    if t - _Notified.done < BURST_GAP_S and t - _Notified.last < _Notified.interval:
        return False
    _Notified.last = t
    return True


def enqueued(notify_took: float | None = None) -> None:
    """Note that a .delay() returned; notify_took: the seconds its NOTIFY statement
    took (it sets the interval), None when it sent none."""
    _Notified.done = time.monotonic()
    if notify_took is not None:
        _Notified.interval = min(max(NOTIFY_INTERVAL_S, NOTIFY_COST_FACTOR * notify_took),
                                 NOTIFY_INTERVAL_MAX_S)


def quiet_params(task: NewTask) -> tuple[Any, ...]:
    """The ENQUEUE_QUIET statement's parameters for a NewTask."""
    return enqueue_params(task, None)[:-1]


# A unique task: the same, but nothing is inserted (and no notify sent) while a
# pending or running task holds the key. The conflict target repeats the partial
# index tasks_unique_key's predicate, which is how PostgreSQL infers it.
ENQUEUE_UNIQUE = (
    f"WITH ins AS (INSERT INTO tasks ({_INSERT_COLUMNS}, unique_key) "
    f"VALUES (%s, %s, %s, %s, %s, {_DUE}, %s, %s, %s, %s, %s) "
    f"ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL "
    f"AND status IN ('pending', 'running') DO NOTHING RETURNING id, queue, run_at) "
    f"SELECT ins.id, pg_notify(%s, {NOTIFY_PAYLOAD.format(queue='ins.queue', due='ins.run_at')}) "
    f"FROM ins")
HOLDER_OF_KEY = ("SELECT id FROM tasks WHERE unique_key = %s AND unique_key IS NOT NULL "
                 "AND status IN ('pending', 'running')")

# How many times a unique enqueue tries again when the task holding its key
# finished between its INSERT and its SELECT (each turn needs one more such race).
UNIQUE_ATTEMPTS = 50

# .map()/.starmap(): the producer's JSON array of argument lists is split by the
# server (json keeps each element's text as written), inserted in order, and the
# one aggregate row sends one notify. One statement: one transaction.
ENQUEUE_MANY = (
    f"WITH ins AS (INSERT INTO tasks ({_INSERT_COLUMNS}) "
    f"SELECT %s, '{{\"args\":' || a.value::text || ',\"kwargs\":{{}}}}', %s, %s, %s, {_DUE}, "
    f"%s, %s, %s, %s FROM json_array_elements(%s::json) WITH ORDINALITY AS a(value, n) "
    f"ORDER BY a.n RETURNING id) "
    f"SELECT array_agg(id ORDER BY id) AS ids, "
    f"pg_notify(%s, {NOTIFY_PAYLOAD.format(queue='%s::text', due=_DUE)}) FROM ins")

# Several NewTask rows (a schedule's fire) in one statement, from column arrays.
INSERT_ROWS = (
    f"INSERT INTO tasks ({_INSERT_COLUMNS}) "
    f"SELECT u.name, u.payload, u.queue, u.priority, u.max_retries, "
    f"COALESCE(to_timestamp(u.run_at), now() + u.delay * interval '1 second'), u.timeout, "
    f"u.retry_delay, u.retry_backoff, u.retry_max_delay "
    f"FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::int[], %s::float8[], "
    f"%s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::float8[]) WITH ORDINALITY "
    f"AS u(name, payload, queue, priority, max_retries, run_at, delay, timeout, retry_delay, "
    f"retry_backoff, retry_max_delay, n) ORDER BY u.n RETURNING id")


def _options(o: TaskOptions) -> tuple[int, int]:
    return (o.priority, o.max_retries)


def _tail(o: TaskOptions) -> tuple[float | None, float, float, float]:
    return (o.timeout, o.retry_delay, o.retry_backoff, o.retry_max_delay)


def floats(values: Iterable[Any]) -> list[float | None]:
    """A list for a float8[] parameter: psycopg refuses lists that mix int and float."""
    return [None if v is None else float(v) for v in values]


def insert_rows(session: Any, tasks: Iterable[NewTask]) -> list[int]:
    """Insert NewTask rows in one statement; returns their ids in order."""
    cols: list[list[Any]] = [[] for _ in range(11)]
    for task in tasks:
        o = task.options
        for col, value in zip(cols, (task.name, task.payload, o.queue, o.priority,
                                     o.max_retries, task.run_at, task.delay or 0.0,
                                     *_tail(o))):
            col.append(value)
    cols[5:] = [floats(col) for col in cols[5:]]
    rows = session.run(INSERT_ROWS, cols).fetchall()
    return sorted(r["id"] for r in rows)


def enqueue_params(task: NewTask, channel: str | None) -> tuple[Any, ...]:
    """The ENQUEUE statement's parameters for a NewTask."""
    o = task.options
    return (task.name, task.payload, o.queue, *_options(o), task.run_at, task.delay or 0.0,
            *_tail(o), channel)


class _Chain:
    """A chain's inserts in the caller's transaction; each claimable task's wake-up
    is sent at the commit."""

    def __init__(self, session: Any, channel: str) -> None:
        self.session, self.channel = session, channel

    def insert(self, task: NewTask) -> int:
        """Insert a task with no parents, with its wake-up; its id."""
        row = self.session.run(ENQUEUE, enqueue_params(task, self.channel),
                               prepare=True).fetchone()
        return int(row["id"])

    def parent_statuses(self, parents: Sequence[int]) -> dict[int, str]:
        """{id: status} of the existing parents, locked FOR SHARE until the commit."""
        return deps.lock_parents(self.session, list(parents))

    def insert_dependent(self, task: NewTask, parents: Sequence[int], row: Dependent) -> int:
        """Insert a task as `row` says, and its edges; its id."""
        params = enqueue_params(task, None)[:-1]
        return deps.insert_dependent(self.session, params, parents, row, self.channel)


class Inserts:
    """PostgreSQL's statements for the shared enqueue logic (liteq.backends.enqueue)."""

    def __init__(self, ops: Any) -> None:
        self.ops = ops

    def insert_one(self, task: NewTask) -> int:
        """Insert one task with its wake-up, in one statement; its id."""
        session = self.ops._session
        if not should_notify(task):
            row = session.run(ENQUEUE_QUIET, quiet_params(task), prepare=True).fetchone()
            enqueued()
            return int(row["id"])
        began = time.perf_counter()
        try:
            row = session.run(ENQUEUE, enqueue_params(task, self.ops._channel),
                              prepare=True).fetchone()
        except BaseException:
            _Notified.last = float("-inf")  # no wake-up went out: the next one sends it
            raise
        enqueued(time.perf_counter() - began)
        return int(row["id"])

    def insert_unique(self, task: NewTask) -> int:
        """Insert a task unless its key is held; its id or the holder's."""
        params = enqueue_params(task, None)[:-1] + (task.unique_key, self.ops._channel)
        session = self.ops._session
        for _ in range(UNIQUE_ATTEMPTS):
            # ON CONFLICT waits for a conflicting insert still in flight, so a key
            # is never taken twice. The SELECT is a statement of its own (a new
            # snapshot, which sees the holder once committed); when the holder
            # finished in between, it finds none and the key is free: insert again.
            row = session.run(ENQUEUE_UNIQUE, params, prepare=True).fetchone()
            if row is not None:
                return int(row["id"])
            row = session.run(HOLDER_OF_KEY, (task.unique_key,), prepare=True).fetchone()
            if row is not None:
                return int(row["id"])
        raise DatabaseError(
            f"could not enqueue unique task {task.name!r} (unique_key {task.unique_key!r}): "
            f"tasks with this key kept finishing between {UNIQUE_ATTEMPTS} inserts and "
            f"their look-ups; nothing was enqueued")

    def insert_many(self, tasks: NewTasks) -> list[int]:
        """Insert a batch in one statement (one transaction, one wake-up)."""
        o = tasks.options
        due = (tasks.run_at, tasks.delay or 0.0)
        row = self.ops._session.run(ENQUEUE_MANY, (
            tasks.name, o.queue, *_options(o), *due, *_tail(o), tasks.args_json,
            self.ops._channel, o.queue, *due)).fetchone()
        ids: list[int] = row["ids"]
        return ids

    @contextlib.contextmanager
    def chain_writer(self) -> Generator[_Chain]:
        """A chain's transaction."""
        session = self.ops._session
        with session.transaction():
            yield _Chain(session, self.ops._channel)
