"""SQLite: task dependencies. A dependent task is inserted with waiting_on, the
count of its parents not done yet (decided by liteq.backends.enqueue.dependent_row),
and one task_deps row per parent; the claim takes only rows with waiting_on = 0.
Everything here runs inside the caller's write transaction (BEGIN IMMEDIATE), so
no outcome can slip in between a count and the row it guards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ...taskspec import ENDED_WORDS
from ..enqueue import cancel_dependents_sql

if TYPE_CHECKING:
    from ..stats import Tally

_CHUNK = 500  # ids per statement

# Cancels the pending tasks downstream of the parents ({marks}: their placeholders).
_CANCEL_DEPENDENTS = cancel_dependents_sql("IN ({marks})", "?", "?")

# One parent done: each of its pending children waits for one parent fewer.
_RELEASE_CHILDREN = (
    "UPDATE tasks SET waiting_on = waiting_on - n.k FROM (SELECT child_id, COUNT(*) AS k "
    "FROM task_deps WHERE parent_id IN ({marks}) GROUP BY child_id) AS n "
    "WHERE tasks.id = n.child_id AND tasks.status = 'pending' RETURNING tasks.waiting_on")


def _chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    ids = list(ids)
    for start in range(0, len(ids), _CHUNK):
        yield ids[start:start + _CHUNK]


def parent_statuses(conn: Any, parents: Sequence[int]) -> dict[int, str]:
    """{id: status} of those of `parents` that exist (the caller's write lock keeps
    them from changing until its commit)."""
    marks = ",".join("?" * len(parents))
    return dict(conn.execute(f"SELECT id, status FROM tasks WHERE id IN ({marks})",
                             list(parents)).fetchall())


def add_edges(conn: Any, child_id: int, parents: Sequence[int]) -> None:
    """The task_deps rows of a new task waiting for `parents` (positions in order)."""
    conn.executemany("INSERT INTO task_deps (child_id, parent_id, position) VALUES (?,?,?)",
                     [(child_id, p, n) for n, p in enumerate(parents)])


def release_children(conn: Any, done_ids: Iterable[int]) -> bool:
    """Count `done_ids` as done for their children; True when one became claimable."""
    ready = False
    for chunk in _chunks(done_ids):
        marks = ",".join("?" * len(chunk))
        left = conn.execute(_RELEASE_CHILDREN.format(marks=marks), chunk).fetchall()
        ready = ready or any(r[0] == 0 for r in left)
    return ready


def cancel_dependents(conn: Any, parent_ids: Iterable[int], status: str, t: float,
                      tally: Tally | None = None) -> list[int]:
    """Cancel every pending task that depends on `parent_ids` (which ended `status`,
    failed or cancelled), transitively; returns their ids. Each is counted as
    cancelled in `tally` (a stats.Tally) when one is given."""
    ended = ENDED_WORDS[status]
    cancelled: list[int] = []
    for chunk in _chunks(parent_ids):
        marks = ",".join("?" * len(chunk))
        for r in conn.execute(_CANCEL_DEPENDENTS.format(marks=marks), (*chunk, t, ended)):
            cancelled.append(r[0])
            if tally is not None:
                tally.outcome(r[1], r[2], "cancelled")
    return cancelled


def forget_children(conn: Any, child_ids: Iterable[int]) -> None:
    """Delete the edges of these (deleted) tasks."""
    for chunk in _chunks(child_ids):
        conn.execute(f"DELETE FROM task_deps WHERE child_id IN ({','.join('?' * len(chunk))})",
                     chunk)


def parent_results(conn: Any, task_id: int) -> list[str | None]:
    """The stored results (JSON text) of a task's parents, in depends_on order."""
    return [r[0] for r in conn.execute(
        "SELECT t.result FROM task_deps d JOIN tasks t ON t.id = d.parent_id "
        "WHERE d.child_id = ? ORDER BY d.position", (task_id,))]
