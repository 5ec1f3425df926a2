"""SQLite: enqueue, claim and outcomes (the producers' and the daemon's writes to the
tasks table). The inserts are in .inserts; the enqueue and the limited claim's logic
are shared by every backend (liteq.backends.enqueue, liteq.backends.claiming)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...timeutil import now
from .. import enqueue as shared
from ..claiming import CLAIMED_COLUMNS, by_claim_order, claim_limited
from ..stats import Tally
from . import deps, stats
from .connection import guarded
from .inserts import Inserts
from .opbase import OpBase

if TYPE_CHECKING:
    from ...taskspec import NewTask, NewTasks
    from ..limits import Limits

# A task the claim may take: pending, and waiting for no parent (idx_tasks_claim's
# leading columns).
CLAIMABLE = "status = 'pending' AND waiting_on = 0"

# The columns a claim hands the daemon.
CLAIM_RETURNING = ", ".join(CLAIMED_COLUMNS)

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


class TaskOps(OpBase):
    """Mixin of SQLiteBackend: the writes of producers and daemons."""

    # ---- enqueue (the shared logic, liteq.backends.enqueue) -------------------

    @guarded
    def enqueue(self, task: NewTask) -> int:
        """Insert one pending task and commit; then wake the daemon. A task with a
        unique_key held by a pending or running task inserts nothing: that task's
        id is returned."""
        return shared.enqueue(Inserts(self), task)

    @guarded
    def enqueue_chain(self, tasks: list[NewTask]) -> list[int]:
        """Insert NewTasks in one transaction, each depending on the one before it
        (after its own depends_on); returns their ids. See base.Backend."""
        return shared.enqueue_chain(Inserts(self), tasks)

    @guarded
    def enqueue_many(self, tasks: NewTasks) -> list[int]:
        """Insert every call of a NewTasks in one transaction; ids in order."""
        return shared.enqueue_many(Inserts(self), tasks)

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
