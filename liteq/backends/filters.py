"""SQL pieces both backends build the same way (only the driver's placeholder differs),
and the filter of the operators' actions (TaskFilter) with the one check of task
statuses every backend applies."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .base import TASK_STATUSES as KNOWN_STATUSES


def check_statuses(statuses: str | Iterable[str]) -> tuple[str, ...]:
    """`statuses` as a tuple (a single string is one status), after checking that each
    is a task status: the one ValueError every backend raises for an unknown one."""
    chosen = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    unknown = sorted({s for s in chosen if s not in KNOWN_STATUSES}, key=repr)
    if unknown:
        raise ValueError(f"unknown task status(es) {unknown}; known: {KNOWN_STATUSES}")
    return chosen


def finished_status(status: str) -> str:
    """`status` when it is a finished one (done, failed, cancelled), else ValueError.

    Prune puts it in its SQL as a literal, so the planner can prove the partial index
    of finished tasks applies (a parameter would mean a scan of the table)."""
    check_statuses(status)
    if status not in ("done", "failed", "cancelled"):
        raise ValueError(f"prune takes a finished status (done, failed or cancelled), "
                         f"not {status!r}")
    return status


# Prune keeps a task that a pending or running task still depends on (the child
# waits for it, or reads its result with parent_results()).
PRUNABLE = ("NOT EXISTS (SELECT 1 FROM task_deps AS d JOIN tasks AS c ON c.id = d.child_id "
            "WHERE d.parent_id = tasks.id AND c.status IN ('pending', 'running'))")



FINISHED = ("done", "failed", "cancelled")


def finished_statuses(statuses: str | Iterable[str]) -> str:
    """The finished statuses (done, failed, cancelled) as SQL literals: "'done', 'failed'"
    (ValueError for any other). Literals, as in prune, so the partial index of finished
    tasks applies."""
    chosen = check_statuses(statuses)
    bad = [s for s in chosen if s not in FINISHED]
    if bad or not chosen:
        raise ValueError(f"finished statuses are done, failed and cancelled; got "
                         f"{', '.join(map(repr, bad)) or 'none'}")
    return ", ".join(f"'{s}'" for s in dict.fromkeys(chosen))


def task_filters(placeholder: str, queue: str | None = None, name: str | None = None,
                 ids: Iterable[int | str] | None = None) -> tuple[list[str], list[object]]:
    """Conditions (a list of SQL texts, to AND) and their parameters for the optional
    filters of the operators' commands: queue, task name, and a set of ids."""
    conds: list[str] = []
    params: list[object] = []
    for col, val in (("queue", queue), ("name", name)):
        if val is not None:
            conds.append(f"{col} = {placeholder}")
            params.append(val)
    if ids is not None:
        chosen = sorted({int(i) for i in ids})
        conds.append(f"id IN ({', '.join([placeholder] * len(chosen))})" if chosen else "0 = 1")
        params.extend(chosen)
    return conds, params


# ---- the panel's search and bulk actions ------------------------------------------

