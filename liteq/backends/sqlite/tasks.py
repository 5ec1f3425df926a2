"""SQLite: enqueue, claim, outcomes, heartbeats and reclaim (the producers' and the
daemon's side of the tasks table)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ...timeutil import now
from ..limits import Buckets, Limits, merge_rooms, pick, rate_key, rooms, rooms_left, used_up
from ..stats import Tally, reclaimed_tally
from . import deps, stats
from .connection import guarded
from .opbase import OpBase
from .schema import NEXT_ID

if TYPE_CHECKING:
    from ...taskspec import NewTask
    from ..limits import Limits

# A task the claim may take: pending, and waiting for no parent (idx_tasks_claim's
# leading columns).
CLAIMABLE = "status = 'pending' AND waiting_on = 0"

# The columns a claim hands the daemon.
CLAIM_RETURNING = ("id, name, payload, queue, priority, run_at, attempts, max_retries, "
                   "timeout, retry_delay, retry_backoff, retry_max_delay, created_at")

INSERT_TASK = (
    "INSERT INTO tasks (id, name, payload, queue, priority, max_retries, run_at, created_at, "
    f"timeout, retry_delay, retry_backoff, retry_max_delay) VALUES ({NEXT_ID} + 1, "
    "?,?,?,?,?,?,?,?,?,?,?)"
)

# A unique task: nothing is inserted while a pending or running task has the key
# (the conflict target repeats idx_tasks_unique_key's predicate, so SQLite picks it).
INSERT_UNIQUE = (
    "INSERT INTO tasks (id, name, payload, queue, priority, max_retries, run_at, created_at, "
    "timeout, retry_delay, retry_backoff, retry_max_delay, unique_key) "
    f"VALUES ({NEXT_ID} + 1, ?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (unique_key) "
    "WHERE unique_key IS NOT NULL AND status IN ('pending', 'running') DO NOTHING RETURNING id"
)
HOLDER_OF_KEY = ("SELECT id FROM tasks WHERE unique_key = ? AND unique_key IS NOT NULL "
                 "AND status IN ('pending', 'running')")

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


def due_time(run_at, delay, t):
    """The epoch time a task is due: run_at, else t + delay, else t."""
    if run_at is not None:
        return run_at
    return t + delay if delay else t


def insert_values(task: NewTask, t: float) -> tuple[Any, ...]:
    """The INSERT_TASK parameters of a NewTask, created at time t."""
    o = task.options
    return (task.name, task.payload, o.queue, o.priority, o.max_retries,
            due_time(task.run_at, task.delay, t), t, o.timeout, o.retry_delay,
            o.retry_backoff, o.retry_max_delay)


def _running_counts(conn, column, values) -> dict:
    """{value: running tasks} for these names or queues."""
    if not values:
        return {}
    marks = ",".join("?" * len(values))
    return dict(conn.execute(
        f"SELECT {column}, COUNT(*) FROM tasks WHERE status = 'running' "
        f"AND {column} IN ({marks}) GROUP BY {column}", values).fetchall())


def _read_buckets(conn: Any, limits: Limits, names: list[str], queues: list[str],
                  t: float) -> Buckets | None:
    """The rate buckets of the rate-limited names and queues among these (a Buckets at
    time t), or None when none is."""
    keys = [rate_key("n", n) for n in names if n in limits.rate_by_name] + \
        [rate_key("q", q) for q in queues if q in limits.rate_by_queue]
    if not keys:
        return None
    found = dict(conn.execute(
        f"SELECT key, tat FROM rate_limits WHERE key IN ({','.join('?' * len(keys))})",
        keys).fetchall())
    return Buckets(limits, t, {k: found.get(k) for k in keys})


def _candidates(conn, queues, skip_names, t, limit):
    """Due pending rows (id, name, queue) of `queues` in claim order, but those of
    `skip_names`, `limit` at most."""
    marks = ",".join("?" * len(queues))
    skip = f"AND name NOT IN ({','.join('?' * len(skip_names))}) " if skip_names else ""
    return conn.execute(
        f"SELECT id, name, queue FROM tasks WHERE {CLAIMABLE} "
        f"AND queue IN ({marks}) AND run_at <= ? {skip}"
        f"ORDER BY priority DESC, run_at, id LIMIT ?",
        (*queues, t, *skip_names, limit)).fetchall()


def _claim_ids(conn, worker_id: str, ids: list[int]) -> list[dict[str, Any]]:
    """Mark these pending tasks running for worker_id (in the caller's transaction),
    not yet started (see MARK_STARTED); returns them in claim order."""
    if not ids:
        return []
    rows = conn.execute(
        f"UPDATE tasks SET status = 'running', worker_id = ?, attempts = attempts + 1, "
        f"started_at = NULL WHERE id IN ({','.join('?' * len(ids))}) "
        f"AND +status = 'pending' RETURNING {CLAIM_RETURNING}",
        (worker_id, *ids)).fetchall()
    return _by_claim_order(rows)


def _by_claim_order(rows):
    # RETURNING gives no order guarantee; restore the claim order.
    rows = [dict(r) for r in rows]
    rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))
    return rows


class TaskOps(OpBase):
    """Mixin of SQLiteBackend: the writes of producers and daemons."""

    # ---- enqueue -------------------------------------------------------------

    @guarded
    def enqueue(self, task) -> int:
        """Insert one pending task and commit; then wake the daemon. A task with a
        unique_key held by a pending or running task inserts nothing: that task's
        id is returned."""
        t = now()
        values = insert_values(task, t)
        if task.depends_on:
            return self.enqueue_chain([task])[0]
        if task.unique_key is not None:
            return self._enqueue_unique(values + (task.unique_key,))
        task_id = self._conn.execute(INSERT_TASK, values).lastrowid
        self.notify(values[5])
        return task_id

    def _enqueue_unique(self, values):
        # Under the write lock nothing can finish the holder between the two
        # statements, so the SELECT finds the row the INSERT conflicted with.
        with self._write() as conn:
            row = conn.execute(INSERT_UNIQUE, values).fetchone()
            if row is None:
                return conn.execute(HOLDER_OF_KEY, (values[-1],)).fetchone()[0]
        self.notify(values[5])
        return row[0]

    @guarded
    def enqueue_chain(self, tasks) -> list:
        """Insert NewTasks in one transaction, each depending on the one before it
        (after its own depends_on); returns their ids. See base.Backend."""
        t = now()
        ids, ready = [], None
        with self._write() as conn:
            for task in tasks:
                parents = tuple(task.depends_on) + ((ids[-1],) if ids else ())
                values = insert_values(task, t)
                if parents:
                    task_id, claimable = deps.insert_dependent(conn, values, parents)
                else:
                    task_id, claimable = conn.execute(INSERT_TASK, values).lastrowid, True
                ids.append(task_id)
                if claimable:
                    ready = values[5] if ready is None else min(ready, values[5])
        if ready is not None:
            self.notify(ready)
        return ids

    @guarded
    def parent_results(self, task_id) -> list:
        """The stored results (JSON text) of a task's parents, in depends_on order."""
        return deps.parent_results(self._conn, task_id)

    @guarded
    def enqueue_many(self, tasks) -> list:
        """Insert every call of a NewTasks in one transaction; ids in order.

        SQLite splits the JSON array with json_each (which walks it in order), so
        no per-row Python work is done here.
        """
        if tasks.count <= 0:
            return []
        t = now()
        o = tasks.options
        due = due_time(tasks.run_at, tasks.delay, t)
        with self._write() as conn:
            # Under the write lock the ids after `base` are ours. Only the first row
            # names its id: SQLite gives each next one max(id) + 1, which follows it,
            # and appends them faster than rows that all name theirs.
            base = conn.execute(f"SELECT {NEXT_ID}").fetchone()[0]
            conn.execute(
                "INSERT INTO tasks (id, name, payload, queue, priority, max_retries, run_at, "
                "created_at, timeout, retry_delay, retry_backoff, retry_max_delay) "
                "SELECT CASE key WHEN 0 THEN ? + 1 END, ?, "
                "'{\"args\":' || value || ',\"kwargs\":{}}', "
                "?, ?, ?, ?, ?, ?, ?, ?, ? FROM json_each(?)",
                (base, tasks.name, o.queue, o.priority, o.max_retries, due, t, o.timeout,
                 o.retry_delay, o.retry_backoff, o.retry_max_delay, tasks.args_json))
        self.notify(due)
        return list(range(base + 1, base + tasks.count + 1))

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
            return self._claim_limited(worker_id, queues, limit, now(), limits)
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
            ids = [r[0] for r in candidates[:limit]]
            marks = ",".join("?" * len(ids))
            # "+status" keeps the planner on the primary key: with a million pending
            # rows the status index would be a full scan.
            rows = conn.execute(
                f"UPDATE tasks SET status = 'running', worker_id = ?, attempts = attempts + 1, "
                f"started_at = NULL WHERE id IN ({marks}) AND +status = 'pending' "
                f"RETURNING {CLAIM_RETURNING}", (worker_id, *ids)).fetchall()
        return _by_claim_order(rows)

    def _claim_limited(self, worker_id, queues, limit, t, limits):
        # The write lock (BEGIN IMMEDIATE) makes the count, the rate buckets and the
        # claim one step for every daemon on the file.
        names, limited_queues = limits.relevant(queues)
        with self._write() as conn:
            # First the rows a plain claim would take: while none is of a limited name
            # or queue (a limit whose tasks are not due), they are claimed as they
            # are, and the limits cost one small read.
            head = _candidates(conn, queues, [], t, limit)
            if not head:
                return []
            limited_names, limited_here = set(names), set(limited_queues)
            if not any(r["name"] in limited_names or r["queue"] in limited_here
                       for r in head):
                return _claim_ids(conn, worker_id, [r["id"] for r in head])
            by_name = _running_counts(conn, "name", [n for n in names if n in limits.by_name])
            by_queue = _running_counts(conn, "queue",
                                       [q for q in limited_queues if q in limits.by_queue])
            name_room, queue_room = rooms(limits, by_name, by_queue)
            # Only names and queues at their concurrency limit are left out of the
            # candidates: those of an empty rate bucket are read (and passed over),
            # so that the claim knows whether to come back when it refills.
            full = [n for n, room in name_room.items() if room <= 0]
            open_queues = [q for q in queues if queue_room.get(q, 1) > 0]
            buckets = _read_buckets(conn, limits, names, limited_queues, t)
            if buckets is not None:
                rate_names, rate_queues = buckets.rooms()
                name_room = merge_rooms(name_room, rate_names)
                queue_room = merge_rooms(queue_room, rate_queues)
            if not open_queues:
                return []
            # Extra candidates, so that rows of a name with little room left do not
            # leave the batch short.
            many = limit * 4 + 16
            rows = _candidates(conn, open_queues, full, t, many)
            ids = pick(rows, limit, name_room, queue_room)
            used_names, used_queues = used_up(rows, ids, name_room, queue_room)
            if len(ids) < limit and len(rows) >= many and (used_names or used_queues):
                # Those were mostly rows of names or queues now at their limit: the
                # rows behind them are read too, not left to the next poll.
                rest = [q for q in open_queues if q not in used_queues]
                seen = {r["id"] for r in rows}
                more = [r for r in _candidates(conn, rest, used_names, t, many)
                        if r["id"] not in seen] if rest else []
                ids += pick(more, limit - len(ids), *rooms_left(rows, ids, name_room, queue_room))
                rows = list(rows) + more
            if buckets is not None:
                chosen = set(ids)
                new_tats = buckets.spent([r for r in rows if r["id"] in chosen])
                if new_tats:
                    conn.executemany(
                        "INSERT INTO rate_limits (key, tat) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                        list(new_tats.items()))
                self._rate_wait = buckets.wait(rows, ids, new_tats)
            return _claim_ids(conn, worker_id, ids)

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
        return _by_claim_order(rows)

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

    # ---- workers and reclaim ---------------------------------------------------

    @guarded
    def heartbeat(self, worker_id: str, hostname: str, queues: Sequence[str], concurrency: int,
                  pid: int, process_started: float, started_at: float | None = None) -> None:
        """Insert or refresh this daemon's row in `workers`."""
        t = now()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO workers (worker_id, hostname, queues, concurrency, last_heartbeat, "
                "pid, process_started, started_at) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT(worker_id) DO UPDATE SET hostname = excluded.hostname, "
                "queues = excluded.queues, concurrency = excluded.concurrency, "
                "last_heartbeat = excluded.last_heartbeat, pid = excluded.pid, "
                "process_started = excluded.process_started",
                (worker_id, hostname, queues, concurrency, t, pid, process_started,
                 started_at or t))

    @guarded
    def remove_worker(self, worker_id: str) -> None:
        """Delete a worker's row (on clean shutdown)."""
        with self._write() as conn:
            conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    @guarded
    def list_workers(self) -> list[dict[str, Any]]:
        """Every row of `workers`, newest heartbeat first."""
        return [dict(r) for r in self._conn.execute(
            "SELECT * FROM workers ORDER BY last_heartbeat DESC")]

    @guarded
    def reclaim(self, dead_worker_ids: Iterable[str] = (), stale_after: float | None = None,
                reason: str = "worker died", stale_heartbeats: dict[str, Any] | None = None) -> list[tuple[int, str]]:
        """Give back the running tasks of dead workers, in one atomic statement.

        A worker is dead when it is named in `dead_worker_ids`, its row still holds the
        heartbeat `stale_heartbeats` ({worker_id: last_heartbeat}) names for it, its
        heartbeat is older than `stale_after` seconds, or it has no row at all. Tasks
        with attempts left go back to pending, keeping their due time; the rest fail
        with `reason`. Dead worker rows are deleted.
        """
        t = now()
        dead = list(dead_worker_ids)
        beats = list((stale_heartbeats or {}).items())
        marks = ",".join("?" * len(dead)) or "NULL"
        stale = -1.0 if stale_after is None else t - stale_after
        # A row that still holds the heartbeat read as stale: one that beat meanwhile
        # is alive and keeps its tasks.
        unchanged = " OR ".join("(worker_id = ? AND last_heartbeat = ?)" for _ in beats) or "0"
        gone = f"worker_id IN ({marks}) OR last_heartbeat < ? OR {unchanged}"
        args = (*dead, stale, *[v for pair in beats for v in pair])
        dead_clause = (f"worker_id IN (SELECT worker_id FROM workers WHERE {gone}) "
                       f"OR worker_id IN ({marks}) OR worker_id IS NULL OR worker_id NOT IN "
                       f"(SELECT worker_id FROM workers)")
        final = reason + ", and the task has no retries left"
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE tasks SET "
                "status = CASE WHEN attempts > max_retries THEN 'failed' ELSE 'pending' END, "
                "error = CASE WHEN attempts > max_retries THEN ? ELSE error END, "
                "finished_at = CASE WHEN attempts > max_retries THEN ? ELSE NULL END, "
                "worker_id = NULL "
                f"WHERE status = 'running' AND ({dead_clause}) "
                "RETURNING id, status, queue, name, attempts",
                (final, t, *args, *dead)).fetchall()
            failed = [r["id"] for r in rows if r["status"] == "failed"]
            tally = reclaimed_tally(rows)
            if failed:
                deps.cancel_dependents(conn, failed, "failed", t, tally)
            # The attempt each was on ended with its daemon.
            stats.add_errors(conn, [(r["id"], r["attempts"],
                                     final if r["status"] == "failed" else reason, t)
                                    for r in rows])
            stats.write(conn, tally, self._stat_names)
            conn.execute(f"DELETE FROM workers WHERE {gone}", args)
        return [(r["id"], r["status"]) for r in rows]
