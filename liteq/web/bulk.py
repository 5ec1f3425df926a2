"""Bulk actions of the panel: cancel, retry or purge every task a filter matches.

Each action acts on the statuses it can change (cancel: pending and running;
retry: failed and cancelled; purge: done, failed and cancelled), narrowed by the
filter's own status. The work goes in batches of BATCH ids, newest first, each
its own short transaction, so the daemon's writes interleave with a big purge.
"""

from typing import Any, Callable

BATCH = 500

ACTIONS: dict[str, dict[str, Any]] = {
    "cancel": {"statuses": ("pending", "running"), "method": "cancel_many",
               "verb": "Cancel", "will": "cancel", "done": "cancelled"},
    "retry": {"statuses": ("failed", "cancelled"), "method": "retry_many",
              "verb": "Retry", "will": "put back to pending", "done": "put back to pending"},
    "purge": {"statuses": ("done", "failed", "cancelled"), "method": "delete_many",
              "verb": "Purge", "will": "delete", "done": "deleted"},
}


def statuses(action: str, status: str | None) -> tuple[str, ...]:
    """The statuses `action` touches under a filter of `status` (empty: none)."""
    own = ACTIONS[action]["statuses"]
    if status is None:
        return tuple(own)
    return (status,) if status in own else ()


def count(store: Any, action: str, f: dict[str, Any]) -> int:
    """How many tasks the action would change now."""
    which = statuses(action, f["status"])
    if not which:
        return 0
    return int(store.count_tasks(queue=f["queue"], name=f["name"], search=f["q"],
                                 statuses=which))


def run(call: Callable[[Callable[[Any], Any]], Any], action: str, f: dict[str, Any],
        batch: int = BATCH) -> int:
    """Do the action on everything the filter matches; returns how many changed.

    call(fn) runs fn(store) (the panel's store, one batch at a time, so that other
    requests are served between batches).
    """
    which = statuses(action, f["status"])
    if not which:
        return 0
    method = ACTIONS[action]["method"]
    changed, below = 0, None
    while True:
        ids = call(lambda s: s.match_task_ids(which, queue=f["queue"], name=f["name"],
                                              search=f["q"], below=below, limit=batch))
        if not ids:
            return changed
        changed += call(lambda s: getattr(s, method)(ids))
        below = min(ids)