def like_pattern(text: str) -> str:
    """`%text%` for LIKE with ESCAPE '\\': the user's % and _ match themselves."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def task_where(placeholder: str, like: str, *, status: str | None = None,
               statuses: tuple[str, ...] | None = None, queue: str | None = None,
               name: str | None = None, search: str | None = None,
               below: int | None = None, at_least: int | None = None) -> tuple[str, list[object]]:
    """The WHERE clause (and its parameters) of a filtered task list.

    status, queue, name: equal to (None = any); statuses: a set the status must be
    in (literals from FINISHED and 'pending'/'running' only, so the planner sees them);
    search: the name, the arguments' JSON text or the error contains it (`like` is the
    case-insensitive LIKE of the driver: LIKE on SQLite, ILIKE on PostgreSQL);
    below / at_least: an id range, so that a search scans a bounded slice of the
    primary key (see liteq.web.search).
    """
    where: list[str] = []
    params: list[object] = []
    for col, val in (("status", status), ("queue", queue), ("name", name)):
        if val is not None:
            where.append(f"{col} = {placeholder}")
            params.append(val)
    if statuses is not None:
        if not check_statuses(statuses):
            raise ValueError("statuses must name at least one task status")
        where.append("status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")")
    if below is not None:
        where.append(f"id < {placeholder}")
        params.append(int(below))
    if at_least is not None:
        where.append(f"id >= {placeholder}")
        params.append(int(at_least))
    if search is not None:
        pattern = like_pattern(search)
        where.append("(" + " OR ".join(f"{col} {like} {placeholder} ESCAPE '\\'"
                                       for col in ("name", "payload", "error")) + ")")
        params += [pattern] * 3
    return ("WHERE " + " AND ".join(where)) if where else "", params



# ---- the operators' actions: cancel, retry, delete -----------------------------------

CANCELLABLE = ("pending", "running")
RETRYABLE = ("failed", "cancelled")


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks an operator's action (cancel, retry, delete) takes: every field
    narrows the choice, None means any.

    ids: these task ids; queue, name: equal to; statuses: among these (narrowed to
    the ones the action can change; None: all of those); older_than: finished over
    that many seconds ago (by the database's clock on PostgreSQL).
    The values are checked when the filter is made, alike for every backend.
    """

    ids: tuple[int, ...] | None = None
    queue: str | None = None
    name: str | None = None
    statuses: tuple[str, ...] | None = None
    older_than: float | None = None

    def __post_init__(self) -> None:
        if self.ids is not None:
            object.__setattr__(self, "ids", tuple(sorted({int(i) for i in self.ids})))
        if self.statuses is not None:
            object.__setattr__(self, "statuses", check_statuses(self.statuses))
        if self.older_than is not None:
            age = float(self.older_than)
            if not math.isfinite(age):
                raise ValueError(f"older_than must be a finite number, got {self.older_than!r}")
            object.__setattr__(self, "older_than", age)

    def chosen(self, action_statuses: tuple[str, ...]) -> tuple[str, ...]:
        """The statuses this filter lets an action that changes `action_statuses`
        touch, in the action's order (empty: the action touches nothing)."""
        if self.statuses is None:
            return action_statuses
        return tuple(s for s in action_statuses if s in self.statuses)


@dataclass(frozen=True)
class Dialect:
    """What differs between the backends in a filter's SQL: the parameter mark, and
    how `finished over N seconds ago` is written (finished_before, with the parameter
    age_param(N))."""

    mark: str
    finished_before: str
    age_param: Callable[[float], object]


def filter_where(dialect: Dialect, f: TaskFilter,
                 statuses: tuple[str, ...]) -> tuple[str, list[object]]:
    """The WHERE conditions (without WHERE) and parameters of the tasks `f` chooses
    among `statuses` (a non-empty tuple of known statuses, put in as literals so the
    planner sees them, as in prune)."""
    conds, params = task_filters(dialect.mark, queue=f.queue, name=f.name, ids=f.ids)
    conds.insert(0, "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")")
    if f.older_than is not None:
        conds.append(dialect.finished_before)
        params.append(dialect.age_param(f.older_than))
    return " AND ".join(conds), params


def key_is_free(dialect: Dialect, f: TaskFilter,
                statuses: tuple[str, ...]) -> tuple[str, list[object]]:
    """The condition (and parameters) that keeps a retry from taking a unique key a
    pending or running task holds (it would be a duplicate, and the unique index would
    refuse the whole UPDATE): such a task is left as it is. Of several tasks with one
    key that the retry takes (statuses, and ids when named), the newest is retried."""
    rivals = "k.status IN (" + ", ".join(f"'{s}'" for s in statuses) + ") AND k.id > tasks.id"
    params: list[object] = []
    if f.ids is not None:
        rivals += (f" AND k.id IN ({', '.join([dialect.mark] * len(f.ids))})"
                   if f.ids else " AND 0 = 1")
        params.extend(f.ids)
    return ("(unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM tasks AS k "
            "WHERE k.unique_key = tasks.unique_key AND (k.status IN ('pending', 'running') "
            f"OR ({rivals}))))"), params


def finished_where(dialect: Dialect, statuses: str | Iterable[str], queue: str | None = None,
                   name: str | None = None, ids: Iterable[int | str] | None = None,
                   older_than: float | None = None) -> tuple[str, list[object]]:
    """The WHERE conditions and parameters of find_finished(): finished tasks of
    `statuses` (ValueError for any other) matching the optional filters."""
    finished_statuses(statuses)
    chosen = tuple(dict.fromkeys(check_statuses(statuses)))
    f = TaskFilter(ids=None if ids is None else tuple(int(i) for i in ids), queue=queue,
                   name=name, older_than=older_than)
    return filter_where(dialect, f, chosen)
