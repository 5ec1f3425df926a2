"""SQL pieces both backends build the same way (only the driver's placeholder differs)."""


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
