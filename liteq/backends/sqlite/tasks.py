"""SQLite: enqueue, claim and outcomes (the producers' and the daemon's writes to the
tasks table). The enqueue and the limited claim's logic are shared by every backend
(liteq.backends.enqueue, liteq.backends.claiming); this module gives their SQLite
statements."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...timeutil import now
from .. import enqueue as shared
from ..claiming import by_claim_order, claim_limited
from ..enqueue import TASK_COLUMNS, Dependent
from ..stats import Tally
from . import deps, stats
from .connection import guarded
from .schema import NEXT_ID

if TYPE_CHECKING:
    from ...taskspec import NewTask, NewTasks
    from ..limits import Limits

# A task the claim may take: pending, and waiting for no parent (idx_tasks_claim's
# leading columns).
CLAIMABLE = "status = 'pending' AND waiting_on = 0"

# The columns a claim hands the daemon.
CLAIM_RETURNING = ("id, name, payload, queue, priority, run_at, attempts, max_retries, "
                   "timeout, retry_delay, retry_backoff, retry_max_delay, created_at")

# Every row names its id (see NEXT_ID); created_at is the producer's clock.
_COLUMNS = "id, " + ", ".join(TASK_COLUMNS) + ", created_at"
INSERT_TASK = f"INSERT INTO tasks ({_COLUMNS}) VALUES ({NEXT_ID} + 1, ?,?,?,?,?,?,?,?,?,?,?)"

# A unique task: nothing is inserted while a pending or running task has the key
# (the conflict target repeats idx_tasks_unique_key's predicate, so SQLite picks it).
INSERT_UNIQUE = (
    f"INSERT INTO tasks ({_COLUMNS}, unique_key) "
    f"VALUES ({NEXT_ID} + 1, ?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (unique_key) "
    "WHERE unique_key IS NOT NULL AND status IN ('pending', 'running') DO NOTHING RETURNING id"
)
HOLDER_OF_KEY = ("SELECT id FROM tasks WHERE unique_key = ? AND unique_key IS NOT NULL "
                 "AND status IN ('pending', 'running')")

# A batch: json_each walks the JSON array in order. Only the first row names its id:
# SQLite gives each next one max(id) + 1, which follows it, and appends them faster
# than rows that all name theirs.
INSERT_MANY = (
    f"INSERT INTO tasks ({_COLUMNS}) "
    "SELECT CASE key WHEN 0 THEN ? + 1 END, ?, '{\"args\":' || value || ',\"kwargs\":{}}', "
    "?, ?, ?, ?, ?, ?, ?, ?, ? FROM json_each(?)")

# A task with parents: waiting_on, and status, error and finished_at when it is
# cancelled at once.
INSERT_DEPENDENT = (f"INSERT INTO tasks ({_COLUMNS}, waiting_on, status, error, finished_at) "
                    f"VALUES ({NEXT_ID} + 1, ?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")

# Outcome updates apply only while the row is still running for this worker; each
# statement updates a batch from a VALUES list (column1 = id, column2 = text,
# column3 = started_at, column4 = a time) and returns the ids it changed.
_OUTCOME_SET = {
    "done": "status = 'done', result = v.column2, error = NULL, started_at = v.column3, "
            "finished_at = v.column4",
    "failed": "status = 'failed', error = v.column2, started_at = v.column3, "
              "finished_at = v.column4",
    "retry": "status = 'pending', error = v.column2, started_at = v.column3, "
             "worker_id = NULL, run_at = v.column4",
}
_OUTCOME_CHUNK = 500   # rows per statement (4 parameters each)
# The statistics' outcome of each kind of outcome row.
_STAT_OF = {"done": "succeeded", "failed": "failed", "retry": "retried"}

# Back to pending, the attempt uncounted: a claimed task that never started.
RELEASE = ("UPDATE tasks SET status = 'pending', worker_id = NULL, "
           "attempts = MAX(attempts - 1, 0), started_at = NULL "
           "WHERE id = ? AND status = 'running' AND worker_id = ?")

# A claim leaves started_at NULL; the daemon sets it once a child really starts the
# task ("running" means started; see Dispatcher.sync).
MARK_STARTED = ("UPDATE tasks SET started_at = ? WHERE id = ? AND status = 'running' "
                "AND worker_id = ? AND started_at IS NULL")


def due_time(run_at: float | None, delay: float | None, t: float) -> float:
    """The epoch time a task is due: run_at, else t + delay, else t."""
    if run_at is not None:
        return run_at
    return t + delay if delay else t


def insert_values(task: NewTask, t: float) -> tuple[Any, ...]:
    """The INSERT_TASK parameters of a NewTask, created at time t."""
    o = task.options
    return (task.name, task.payload, o.queue, o.priority, o.max_retries,
            due_time(task.run_at, task.delay, t), o.timeout, o.retry_delay,
            o.retry_backoff, o.retry_max_delay, t)


class _Chain:
    """A chain's inserts in one write transaction at time t; `ready`: the earliest due
    time of a task claimable at once (the daemons are woken for it after the commit)."""

    def __init__(self, conn: Any, t: float) -> None:
        self.conn, self.t = conn, t
        self.ready: float | None = None

    def _claimable(self, due: float) -> None:
        self.ready = due if self.ready is None else min(self.ready, due)

    def insert(self, task: NewTask) -> int:
        """Insert a task with no parents; its id."""
        values = insert_values(task, self.t)
        task_id: int = self.conn.execute(INSERT_TASK, values).lastrowid
        self._claimable(values[5])
        return task_id

    def parent_statuses(self, parents: Sequence[int]) -> dict[int, str]:
        """{id: status} of the existing parents (the write lock keeps them)."""
        return deps.parent_statuses(self.conn, parents)

    def insert_dependent(self, task: NewTask, parents: Sequence[int], row: Dependent) -> int:
        """Insert a task as `row` says, and its edges; its id."""
        values = insert_values(task, self.t)
        finished = self.t if row.status == "cancelled" else None
        task_id: int = self.conn.execute(INSERT_DEPENDENT, values + (
            row.waiting_on, row.status, row.error, finished)).lastrowid
        deps.add_edges(self.conn, task_id, parents)
        if row.claimable:
            self._claimable(values[5])
        return task_id


class _Enqueue:
    """SQLite's statements for the shared enqueue logic (liteq.backends.enqueue)."""

    def __init__(self, ops: Any) -> None:
        self.ops = ops

    def insert_one(self, task: NewTask) -> int:
        """Insert one task (autocommit) and wake the daemon; its id."""
        values = insert_values(task, now())
        task_id: int = self.ops._conn.execute(INSERT_TASK, values).lastrowid
        self.ops.notify(values[5])
        return task_id

    def insert_unique(self, task: NewTask) -> int:
        """Insert a task unless its key is held; its id or the holder's."""
        values = insert_values(task, now()) + (task.unique_key,)
        # Under the write lock nothing can finish the holder between the two
        # statements, so the SELECT finds the row the INSERT conflicted with.
        with self.ops._write() as conn:
            row = conn.execute(INSERT_UNIQUE, values).fetchone()
            if row is None:
                holder: int = conn.execute(HOLDER_OF_KEY, (task.unique_key,)).fetchone()[0]
                return holder
        self.ops.notify(values[5])
        return int(row[0])

    def insert_many(self, tasks: NewTasks) -> list[int]:
        """Insert a batch in one transaction; the ids in order."""
        t = now()
        o = tasks.options
        due = due_time(tasks.run_at, tasks.delay, t)
        with self.ops._write() as conn:
            # Under the write lock the ids after `base` are ours.
            base = conn.execute(f"SELECT {NEXT_ID}").fetchone()[0]
            conn.execute(INSERT_MANY, (
                base, tasks.name, o.queue, o.priority, o.max_retries, due, o.timeout,
                o.retry_delay, o.retry_backoff, o.retry_max_delay, t, tasks.args_json))
        self.ops.notify(due)
        return list(range(base + 1, base + tasks.count + 1))

    @contextlib.contextmanager
    def chain_writer(self) -> Iterator[_Chain]:
        """A chain's write transaction; wakes the daemon after the commit."""
        with self.ops._write() as conn:
            writer = _Chain(conn, now())
            yield writer
        if writer.ready is not None:
            self.ops.notify(writer.ready)


