"""The enqueue logic of every backend, written once: the checks a task must pass
before anything is written, the dispatch of enqueue / enqueue_chain / enqueue_many
and unique tasks, the dependent-insert decision, and the statement that cancels
the dependents of a task that ended failed or cancelled.

A backend supplies a dialect (EnqueueDialect): its statements for one task, a
unique task, a batch and a chain's transaction (ChainWriter). What it inserts is
the columns of TASK_COLUMNS, in that order, plus what its own schema adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

from ..taskspec import missing_parents_error, parent_ended_text
from .rules import (OPTION_ORDER, check_args_json, check_depends_on, check_due, check_option,
                    check_payload, check_task_name, check_unique_key)

if TYPE_CHECKING:
    from ..taskspec import NewTask, NewTasks, TaskOptions

#: The columns of a new task row every backend inserts, in this order; a backend
#: computes run_at its own way (see each one's due-time expression).
TASK_COLUMNS = ("name", "payload", "queue", "priority", "max_retries", "run_at", "timeout",
                "retry_delay", "retry_backoff", "retry_max_delay")

# TaskOptions objects already found good, by identity (each kept alive here, so its id
# is not reused): a task's options are the same object on every .delay().
_GOOD_OPTIONS: dict[int, TaskOptions] = {}
_MAX_GOOD_OPTIONS = 10_000


def checked_options(options: TaskOptions) -> TaskOptions:
    """`options` once every field meets its rule (liteq.backends.rules), with priority
    and max_retries as ints and the retry settings as floats (a copy when one was
    not); TypeError/ValueError naming the first bad field otherwise."""
    if _GOOD_OPTIONS.get(id(options)) is options:
        return options
    if not {f.name for f in fields(options)} >= set(OPTION_ORDER):
        raise TypeError(f"options must be a TaskOptions, not {type(options).__name__}")
    changes: dict[str, Any] = {}
    for key in OPTION_ORDER:
        given = getattr(options, key)
        stored = check_option(key, given)
        if type(stored) is not type(given) or stored != given:
            changes[key] = stored
    good: TaskOptions = replace(options, **changes) if changes else options
    if len(_GOOD_OPTIONS) < _MAX_GOOD_OPTIONS:
        _GOOD_OPTIONS[id(good)] = good
    return good


def checked_task(task: NewTask) -> NewTask:
    """`task` once its name, payload, options, due time, unique_key and depends_on
    meet the rules (a copy when an option was normalised, see checked_options);
    TypeError/ValueError otherwise, before anything is written."""
    check_task_name(task.name)
    check_payload(task.payload)
    options = checked_options(task.options)
    if task.run_at is not None or task.delay is not None:
        check_due(task.run_at, task.delay)
    if task.unique_key is not None:
        check_unique_key(task.unique_key)
    parents = check_depends_on(task.depends_on) if task.depends_on else task.depends_on
    if options is not task.options or parents != task.depends_on:
        return replace(task, options=options, depends_on=parents)
    return task


def checked_tasks(tasks: NewTasks) -> NewTasks:
    """A batch of calls once its name, options, due time and args_json meet the rules
    (args_json: a JSON array of `count` argument lists); see checked_task."""
    check_task_name(tasks.name)
    options = checked_options(tasks.options)
    if tasks.run_at is not None or tasks.delay is not None:
        check_due(tasks.run_at, tasks.delay)
    check_args_json(tasks.args_json, tasks.count)
    return replace(tasks, options=options) if options is not tasks.options else tasks


@dataclass(frozen=True)
class Dependent:
    """How a task with parents is inserted: waiting for `waiting_on` parents not done
    yet (pending), or cancelled at once with `error` when a parent already ended
    failed or cancelled."""
    waiting_on: int
    status: str
    error: str | None

    @property
    def claimable(self) -> bool:
        """True when the task may be claimed at once (every parent is done)."""
        return self.status == "pending" and self.waiting_on == 0


def dependent_row(parents: Sequence[int], status_of: dict[int, str]) -> Dependent:
    """The Dependent of a task waiting for `parents`, given the statuses of those that
    exist; a ValueError naming those that do not (nothing is written)."""
    missing = [p for p in parents if p not in status_of]
    if missing:
        raise missing_parents_error(missing)
    ended = next((p for p in parents if status_of[p] in ("failed", "cancelled")), None)
    if ended is not None:
        return Dependent(0, "cancelled", parent_ended_text(ended, status_of[ended]))
    return Dependent(sum(status_of[p] != "done" for p in parents), "pending", None)


class ChainWriter(Protocol):
    """A backend's writes inside the one transaction of an enqueue_chain."""

    def insert(self, task: NewTask) -> int:
        """Insert a task with no parents; its id."""
        ...

    def parent_statuses(self, parents: Sequence[int]) -> dict[int, str]:
        """{id: status} of the existing parents, kept from changing until the commit."""
        ...

    def insert_dependent(self, task: NewTask, parents: Sequence[int], row: Dependent) -> int:
        """Insert a task as `row` says, and its edges to `parents`; its id."""
        ...


