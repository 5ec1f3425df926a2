"""PostgreSQL: enqueue, claim, outcomes and release (the producers' and the daemon's
writes to the tasks table).

Every "now" is the server's now(): delays are added to it, due times and claims
are judged by it, so a producer or daemon whose clock is off neither delays nor
advances a task. Times go out as epoch seconds (date_part('epoch', ...)).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
import contextlib
import time
from typing import Any

from ...errors import DatabaseError
from ..limits import Buckets, merge_rooms, pick, rate_key, rooms, used_up
from ..stats import Tally
from . import deps, stats
from .connection import operation
from .opbase import OpBase
from .wake import NOTIFY_PAYLOAD

if TYPE_CHECKING:
    from ...taskspec import NewTask
    from ..limits import Limits
    from .connection import DbSession

# When a task is due: to_timestamp(run_at) when given (absolute epoch seconds),
# else the server's now() plus the delay (0 when none). Parameters: run_at, delay.
_DUE = "COALESCE(to_timestamp(%s::float8), now() + %s::float8 * interval '1 second')"

_INSERT_COLUMNS = ("name, payload, queue, priority, max_retries, run_at, timeout, "
                   "retry_delay, retry_backoff, retry_max_delay")

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

# The claim: one statement. The MATERIALIZED CTE picks ids in claim order with
# FOR UPDATE SKIP LOCKED, and the UPDATE marks exactly those rows. Each queue is
# read by its own ordered scan of the partial index tasks_claim (a LATERAL per
# queue) that stops after `limit` rows: PostgreSQL 15 cannot return
# `queue = ANY(array)` in index order, and would read and sort every due
# pending row of the queues instead. With several queues, a row locked by one
# queue's scan but beaten by another queue's is released at commit.
CLAIM = (
    "WITH picked AS MATERIALIZED ("
    " SELECT c.id FROM unnest(%s::text[]) AS q(name) CROSS JOIN LATERAL ("
    "  SELECT id, priority, run_at FROM tasks"
    "  WHERE status = 'pending' AND waiting_on = 0 AND queue = q.name AND run_at <= now()"
    "  ORDER BY priority DESC, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED) c"
    " ORDER BY c.priority DESC, c.run_at, c.id LIMIT %s) "
    "UPDATE tasks t SET status = 'running', worker_id = %s, attempts = t.attempts + 1, "
    "started_at = NULL FROM picked WHERE t.id = picked.id "
    "RETURNING t.id, t.name, t.payload, t.queue, t.priority, "
    "date_part('epoch', t.run_at) AS run_at, t.attempts, t.max_retries, t.timeout, "
    "t.retry_delay, t.retry_backoff, t.retry_max_delay, "
    "date_part('epoch', t.created_at) AS created_at")

# A claim under concurrency limits while none of the rows it would take is of a
# limited name or queue (the common case: an app defines a limit whose tasks are
# rarely queued): CLAIM itself, one statement, which takes nothing as soon as one
# of them is; the claim then goes the slow way (see TaskOps._claim_limited).
# Parameters: queues, limit, limit, worker_id, limited names, limited queues.
CLAIM_UNLESS_LIMITED = (
    "WITH picked AS MATERIALIZED ("
    " SELECT c.id, c.name, c.queue FROM unnest(%s::text[]) AS q(name) CROSS JOIN LATERAL ("
    "  SELECT id, name, queue, priority, run_at FROM tasks"
    "  WHERE status = 'pending' AND waiting_on = 0 AND queue = q.name AND run_at <= now()"
    "  ORDER BY priority DESC, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED) c"
    " ORDER BY c.priority DESC, c.run_at, c.id LIMIT %s) "
    "UPDATE tasks t SET status = 'running', worker_id = %s, attempts = t.attempts + 1, "
    "started_at = NULL FROM picked WHERE t.id = picked.id AND NOT EXISTS ("
    " SELECT 1 FROM picked p WHERE p.name = ANY(%s::text[]) OR p.queue = ANY(%s::text[])) "
    "RETURNING " + CLAIM.split("RETURNING ", 1)[1])

# The claim of chosen ids (under concurrency limits), returning what CLAIM returns.
# The ids are candidates this transaction has locked (CANDIDATES), so they are
# still pending and due. No status in the WHERE: it would let the planner walk
# every pending row of tasks_claim (whose statistics may say it is empty)
# instead of finding each id by its primary key.
CLAIM_IDS = (
    "UPDATE tasks t SET status = 'running', worker_id = %s, attempts = t.attempts + 1, "
    "started_at = NULL FROM unnest(%s::bigint[]) AS u(id) WHERE t.id = u.id "
    "RETURNING " + CLAIM.split("RETURNING ", 1)[1])

# The candidates of a claim under concurrency limits: each queue's due pending rows
# in claim order, read and locked as CLAIM reads them (a LATERAL per queue, in index
# order), leaving out the names given (those at their limit). Parameters: queues,
# names left out, rows per queue.
CANDIDATES = (
    "SELECT c.id, c.name, c.queue, c.priority, c.run_at "
    "FROM unnest(%s::text[]) AS q(name) CROSS JOIN LATERAL ("
    " SELECT id, name, queue, priority, run_at FROM tasks"
    " WHERE status = 'pending' AND waiting_on = 0 AND queue = q.name AND run_at <= now()"
    " AND NOT (name = ANY(%s::text[]))"
    " ORDER BY priority DESC, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED) c"
    " ORDER BY c.priority DESC, c.run_at, c.id")

# Outcomes: one statement per kind over unnest arrays; each row changes only while
# it is still running for this worker.
_GUARD = "WHERE t.id = u.id AND t.status = 'running' AND t.worker_id = %s"
# What the statistics need of each recorded row (a retry's run_at is the new one).
_RECORDED = "t.id, t.queue, t.name, date_part('epoch', t.run_at) AS run_at, t.attempts"
_OUTCOME_ROWS = "unnest(%s::bigint[], %s::text[], %s::float8[], %s::float8[]) AS u(id, text, s, x)"
RECORD_DONE = (f"UPDATE tasks t SET status = 'done', result = u.text, error = NULL, "
               f"started_at = to_timestamp(u.s), finished_at = to_timestamp(u.x) "
               f"FROM {_OUTCOME_ROWS} {_GUARD} RETURNING {_RECORDED}")
RECORD_FAILED = (f"UPDATE tasks t SET status = 'failed', error = u.text, "
                 f"started_at = to_timestamp(u.s), finished_at = to_timestamp(u.x) "
                 f"FROM {_OUTCOME_ROWS} {_GUARD} RETURNING {_RECORDED}")
RECORD_RETRY = (f"UPDATE tasks t SET status = 'pending', error = u.text, "
                f"started_at = to_timestamp(u.s), worker_id = NULL, "
                f"run_at = now() + u.x * interval '1 second' FROM {_OUTCOME_ROWS} {_GUARD} "
                f"RETURNING {_RECORDED}")

# The statistics' outcome of each kind of outcome row.
_STAT_OF = {RECORD_DONE: "succeeded", RECORD_FAILED: "failed", RECORD_RETRY: "retried"}

# Back to pending, the attempt uncounted: claimed tasks that never started.
_GIVE_BACK = ("UPDATE tasks SET status = 'pending', worker_id = NULL, "
              "attempts = GREATEST(attempts - 1, 0), started_at = NULL ")
RELEASE = _GIVE_BACK + "WHERE id = ANY(%s::bigint[]) AND status = 'running' AND worker_id = %s"
# A claim leaves started_at NULL; the daemon sets it once a child really starts the
# task ("running" means started; see Dispatcher.sync).
MARK_STARTED = ("UPDATE tasks t SET started_at = to_timestamp(u.s) "
                "FROM unnest(%s::bigint[], %s::float8[]) AS u(id, s) "
                "WHERE t.id = u.id AND t.status = 'running' AND t.worker_id = %s "
                "AND t.started_at IS NULL")
# Every task running for the worker except the ids it holds.
RELEASE_UNHELD = (_GIVE_BACK + "WHERE status = 'running' AND worker_id = %s "
                  "AND NOT (id = ANY(%s::bigint[])) RETURNING id")

# The earliest due time of the queues' pending tasks, in index seeks only: walk
# each queue's priority levels (max, then the max below it, ...) and take the
# first run_at of each level. A plain MIN(run_at) would read every pending row.
NEXT_DUE = (
    "WITH RECURSIVE levels(queue, priority) AS ("
    " SELECT q.name, (SELECT MAX(priority) FROM tasks "
    "  WHERE status = 'pending' AND waiting_on = 0 AND queue = q.name) "
    " FROM unnest(%s::text[]) AS q(name)"
    " UNION ALL"
    " SELECT l.queue, (SELECT MAX(priority) FROM tasks WHERE status = 'pending' "
    "  AND waiting_on = 0 "
    "  AND queue = l.queue AND priority < l.priority) FROM levels l "
    " WHERE l.priority IS NOT NULL) "
    "SELECT date_part('epoch', MIN(f.first) - now()) AS wait FROM levels l "
    "CROSS JOIN LATERAL (SELECT MIN(run_at) AS first FROM tasks WHERE status = 'pending' "
    "AND waiting_on = 0 "
    "AND queue = l.queue AND priority = l.priority) f WHERE l.priority IS NOT NULL")


def _options(o):
    return (o.priority, o.max_retries)


def _tail(o):
    return (o.timeout, o.retry_delay, o.retry_backoff, o.retry_max_delay)


def floats(values) -> list:
    """A list for a float8[] parameter: psycopg refuses lists that mix int and float."""
    return [None if v is None else float(v) for v in values]


def insert_rows(session: DbSession, tasks: list[NewTask]) -> list[int]:
    """Insert NewTask rows in one statement; returns their ids in order."""
    cols = [[] for _ in range(11)]
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


# The rate buckets of locked keys, and the server's clock once their locks are held.
READ_BUCKETS = (
    "SELECT k.key, r.tat, date_part('epoch', clock_timestamp()) AS now "
    "FROM unnest(%s::text[]) AS k(key) LEFT JOIN rate_limits r ON r.key = k.key")
WRITE_BUCKETS = (
    "INSERT INTO rate_limits (key, tat) SELECT * FROM unnest(%s::text[], %s::float8[]) "
    "ON CONFLICT (key) DO UPDATE SET tat = excluded.tat")


class _LimitCounts:
    """The running counts and rate buckets of the limited names and queues a claim met,
    each read under its advisory lock (held to the end of the claim's transaction)."""

    def __init__(self, ops, limits, names, queues):
        self.ops = ops
        self.limits = limits
        self.limited_names, self.limited_queues = set(names), set(queues)
        self.names, self.queues = {}, {}        # locked: running count
        self.skipped = set()                    # keys another claimer held (try-lock)
        self.buckets = None                     # limits.Buckets of the locked rate keys

    def take(self, rows, wait) -> None:
        """Lock and count the limited names and queues of `rows` not locked yet.

        wait=True waits for each lock, in sorted order (the first pass of a claim);
        wait=False only tries (a second pass may meet a key that sorts before one
        held, and waiting then could deadlock): a key it cannot get is skipped."""
        new_names = sorted({r["name"] for r in rows} & self.limited_names - set(self.names))
        new_queues = sorted({r["queue"] for r in rows} & self.limited_queues
                            - set(self.queues))
        run, schema = self.ops._session.run, self.ops._schema
        got_names, got_queues = [], []
        for key, got in [(f"n:{n}", (got_names, n)) for n in new_names] + \
                        [(f"q:{q}", (got_queues, q)) for q in new_queues]:
            if key in self.skipped:
                continue
            lock = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
            row = run(f"SELECT {lock}(hashtextextended(%s, 0)) AS ok",
                      (f"liteq-limit:{schema}:{key}",), prepare=True).fetchone()
            if row["ok"] is False:
                self.skipped.add(key)
                continue
            got[0].append(got[1])
        counted = [n for n in got_names if n in self.limits.by_name]
        if counted:
            by_name = {r["name"]: r["n"] for r in run(
                "SELECT name, COUNT(*) AS n FROM tasks WHERE status = 'running' "
                "AND name = ANY(%s) GROUP BY name", (counted,), prepare=True).fetchall()}
            self.names.update({n: by_name.get(n, 0) for n in counted})
        counted = [q for q in got_queues if q in self.limits.by_queue]
        if counted:
            by_queue = {r["queue"]: r["n"] for r in run(
                "SELECT queue, COUNT(*) AS n FROM tasks WHERE status = 'running' "
                "AND queue = ANY(%s) GROUP BY queue", (counted,), prepare=True).fetchall()}
            self.queues.update({q: by_queue.get(q, 0) for q in counted})
        # Rate-only keys are locked too (above), with no count to keep.
        self.names.update({n: 0 for n in got_names if n not in self.names})
        self.queues.update({q: 0 for q in got_queues if q not in self.queues})
        self._read_buckets(got_names, got_queues)

    def _read_buckets(self, names: list[str], queues: list[str]) -> None:
        keys = [rate_key("n", n) for n in names if n in self.limits.rate_by_name] + \
            [rate_key("q", q) for q in queues if q in self.limits.rate_by_queue]
        if not keys:
            return
        rows = self.ops._session.run(READ_BUCKETS, (keys,), prepare=True).fetchall()
        if self.buckets is None:
            # One clock for the claim: read once its first rate keys are locked (a
            # later pass's keys are judged by it too, which can only allow fewer).
            self.buckets = Buckets(self.limits, rows[0]["now"])
        self.buckets.tats.update({r["key"]: r["tat"] for r in rows})

    def rooms(self, limits):
        """({name: room}, {queue: room}) of the locked limits, concurrency and rate."""
        name_room, queue_room = rooms(limits, self.names, self.queues)
        name_room = {n: name_room[n] for n in self.names if n in name_room}
        queue_room = {q: queue_room[q] for q in self.queues if q in queue_room}
        if self.buckets is not None:
            rate_names, rate_queues = self.buckets.rooms()
            name_room = merge_rooms(name_room, rate_names)
            queue_room = merge_rooms(queue_room, rate_queues)
        return name_room, queue_room

    def spend(self, candidates: list[Any], ids: list[int]) -> float | None:
        """Write the buckets once `ids` (of `candidates`) start; returns the seconds until
        a bucket that held back a candidate allows a start again, or None."""
        if self.buckets is None:
            return None
        chosen = set(ids)
        new_tats = self.buckets.spent([r for r in candidates if r["id"] in chosen])
        if new_tats:
            keys = sorted(new_tats)
            self.ops._session.run(WRITE_BUCKETS, (keys, [float(new_tats[k]) for k in keys]),
                                  prepare=True)
        return self.buckets.wait(candidates, ids, new_tats)

    def allowed(self, row) -> bool:
        """False for a row of a limited name or queue whose lock this claim lacks."""
        return (row["name"] not in self.limited_names or row["name"] in self.names) and \
            (row["queue"] not in self.limited_queues or row["queue"] in self.queues)


def _by_claim_order(rows):
    # RETURNING gives no order guarantee; restore the claim order.
    rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))
    return rows


