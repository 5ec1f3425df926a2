"""PostgreSQL: task dependencies. A dependent task is inserted with waiting_on, the
count of its parents not done yet, and one task_deps row per parent; the claim
(and its partial index) takes only rows with waiting_on = 0.

The enqueue locks its parents FOR SHARE while it counts them, so an outcome of a
parent (an UPDATE of its status) waits for the enqueue's commit. The outcome's
follow-up on the children is a statement of its own after the UPDATE: a new
snapshot, which sees the edges of an enqueue it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from ...taskspec import ENDED_WORDS
from ..enqueue import TASK_COLUMNS, Dependent, cancel_dependents_sql
from .wake import NOTIFY_PAYLOAD

if TYPE_CHECKING:
    from ..stats import Tally
    from .connection import DbSession

_PARENTS = ("SELECT id, status FROM tasks WHERE id = ANY(%s::bigint[]) "
            "ORDER BY id FOR SHARE")

# How many times the parents' locks are asked for without waiting (the waits in
# between grow from 1 ms to 20 ms: about 1 s in all) before one attempt waits.
LOCK_ATTEMPTS = 100

# status, error and finished_at of a task cancelled at once are given; waiting_on too.
INSERT_DEPENDENT = (
    f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)}, waiting_on, status, error, finished_at) "
    "VALUES (%s, %s, %s, %s, %s, "
    "COALESCE(to_timestamp(%s::float8), now() + %s::float8 * interval '1 second'), "
    "%s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END) RETURNING id")

_EDGES = ("INSERT INTO task_deps (child_id, parent_id, position) "
          "SELECT %s, u.parent, u.n FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(parent, n)")

# Wake the daemons for tasks that became claimable (sent at commit).
_WAKE = (f"SELECT pg_notify(%s, {NOTIFY_PAYLOAD.format(queue='t.queue', due='t.run_at')}) "
         f"FROM tasks t WHERE t.id = ANY(%s::bigint[])")

# Parents done: each pending child waits for as many parents fewer; returns the
# children that became claimable.
_RELEASE_CHILDREN = (
    "WITH n AS (SELECT child_id, COUNT(*) AS k FROM task_deps "
    " WHERE parent_id = ANY(%s::bigint[]) GROUP BY child_id), "
    "u AS (UPDATE tasks t SET waiting_on = t.waiting_on - n.k FROM n "
    " WHERE t.id = n.child_id AND t.status = 'pending' RETURNING t.id, t.waiting_on, "
    " t.queue, t.run_at) "
    "SELECT pg_notify(%s, " + NOTIFY_PAYLOAD.format(queue="u.queue", due="u.run_at") + ") "
    "FROM u WHERE u.waiting_on = 0")

# Cancels the pending tasks downstream of the parents (an array parameter).
_CANCEL_DEPENDENTS = cancel_dependents_sql("= ANY(%s::bigint[])", "now()", "%s")

PARENT_RESULTS = ("SELECT t.result FROM task_deps d JOIN tasks t ON t.id = d.parent_id "
                  "WHERE d.child_id = %s ORDER BY d.position")


def insert_dependent(session: Any, params: tuple[Any, ...], parents: Sequence[int],
                     row: Dependent, channel: str) -> int:
    """Insert a task as `row` (an enqueue.Dependent) says, and its edges to `parents`,
    inside the caller's transaction; returns its id. params: INSERT_DEPENDENT's first
    eleven values. A task claimable at once wakes the daemons at the commit."""
    task_id: int = session.run(INSERT_DEPENDENT, params + (
        row.waiting_on, row.status, row.error, row.status == "cancelled")).fetchone()["id"]
    session.run(_EDGES, (task_id, list(parents)))
    if row.claimable:
        session.run(_WAKE, (channel, [task_id]))
    return task_id


def lock_parents(session: Any, parents: list[int]) -> dict[int, str]:
    """{id: status} of the existing parents, locked FOR SHARE until the commit.

    Without waiting (NOWAIT, in a savepoint, asked again while an outcome or a
    claim holds one): waiting for one row while holding the lock of another could
    deadlock with a daemon's outcome batch, which updates its rows in no set order.
    """
    for attempt in range(LOCK_ATTEMPTS):
        try:
            with session.conn.transaction():   # a savepoint: a refusal undoes this only
                rows = session.run(_PARENTS + " NOWAIT", (parents,)).fetchall()
            return {r["id"]: r["status"] for r in rows}
        except psycopg.errors.LockNotAvailable:
            time.sleep(min(0.001 * 1.05 ** attempt, 0.02))
    rows = session.run(_PARENTS, (parents,)).fetchall()
    return {r["id"]: r["status"] for r in rows}


def release_children(session: Any, done_ids: Iterable[int], channel: str) -> None:
    """Count `done_ids` as done for their children (waking the daemons for those now
    claimable); inside the caller's transaction."""
    session.run(_RELEASE_CHILDREN, ([int(i) for i in done_ids], channel), prepare=True)


def cancel_dependents(session: DbSession, parent_ids: Iterable[int], status: str,
                      tally: Tally | None = None) -> list[int]:
    """Cancel every pending task that depends on `parent_ids` (which ended `status`,
    failed or cancelled), transitively; returns their ids. Each is counted as
    cancelled in `tally` (a stats.Tally) when one is given."""
    rows = session.run(
        _CANCEL_DEPENDENTS, ([int(i) for i in parent_ids], ENDED_WORDS[status])).fetchall()
    if tally is not None:
        for r in rows:
            tally.outcome(r["queue"], r["name"], "cancelled")
    return [r["id"] for r in rows]