def _running_counts(conn: Any, column: str, values: Sequence[str]) -> dict[str, int]:
    """{value: running tasks} for these names or queues."""
    if not values:
        return {}
    marks = ",".join("?" * len(values))
    return dict(conn.execute(
        f"SELECT {column}, COUNT(*) FROM tasks WHERE status = 'running' "
        f"AND {column} IN ({marks}) GROUP BY {column}", values).fetchall())


def _candidates(conn: Any, queues: Sequence[str], skip_names: Sequence[str], t: float,
                limit: int) -> list[Any]:
    """Due pending rows (id, name, queue, priority, run_at) of `queues` in claim order,
    but those of `skip_names`, `limit` at most."""
    marks = ",".join("?" * len(queues))
    skip = f"AND name NOT IN ({','.join('?' * len(skip_names))}) " if skip_names else ""
    rows: list[Any] = conn.execute(
        f"SELECT id, name, queue, priority, run_at FROM tasks WHERE {CLAIMABLE} "
        f"AND queue IN ({marks}) AND run_at <= ? {skip}"
        f"ORDER BY priority DESC, run_at, id LIMIT ?",
        (*queues, t, *skip_names, limit)).fetchall()
    return rows


def _claim_ids(conn: Any, worker_id: str, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Mark these pending tasks running for worker_id (in the caller's transaction),
    not yet started (see MARK_STARTED); returns them in claim order."""
    if not ids:
        return []
    # "+status" keeps the planner on the primary key: with a million pending rows
    # the status index would be a full scan.
    rows = conn.execute(
        f"UPDATE tasks SET status = 'running', worker_id = ?, attempts = attempts + 1, "
        f"started_at = NULL WHERE id IN ({','.join('?' * len(ids))}) "
        f"AND +status = 'pending' RETURNING {CLAIM_RETURNING}",
        (worker_id, *ids)).fetchall()
    return by_claim_order(rows)


class _Limited:
    """SQLite's side of the shared limited claim (liteq.backends.claiming), inside the
    claim's write transaction at time t. The write lock (BEGIN IMMEDIATE) makes the
    counts, the rate buckets and the claim one step for every daemon on the file."""

    def __init__(self, conn: Any, t: float) -> None:
        self.conn, self.t = conn, t

    def candidates(self, queues: Sequence[str], skip_names: Sequence[str],
                   per_queue: int) -> list[Any]:
        """Due candidates in claim order (see LimitDialect)."""
        return _candidates(self.conn, queues, skip_names, self.t, per_queue)

    def lock_limit(self, key: str, wait: bool) -> bool:
        """Always True: the write lock already covers every limit."""
        return True

    def running_counts(self, column: str, values: Sequence[str]) -> dict[str, int]:
        """{value: running tasks} for these names or queues."""
        return _running_counts(self.conn, column, values)

    def read_buckets(self, keys: Sequence[str]) -> tuple[dict[str, float | None], float]:
        """The rate buckets of these keys, and the claim's time."""
        found = dict(self.conn.execute(
            f"SELECT key, tat FROM rate_limits WHERE key IN ({','.join('?' * len(keys))})",
            list(keys)).fetchall())
        return {k: found.get(k) for k in keys}, self.t

    def write_buckets(self, new_tats: Mapping[str, float]) -> None:
        """Store the buckets' new tats."""
        self.conn.executemany(
            "INSERT INTO rate_limits (key, tat) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET tat = excluded.tat", list(new_tats.items()))

    def claim_ids(self, worker_id: str, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Mark the chosen candidates running."""
        return _claim_ids(self.conn, worker_id, ids)


class TaskOps:
    """Mixin of SQLiteBackend: the writes of producers and daemons."""

    # ---- enqueue (the shared logic, liteq.backends.enqueue) -------------------

    @guarded
    def enqueue(self, task: NewTask) -> int:
        """Insert one pending task and commit; then wake the daemon. A task with a
        unique_key held by a pending or running task inserts nothing: that task's
        id is returned."""
        return shared.enqueue(_Enqueue(self), task)

    @guarded
    def enqueue_chain(self, tasks: list[NewTask]) -> list[int]:
        """Insert NewTasks in one transaction, each depending on the one before it
        (after its own depends_on); returns their ids. See base.Backend."""
        return shared.enqueue_chain(_Enqueue(self), tasks)

    @guarded
    def enqueue_many(self, tasks: NewTasks) -> list[int]:
        """Insert every call of a NewTasks in one transaction; ids in order."""
        return shared.enqueue_many(_Enqueue(self), tasks)

    @guarded
    def parent_results(self, task_id: int) -> list[Any]:
        """The stored results (JSON text) of a task's parents, in depends_on order."""
        return deps.parent_results(self._conn, task_id)

    # ---- claim and outcomes (daemon side) -----------------------------------

    def _priority_levels(self, conn, queue):
        """Priority levels that have pending tasks in `queue`, highest first.

        Each step is one index seek, so walking the levels costs O(levels * log n).
        """
        level = conn.execute(f"SELECT MAX(priority) FROM tasks WHERE {CLAIMABLE} "
                             "AND queue = ?", (queue,)).fetchone()[0]
        while level is not None:
            yield level
            level = conn.execute(f"SELECT MAX(priority) FROM tasks WHERE {CLAIMABLE} "
                                 "AND queue = ? AND priority < ?", (queue, level)).fetchone()[0]

    @guarded
    def claim(self, worker_id: str, queues: Sequence[str], limit: int,
              limits: Limits | None = None) -> list[dict[str, Any]]:
        """Mark up to `limit` due pending tasks of `queues` as running for this worker.

        Claimed by one UPDATE ... RETURNING in one transaction. Candidates are found
        per queue and priority level with index range scans on run_at, so tasks due
        later (however many) are never scanned. While the previous claim of these
        queues came back full (a backlog is due) a single UPDATE ... LIMIT is used
        instead: with plenty due it stops after `limit` rows and saves the lookups.
        """
        self._rate_wait = None
        if limit <= 0 or not queues:
            return []
        if limits:
            with self._write() as conn:
                rows, self._rate_wait = claim_limited(_Limited(conn, now()), worker_id,
                                                      queues, limit, limits)
            return rows
        key = tuple(queues)
        rows = (self._claim_backlog if self._backlog.get(key) else self._claim_levels)(
            worker_id, queues, limit, now())
        self._backlog[key] = len(rows) == limit
        return rows

    def _claim_levels(self, worker_id, queues, limit, t):
        with self._write() as conn:
            candidates = []
            for queue in queues:
                found = 0
                for level in self._priority_levels(conn, queue):
                    rows = conn.execute(
                        f"SELECT id, priority, run_at FROM tasks WHERE {CLAIMABLE} "
                        "AND queue = ? AND priority = ? AND run_at <= ? "
                        "ORDER BY run_at, id LIMIT ?", (queue, level, t, limit - found)
                    ).fetchall()
                    candidates.extend(rows)
                    found += len(rows)
                    if found >= limit:
                        break  # lower levels cannot beat what this queue already has
            if not candidates:
                return []
            candidates.sort(key=lambda r: (-r[1], r[2], r[0]))
            return _claim_ids(conn, worker_id, [r[0] for r in candidates[:limit]])

    def rate_wait(self) -> float | None:
        """Seconds until a rate limit that held back due tasks in the last claim allows a
        start again, or None (see base.Backend.rate_wait)."""
        return self._rate_wait

    def _claim_backlog(self, worker_id, queues, limit, t):
        marks = ",".join("?" * len(queues))
        with self._write() as conn:
            rows = conn.execute(
                f"UPDATE tasks SET status = 'running', worker_id = ?, attempts = attempts + 1, "
                f"started_at = NULL WHERE id IN (SELECT id FROM tasks WHERE {CLAIMABLE} "
                f"AND queue IN ({marks}) AND run_at <= ? "
                f"ORDER BY priority DESC, run_at, id LIMIT ?) RETURNING {CLAIM_RETURNING}",
                (worker_id, *queues, t, limit)).fetchall()
        return by_claim_order(rows)

    @guarded
    def record_outcomes(self, worker_id: str, done: Iterable[tuple[Any, ...]] = (),
                        failed: Iterable[tuple[Any, ...]] = (),
                        retry: Iterable[tuple[Any, ...]] = ()) -> list[int]:
        """Record finished attempts in one transaction; returns the ids recorded.

        Each update only applies while the row is still running for this worker;
        an id missing from the result was refused (reclaimed or cancelled meanwhile).
        """
        t = now()
        recorded = []
        ready = False
        tally, errors = Tally(), []
        with self._write() as conn:
            before = {}
            if retry:
                # The retry's UPDATE moves run_at: read this attempt's due time first.
                before = stats.running_rows(conn, [r[0] for r in retry], worker_id)
                retry = [(tid, text, s, t + delay) for tid, text, s, delay in retry]
            for kind, rows in (("done", done), ("failed", failed), ("retry", retry)):
                of_kind = []
                given = {row[0]: row for row in rows}
                for start in range(0, len(rows), _OUTCOME_CHUNK):
                    chunk = rows[start:start + _OUTCOME_CHUNK]
                    values = ",".join(["(?,?,?,?)"] * len(chunk))
                    params = [x for row in chunk for x in row]
                    for r in conn.execute(
                            f"UPDATE tasks SET {_OUTCOME_SET[kind]} FROM (VALUES {values}) AS v "
                            f"WHERE tasks.id = v.column1 AND tasks.status = 'running' "
                            f"AND tasks.worker_id = ? RETURNING tasks.id, tasks.queue, "
                            f"tasks.name, tasks.run_at, tasks.attempts",
                            (*params, worker_id)):
                        of_kind.append(r[0])
                        _, text, started, end = given[r[0]]
                        finished = t if kind == "retry" else end
                        tally.attempt(before.get(r[0], r) if kind == "retry" else r,
                                      _STAT_OF[kind], text if kind != "done" else None,
                                      started, finished)
                        if kind != "done":
                            errors.append((r[0], r["attempts"], text, finished))
                # Dependents learn of their parents' ends in the same transaction.
                if kind == "done" and of_kind:
                    ready = deps.release_children(conn, of_kind)
                elif kind == "failed" and of_kind:
                    deps.cancel_dependents(conn, of_kind, "failed", t, tally)
                recorded.extend(of_kind)
            stats.add_errors(conn, errors)
            stats.write(conn, tally, self._stat_names)
        if ready:
            self.notify()
        return recorded

    @guarded
    def release(self, worker_id: str, task_ids: Iterable[int]) -> int:
        """Return claimed tasks that never started to pending, uncounting the attempt."""
        if not task_ids:
            return 0
        with self._write() as conn:
            cur = conn.executemany(RELEASE, [(tid, worker_id) for tid in task_ids])
            return cur.rowcount

    @guarded
    def mark_started(self, worker_id, started) -> int:
        """Set started_at of claimed tasks a child started: [(task_id, epoch_s)]."""
        if not started:
            return 0
        with self._write() as conn:
            cur = conn.executemany(MARK_STARTED, [(float(s), int(i), worker_id)
                                                  for i, s in started])
            return cur.rowcount

    @guarded
    def claimed_counts(self) -> dict:
        """{queue: n} of claimed tasks no child has started yet."""
        return dict(self._conn.execute(
            "SELECT queue, COUNT(*) FROM tasks WHERE status = 'running' "
            "AND started_at IS NULL GROUP BY queue").fetchall())

    @guarded
    def release_unheld(self, worker_id, held_ids) -> list:
        """Return to pending every task running for worker_id but `held_ids` (claims
        whose answer was lost); returns their ids."""
        held = {int(i) for i in held_ids}
        with self._write() as conn:
            running = [r[0] for r in conn.execute(
                "SELECT id FROM tasks WHERE status = 'running' AND worker_id = ?",
                (worker_id,))]
            unheld = sorted(i for i in running if i not in held)
            conn.executemany(RELEASE, [(tid, worker_id) for tid in unheld])
            return unheld

    @guarded
    def next_due(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest pending task of these queues is due, or None."""
        conn = self._conn
        earliest = None
        for queue in queues:
            for level in self._priority_levels(conn, queue):
                first = conn.execute(
                    f"SELECT MIN(run_at) FROM tasks WHERE {CLAIMABLE} AND queue = ? "
                    "AND priority = ?", (queue, level)).fetchone()[0]
                if first is not None and (earliest is None or first < earliest):
                    earliest = first
        return None if earliest is None else earliest - now()
