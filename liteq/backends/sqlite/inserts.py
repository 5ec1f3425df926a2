"""SQLite: the producers' inserts (.delay(), unique tasks, batches, chains and a
schedule's fire); the statements of the shared enqueue logic (liteq.backends.enqueue).
Due times are the producer's clock (time.time())."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from ...timeutil import now
from ..enqueue import TASK_COLUMNS, Dependent
from . import deps
from .schema import NEXT_ID

if TYPE_CHECKING:
    from ...taskspec import NewTask, NewTasks

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


class Inserts:
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
    def chain_writer(self) -> Generator[_Chain]:
        """A chain's write transaction; wakes the daemon after the commit."""
        with self.ops._write() as conn:
            writer = _Chain(conn, now())
            yield writer
        if writer.ready is not None:
            self.ops.notify(writer.ready)