class TaskOps(OpBase):
    """Mixin of PostgresBackend: the writes of producers and daemons."""

    @operation
    def enqueue(self, task) -> int:
        """Insert one pending task with its wake-up, in one statement; returns its id.
        A task with a unique_key held by a pending or running task inserts nothing:
        that task's id is returned."""
        if task.depends_on:
            return self.enqueue_chain([task])[0]
        if task.unique_key is not None:
            return self._enqueue_unique(task)
        if not should_notify(task):
            task_id = self._session.run(ENQUEUE_QUIET, quiet_params(task),
                                        prepare=True).fetchone()["id"]
            enqueued()
            return task_id
        began = time.perf_counter()
        try:
            task_id = self._session.run(ENQUEUE, enqueue_params(task, self._channel),
                                        prepare=True).fetchone()["id"]
        except BaseException:
            _Notified.last = float("-inf")  # no wake-up went out: the next one sends it
            raise
        enqueued(time.perf_counter() - began)
        return task_id

    def _enqueue_unique(self, task):
        o = task.options
        params = (task.name, task.payload, o.queue, *_options(o), task.run_at,
                  task.delay or 0.0, *_tail(o), task.unique_key, self._channel)
        session = self._session
        for _ in range(UNIQUE_ATTEMPTS):
            # ON CONFLICT waits for a conflicting insert still in flight, so a key
            # is never taken twice. The SELECT is a statement of its own (a new
            # snapshot, which sees the holder once committed); when the holder
            # finished in between, it finds none and the key is free: insert again.
            row = session.run(ENQUEUE_UNIQUE, params, prepare=True).fetchone()
            if row is not None:
                return row["id"]
            row = session.run(HOLDER_OF_KEY, (task.unique_key,), prepare=True).fetchone()
            if row is not None:
                return row["id"]
        raise DatabaseError(
            f"could not enqueue unique task {task.name!r} (unique_key {task.unique_key!r}): "
            f"tasks with this key kept finishing between {UNIQUE_ATTEMPTS} inserts and "
            f"their look-ups; nothing was enqueued")

    @operation
    def enqueue_chain(self, tasks) -> list:
        """Insert NewTasks in one transaction, each depending on the one before it
        (after its own depends_on); returns their ids. See base.Backend."""
        session = self._session
        ids = []
        with session.transaction():
            for task in tasks:
                parents = tuple(task.depends_on) + ((ids[-1],) if ids else ())
                if not parents:
                    ids.append(session.run(ENQUEUE, enqueue_params(task, self._channel),
                                           prepare=True).fetchone()["id"])
                    continue
                o = task.options
                params = (task.name, task.payload, o.queue, *_options(o), task.run_at,
                          task.delay or 0.0, *_tail(o))
                ids.append(deps.insert_dependent(session, params, parents, self._channel))
        return ids

    @operation
    def parent_results(self, task_id) -> list:
        """The stored results (JSON text) of a task's parents, in depends_on order."""
        return [r["result"] for r in self._session.run(deps.PARENT_RESULTS,
                                                        (int(task_id),)).fetchall()]

    @operation
    def enqueue_many(self, tasks) -> list:
        """Insert every call of a NewTasks in one statement (one transaction, one
        wake-up); returns the ids in order."""
        if tasks.count <= 0:
            return []
        o = tasks.options
        due = (tasks.run_at, tasks.delay or 0.0)
        row = self._session.run(ENQUEUE_MANY, (
            tasks.name, o.queue, *_options(o), *due, *_tail(o), tasks.args_json,
            self._channel, o.queue, *due)).fetchone()
        return row["ids"]

    @operation
    def claim(self, worker_id: str, queues: Sequence[str], limit: int,
              limits: Limits | None = None) -> list[dict[str, Any]]:
        """Mark up to `limit` due pending tasks of `queues` running for `worker_id`, in
        one statement; returns them in claim order (priority desc, due time, id).
        Under global concurrency limits, one transaction (see _claim_limited)."""
        queues = list(dict.fromkeys(queues))
        self._rate_wait = None
        if limit <= 0 or not queues:
            return []
        if limits:
            names, limited_queues = limits.relevant(queues)
            rows = self._session.run(CLAIM_UNLESS_LIMITED, (
                queues, limit, limit, worker_id, names, limited_queues), prepare=True).fetchall()
            if rows:
                return _by_claim_order(rows)
            with self._session.transaction():
                return self._claim_limited(worker_id, queues, limit, limits)
        rows = self._session.run(CLAIM, (queues, limit, limit, worker_id),
                                 prepare=True).fetchall()
        return _by_claim_order(rows)

    def _claim_limited(self, worker_id, queues, limit, limits):
        # The due candidates come first, in index order; only the limited names and
        # queues among them are locked and counted, so a limit whose tasks are not
        # due costs nothing. Advisory locks (one order, so claimers never deadlock)
        # make the count and the claim one step across daemons; they end with the
        # transaction. The candidates' row locks never make anyone wait (SKIP LOCKED).
        run = self._session.run
        # As many rows per queue as the normal claim locks: a row lock is a write.
        candidates = run(CANDIDATES, (queues, [], limit), prepare=True).fetchall()
        if not candidates:
            return []
        names, limited_queues = limits.relevant(queues)
        counts = _LimitCounts(self, limits, names, limited_queues)
        counts.take(candidates, wait=True)
        name_room, queue_room = counts.rooms(limits)
        ids = pick(candidates, limit, name_room, queue_room)
        full, closed = used_up(candidates, ids, name_room, queue_room)
        open_queues = [q for q in queues if q not in closed]
        if len(ids) < limit and len(candidates) >= limit and open_queues \
                and (full or closed):
            # The rows read were mostly of names or queues at their limit: read past them.
            more = run(CANDIDATES, (open_queues, full, limit * 4 + 16),
                       prepare=True).fetchall()
            counts.take(more, wait=False)
            name_room, queue_room = counts.rooms(limits)
            seen = {r["id"] for r in candidates}
            candidates += [r for r in more if r["id"] not in seen]
            candidates.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))
            ids = pick([r for r in candidates if counts.allowed(r)], limit,
                       name_room, queue_room)
        self._rate_wait = counts.spend(candidates, ids)
        if not ids:
            return []
        return _by_claim_order(run(CLAIM_IDS, (worker_id, ids), prepare=True).fetchall())

    def rate_wait(self) -> float | None:
        """Seconds until a rate limit that held back due tasks in the last claim allows a
        start again, or None (see base.Backend.rate_wait)."""
        return self._rate_wait

    @operation
    def record_outcomes(self, worker_id: str, done: Iterable[tuple[Any, ...]] = (),
                        failed: Iterable[tuple[Any, ...]] = (),
                        retry: Iterable[tuple[Any, ...]] = ()) -> list[int]:
        """Record finished attempts, one statement per kind, in one transaction; returns
        the ids recorded. Each applies only while the row is still running for this
        worker (a missing id was refused). Retries come due `delay` seconds after the
        server's now()."""
        work = [(sql, rows) for sql, rows in
                ((RECORD_DONE, done), (RECORD_FAILED, failed), (RECORD_RETRY, retry)) if rows]
        session = self._session
        recorded = []
        tally, errors = Tally(), []
        t = time.time()   # a retried attempt's end, on the daemon's clock as its start
        # One transaction with the statistics, and with the dependents' updates.
        with session.transaction():
            before = stats.running_rows(session, [r[0] for r in retry], worker_id) \
                if retry else {}
            for sql, rows in work:
                ids, texts, starts, last = zip(*rows)
                given = {row[0]: row for row in rows}
                returned = session.run(
                    sql, ([int(i) for i in ids], list(texts), floats(starts), floats(last),
                          worker_id), prepare=True).fetchall()
                of_kind = [r["id"] for r in returned]
                outcome = _STAT_OF[sql]
                for r in returned:
                    _, text, started, end = given[r["id"]]
                    retrying = sql is RECORD_RETRY
                    tally.attempt(before.get(r["id"], r) if retrying else r, outcome,
                                  None if sql is RECORD_DONE else text, started,
                                  t if retrying else end)
                    if sql is not RECORD_DONE:
                        errors.append((r["id"], r["attempts"], text,
                                       None if retrying else end))
                if of_kind and sql is RECORD_DONE:
                    deps.release_children(session, of_kind, self._channel)
                elif of_kind and sql is RECORD_FAILED:
                    deps.cancel_dependents(session, of_kind, "failed", tally)
                recorded.extend(of_kind)
            stats.add_errors(session, errors)
            stats.write(session, tally, self._stat_names, self._stat_shard)
        # Churn leaves dead rows whether or not retention ever deletes anything.
        self._vacuums.after_outcomes(session, len(recorded))
        return recorded

    @operation
    def release(self, worker_id: str, task_ids: Iterable[int]) -> int:
        """Return claimed tasks that never started to pending, uncounting the attempt."""
        if not task_ids:
            return 0
        return self._session.run(RELEASE, ([int(i) for i in task_ids], worker_id),
                                 prepare=True).rowcount

    @operation
    def mark_started(self, worker_id, started) -> int:
        """Set started_at of claimed tasks a child started: [(task_id, epoch_s)]."""
        if not started:
            return 0
        ids, starts = zip(*started)
        return self._session.run(MARK_STARTED, ([int(i) for i in ids], floats(starts),
                                                worker_id), prepare=True).rowcount

    @operation
    def claimed_counts(self) -> dict:
        """{queue: n} of claimed tasks no child has started yet."""
        return {r["queue"]: r["n"] for r in self._session.run(
            "SELECT queue, COUNT(*) AS n FROM tasks WHERE status = 'running' "
            "AND started_at IS NULL GROUP BY queue").fetchall()}

    @operation
    def release_unheld(self, worker_id, held_ids) -> list:
        """Return to pending every task running for worker_id but `held_ids` (claims
        whose answer was lost); returns their ids."""
        rows = self._session.run(RELEASE_UNHELD, (worker_id, [int(i) for i in held_ids]))
        return sorted(r["id"] for r in rows.fetchall())

    @operation
    def next_due(self, queues: Sequence[str]) -> float | None:
        """Seconds from the server's now until the earliest pending task of `queues` is
        due (<= 0: due now), or None when none is pending."""
        queues = list(dict.fromkeys(queues))
        if not queues:
            return None
        return self._session.run(NEXT_DUE, (queues,), prepare=True).fetchone()["wait"]

