"""Bulk actions of the panel: cancel, retry or purge every task a filter matches.

Each action acts on the statuses it can change (cancel: pending and running;
retry: failed and cancelled; purge: done, failed and cancelled), narrowed by the
filter's own status. The work goes in batches of BATCH ids, newest first, each
its own short transaction, so the daemon's writes interleave with a big purge.
"""

from collections.abc import Callable
from typing import Any

from ..backends.base import Backend
from ..backends.filters import CANCELLABLE, FINISHED, RETRYABLE, TaskFilter

BATCH = 500

ACTIONS: dict[str, dict[str, Any]] = {
    "cancel": {"statuses": CANCELLABLE, "method": "cancel_tasks",
               "verb": "Cancel", "will": "cancel", "done": "cancelled"},
    "retry": {"statuses": RETRYABLE, "method": "retry_tasks",
              "verb": "Retry", "will": "put back to pending", "done": "put back to pending"},
    "purge": {"statuses": FINISHED, "method": "delete_tasks",
              "verb": "Purge", "will": "delete", "done": "deleted"},
}


def statuses(action: str, status: str | None) -> tuple[str, ...]:
    """The statuses `action` touches under a filter of `status` (empty: none)."""
    own = ACTIONS[action]["statuses"]
    if status is None:
        return tuple(own)
    return (status,) if status in own else ()


def count(store: Backend, action: str, f: dict[str, Any]) -> int:
    """How many tasks the action would change now."""
    which = statuses(action, f["status"])
    if not which:
        return 0
    return int(store.count_tasks(queue=f["queue"], name=f["name"], search=f["q"],
                                 statuses=which))


def run(call: Callable[[Callable[[Backend], Any]], Any], action: str, f: dict[str, Any],
        batch: int = BATCH) -> int:
    """Do the action on everything the filter matches; returns how many changed.

    call(fn) runs fn(store) (the panel's store, one batch at a time, so that other
    requests are served between batches).
    """
    which = statuses(action, f["status"])
    if not which:
        return 0
    method: str = ACTIONS[action]["method"]
    changed, below = 0, None
    while True:
        ids: list[int] = call(lambda s: s.match_task_ids(
            which, queue=f["queue"], name=f["name"], search=f["q"], below=below,
            limit=batch))
        if not ids:
            return changed
        chosen = TaskFilter(ids=tuple(ids), statuses=which)
        changed += int(call(lambda s: getattr(s, method)(chosen)))
        below = min(ids)