class EnqueueDialect(Protocol):
    """What a backend supplies for the shared enqueue logic."""

    def insert_one(self, task: NewTask) -> int:
        """Insert one task, commit and wake the daemons; its id."""
        ...

    def insert_unique(self, task: NewTask) -> int:
        """Insert a task unless a pending or running task holds its unique_key; the id
        of the task inserted, or of the holder."""
        ...

    def insert_many(self, tasks: NewTasks) -> list[int]:
        """Insert a batch of calls (count > 0) in one transaction; their ids in order."""
        ...

    def chain_writer(self) -> AbstractContextManager[ChainWriter]:
        """A transaction for a chain; it commits, then wakes the daemons, at exit."""
        ...


def enqueue(dialect: EnqueueDialect, task: NewTask) -> int:
    """Backend.enqueue: check, then insert a plain, unique or dependent task."""
    task = checked_task(task)
    if task.depends_on:
        return enqueue_chain(dialect, [task])[0]
    if task.unique_key is not None:
        return dialect.insert_unique(task)
    return dialect.insert_one(task)


def enqueue_chain(dialect: EnqueueDialect, tasks: Sequence[NewTask]) -> list[int]:
    """Backend.enqueue_chain: each task depends on its own depends_on, then on the
    one before it; all inserted in one transaction. Their ids."""
    tasks = [checked_task(task) for task in tasks]
    ids: list[int] = []
    with dialect.chain_writer() as writer:
        for task in tasks:
            parents = tuple(task.depends_on) + ((ids[-1],) if ids else ())
            if not parents:
                ids.append(writer.insert(task))
                continue
            row = dependent_row(parents, writer.parent_statuses(parents))
            ids.append(writer.insert_dependent(task, parents, row))
    return ids


def enqueue_many(dialect: EnqueueDialect, tasks: NewTasks) -> list[int]:
    """Backend.enqueue_many: check, then insert every call in one transaction."""
    tasks = checked_tasks(tasks)
    if tasks.count <= 0:
        return []
    return dialect.insert_many(tasks)


def cancel_dependents_sql(parent_test: str, finished_at: str, param: str) -> str:
    """The statement that cancels every pending task downstream of the given parents
    (walking only through pending tasks), each with an error naming the parent among
    those given it descends from, and returns their id, queue and name.

    Dialect parts: parent_test, the SQL test of a parent id ("IN (?,?)" or
    "= ANY(%s::bigint[])"); finished_at, the SQL of the end time; param, the
    placeholder of the parent's end in words (ENDED_WORDS)."""
    return (
        "WITH RECURSIVE doomed(id, root) AS ("
        " SELECT d.child_id, d.parent_id FROM task_deps d JOIN tasks c ON c.id = d.child_id "
        f"  AND c.status = 'pending' WHERE d.parent_id {parent_test}"
        " UNION"
        " SELECT d.child_id, doomed.root FROM doomed JOIN task_deps d "
        "  ON d.parent_id = doomed.id JOIN tasks c ON c.id = d.child_id "
        "  AND c.status = 'pending') "
        f"UPDATE tasks SET status = 'cancelled', waiting_on = 0, finished_at = {finished_at}, "
        f"error = 'cancelled: it depends on task ' || x.root || ', which ' || {param} "
        "FROM (SELECT id, MIN(root) AS root FROM doomed GROUP BY id) AS x "
        "WHERE tasks.id = x.id AND tasks.status = 'pending' "
        "RETURNING tasks.id, tasks.queue, tasks.name")
