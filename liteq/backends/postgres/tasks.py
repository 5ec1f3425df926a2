"""PostgreSQL: enqueue, claim, outcomes and release (the producers' and the daemon's
writes to the tasks table). The inserts are in .inserts; the enqueue and the limited
claim's logic are shared by every backend (liteq.backends.enqueue, .claiming).

Every "now" is the server's now(): due times and claims are judged by it, so a
daemon whose clock is off neither delays nor advances a task. Times go out as
epoch seconds (date_part('epoch', ...)).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import enqueue as shared
from ..claiming import CLAIMED_COLUMNS, by_claim_order, claim_limited
from ..stats import Tally
from . import deps, stats
from .connection import guarded
from .inserts import Inserts, floats
from .opbase import OpBase

if TYPE_CHECKING:
    from ...taskspec import NewTask, NewTasks
    from ..limits import Limits
    from .connection import DbSession

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
    "RETURNING " + ", ".join(
        f"date_part('epoch', t.{c}) AS {c}" if c in ("run_at", "created_at") else f"t.{c}"
        for c in CLAIMED_COLUMNS))

# A claim under concurrency limits while none of the rows it would take is of a
# limited name or queue (the common case: an app defines a limit whose tasks are
# rarely queued): CLAIM itself, one statement, which takes nothing as soon as one
# of them is; the claim then goes the slow way (see claiming.claim_limited).
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


# The rate buckets of locked keys, and the server's clock once their locks are held.
READ_BUCKETS = (
    "SELECT k.key, r.tat, date_part('epoch', clock_timestamp()) AS now "
    "FROM unnest(%s::text[]) AS k(key) LEFT JOIN rate_limits r ON r.key = k.key")
WRITE_BUCKETS = (
    "INSERT INTO rate_limits (key, tat) SELECT * FROM unnest(%s::text[], %s::float8[]) "
    "ON CONFLICT (key) DO UPDATE SET tat = excluded.tat")


class _Limited:
    """PostgreSQL's side of the shared limited claim (liteq.backends.claiming), in the
    claim's transaction. Advisory locks of the limited names and queues make the
    count and the claim one step across daemons; they end with the transaction.
    The candidates' row locks never make anyone wait (SKIP LOCKED)."""

    def __init__(self, ops: Any) -> None:
        self.run, self.schema = ops._session.run, ops._schema

    def candidates(self, queues: Sequence[str], skip_names: Sequence[str],
                   per_queue: int) -> list[Any]:
        """Due candidates in claim order, locked (see CANDIDATES)."""
        rows: list[Any] = self.run(CANDIDATES, (list(queues), list(skip_names), per_queue),
                                   prepare=True).fetchall()
        return rows

    def lock_limit(self, key: str, wait: bool) -> bool:
        """The advisory lock of one limit key (try only when not wait)."""
        lock = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
        row = self.run(f"SELECT {lock}(hashtextextended(%s, 0)) AS ok",
                       (f"liteq-limit:{self.schema}:{key}",), prepare=True).fetchone()
        return row["ok"] is not False

    def running_counts(self, column: str, values: Sequence[str]) -> dict[str, int]:
        """{value: running tasks} for these names or queues."""
        return {r[column]: r["n"] for r in self.run(
            f"SELECT {column}, COUNT(*) AS n FROM tasks WHERE status = 'running' "
            f"AND {column} = ANY(%s) GROUP BY {column}", (list(values),),
            prepare=True).fetchall()}

    def read_buckets(self, keys: Sequence[str]) -> tuple[dict[str, float | None], float]:
        """The rate buckets of these keys, and the server's clock once they are locked."""
        rows = self.run(READ_BUCKETS, (list(keys),), prepare=True).fetchall()
        return {r["key"]: r["tat"] for r in rows}, rows[0]["now"]

    def write_buckets(self, new_tats: Mapping[str, float]) -> None:
        """Store the buckets' new tats."""
        keys = sorted(new_tats)
        self.run(WRITE_BUCKETS, (keys, [float(new_tats[k]) for k in keys]), prepare=True)

    def claim_ids(self, worker_id: str, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Mark the chosen (locked) candidates running."""
        return by_claim_order(self.run(CLAIM_IDS, (worker_id, list(ids)),
                                       prepare=True).fetchall())


class TaskOps(OpBase):
    """Mixin of PostgresBackend: the writes of producers and daemons."""

    @guarded
    def enqueue(self, task: NewTask) -> int:
        """Insert one pending task with its wake-up, in one statement; returns its id.
        A task with a unique_key held by a pending or running task inserts nothing:
        that task's id is returned."""
        return shared.enqueue(Inserts(self), task)

    @guarded
    def enqueue_chain(self, tasks: list[NewTask]) -> list[int]:
        """Insert NewTasks in one transaction, each depending on the one before it
        (after its own depends_on); returns their ids. See base.Backend."""
        return shared.enqueue_chain(Inserts(self), tasks)

    @guarded
    def enqueue_many(self, tasks: NewTasks) -> list[int]:
        """Insert every call of a NewTasks in one statement (one transaction, one
        wake-up); returns the ids in order."""
        return shared.enqueue_many(Inserts(self), tasks)

    @guarded
    def parent_results(self, task_id: int) -> list[Any]:
        """The stored results (JSON text) of a task's parents, in depends_on order."""
        return [r["result"] for r in self._session.run(deps.PARENT_RESULTS,
                                                        (int(task_id),)).fetchall()]

    @guarded
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
                return by_claim_order(rows)
            with self._session.transaction():
                rows, self._rate_wait = claim_limited(_Limited(self), worker_id, queues,
                                                      limit, limits)
            return rows
        rows = self._session.run(CLAIM, (queues, limit, limit, worker_id),
                                 prepare=True).fetchall()
        return by_claim_order(rows)

    def rate_wait(self) -> float | None:
        """Seconds until a rate limit that held back due tasks in the last claim allows a
        start again, or None (see base.Backend.rate_wait)."""
        return self._rate_wait

    @guarded
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

    @guarded
    def release(self, worker_id: str, task_ids: Iterable[int]) -> int:
        """Return claimed tasks that never started to pending, uncounting the attempt."""
        if not task_ids:
            return 0
        return self._session.run(RELEASE, ([int(i) for i in task_ids], worker_id),
                                 prepare=True).rowcount

    @guarded
    def mark_started(self, worker_id, started) -> int:
        """Set started_at of claimed tasks a child started: [(task_id, epoch_s)]."""
        if not started:
            return 0
        ids, starts = zip(*started)
        return self._session.run(MARK_STARTED, ([int(i) for i in ids], floats(starts),
                                                worker_id), prepare=True).rowcount

    @guarded
    def claimed_counts(self) -> dict:
        """{queue: n} of claimed tasks no child has started yet."""
        return {r["queue"]: r["n"] for r in self._session.run(
            "SELECT queue, COUNT(*) AS n FROM tasks WHERE status = 'running' "
            "AND started_at IS NULL GROUP BY queue").fetchall()}

    @guarded
    def release_unheld(self, worker_id, held_ids) -> list:
        """Return to pending every task running for worker_id but `held_ids` (claims
        whose answer was lost); returns their ids."""
        rows = self._session.run(RELEASE_UNHELD, (worker_id, [int(i) for i in held_ids]))
        return sorted(r["id"] for r in rows.fetchall())

    @guarded
    def next_due(self, queues: Sequence[str]) -> float | None:
        """Seconds from the server's now until the earliest pending task of `queues` is
        due (<= 0: due now), or None when none is pending."""
        queues = list(dict.fromkeys(queues))
        if not queues:
            return None
        return self._session.run(NEXT_DUE, (queues,), prepare=True).fetchone()["wait"]

