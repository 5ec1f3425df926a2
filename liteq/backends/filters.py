"""SQL pieces both backends build the same way (only the driver's placeholder differs)."""

from collections.abc import Iterable


def equal_filters(placeholder: str, **columns: object) -> tuple[str, list[object]]:
    """A WHERE clause and its parameters for the columns given a value (None = any);
    placeholder is the driver's parameter mark ('?' or '%s')."""
    where = [f"{col} = {placeholder}" for col, val in columns.items() if val is not None]
    params = [val for val in columns.values() if val is not None]
    return ("WHERE " + " AND ".join(where)) if where else "", params


def finished_status(status: str) -> str:
    """`status` when it is a finished one (done, failed, cancelled), else ValueError.

    Prune puts it in its SQL as a literal, so the planner can prove the partial index
    of finished tasks applies (a parameter would mean a scan of the table)."""
    if status not in ("done", "failed", "cancelled"):
        raise ValueError(f"prune takes a finished status (done, failed or cancelled), "
                         f"not {status!r}")
    return status


# Prune keeps a task that a pending or running task still depends on (the child
# waits for it, or reads its result with parent_results()).
PRUNABLE = ("NOT EXISTS (SELECT 1 FROM task_deps AS d JOIN tasks AS c ON c.id = d.child_id "
            "WHERE d.parent_id = tasks.id AND c.status IN ('pending', 'running'))")


# A retried unique task must not take a key that a pending or running task holds
# (it would be a duplicate, and the unique index would refuse the whole UPDATE);
# such a task is left as it is. Of several failed tasks with one key, a bulk retry
# retries the newest only.
KEY_IS_FREE = ("(unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM tasks AS k "
               "WHERE k.unique_key = tasks.unique_key AND k.status IN ('pending', 'running')))")
KEY_IS_FREE_FOR_NEWEST = (
    "(unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM tasks AS k "
    "WHERE k.unique_key = tasks.unique_key AND (k.status IN ('pending', 'running') "
    "OR (k.status = 'failed' AND k.id > tasks.id))))")


FINISHED = ("done", "failed", "cancelled")


def finished_statuses(statuses: str | Iterable[str]) -> str:
    """The finished statuses (done, failed, cancelled) as SQL literals: "'done', 'failed'"
    (ValueError for any other). Literals, as in prune, so the partial index of finished
    tasks applies."""
    chosen = (statuses,) if isinstance(statuses, str) else tuple(statuses)
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
        known = ("pending", "running") + FINISHED
        if not statuses or any(s not in known for s in statuses):
            raise ValueError(f"statuses must be among {known}, got {statuses!r}")
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


# A retried unique task must not take a key that a pending or running task holds;
# of several finished tasks with one key, the newest is retried (as KEY_IS_FREE_FOR_NEWEST).
KEY_IS_FREE_FOR_NEWEST_FINISHED = (
    "(unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM tasks AS k "
    "WHERE k.unique_key = tasks.unique_key AND (k.status IN ('pending', 'running') "
    "OR (k.status IN ('failed', 'cancelled') AND k.id > tasks.id))))")
