"""PostgreSQL: how many tasks each queue has in each status, exact or estimated.

An exact COUNT(*) reads every row it counts (about 0.2 s per million rows on a
small machine, and more as the table grows), while liteqctl status and the
panel's overview ask for the counts again and again. What they need of a group
of a million tasks is its size to a few digits, so queue_stats(estimate=True)
counts each (queue, status) group exactly up to a limit and estimates only the
groups above it:

1. One statement reads at most limit + 1 rows of each group through the partial
   indexes: the claimable pending tasks of each queue (the queues found by a
   skip scan of tasks_claim) in claim order, and the rows of each other kind
   (the pending tasks waiting for parents in tasks_waiting, tasks_running,
   tasks_finished newest first). A group under the limit is exact; when all
   are, the answer is the exact one. A kind other than claimable pending is
   read as one scan for all its queues, so when it passes the limit, every
   queue's count of it is a lower bound (and a queue none of whose rows are
   among those read is left out). Waiting tasks count as pending.
2. The groups over the limit share the rest of the table: its live rows as
   PostgreSQL's statistics count them (n_live_tup, kept current as rows are
   inserted and deleted) minus the exact groups. With several such groups, the
   planner's estimate for each (which the extended statistics
   tasks_queue_status make good for a queue/status pair) sets its share. An
   estimate is never below the rows actually seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: (queue, status)
Group = tuple[str, str]

# A group of more tasks than this is estimated. Counting this many through an
# index takes a few milliseconds; the overview counts several groups each time.
EXACT_LIMIT = 50_000

# Claimable pending tasks: tasks_claim's predicate, repeated exactly.
_CLAIMABLE = "status = 'pending' AND waiting_on = 0"

# The kinds read as one scan for all their queues: (kind, its rows, the order of
# its partial index, so the scan stops at the limit instead of reading every row).
# "waiting" is pending tasks waiting for parents (tasks_waiting).
_SCANS = (("waiting", "status = 'pending' AND waiting_on > 0", "queue"),
          ("running", "status = 'running'", "worker_id"),
          ("done", "status = 'done'", "finished_at DESC NULLS LAST, id DESC"),
          ("failed", "status = 'failed'", "finished_at DESC NULLS LAST, id DESC"),
          ("cancelled", "status = 'cancelled'", "finished_at DESC NULLS LAST, id DESC"))

# The kinds that are counted as another status.
_COUNTED_AS = {"waiting": "pending"}


def bounded_counts_sql(limit: int) -> str:
    """The statement of step 1: rows (queue, status, count), each count at most
    limit + 1 (status 'pending': claimable ones, per queue; the other kinds, status
    'waiting' included: over all their queues)."""
    n = int(limit) + 1
    parts = [
        "SELECT p.queue, 'pending' AS status, c.n AS count FROM pending_queues p "
        f"CROSS JOIN LATERAL (SELECT count(*) AS n FROM (SELECT 1 FROM tasks "
        f"WHERE {_CLAIMABLE} AND queue = p.queue "
        f"ORDER BY priority DESC, run_at, id LIMIT {n}) s) c WHERE p.queue IS NOT NULL"]
    for kind, where, order in _SCANS:
        parts.append(
            f"SELECT queue, '{kind}', count(*) FROM (SELECT queue FROM tasks "
            f"WHERE {where} ORDER BY {order} LIMIT {n}) s GROUP BY queue")
    # The skip scan: each step finds the next queue name in tasks_claim with one probe.
    return ("WITH RECURSIVE pending_queues(queue) AS ("
            f"SELECT min(queue) FROM tasks WHERE {_CLAIMABLE} UNION ALL "
            f"SELECT (SELECT min(queue) FROM tasks WHERE {_CLAIMABLE} AND queue > q.queue) "
            "FROM pending_queues q WHERE q.queue IS NOT NULL) "
            + " UNION ALL ".join(parts))


# Set (transaction-local) before the statement of step 1. Every part of it is
# meant as an ordered scan of a partial index that stops at the limit; without
# statistics (a table just filled, before autovacuum analyzes it) the planner
# guesses a few rows per group and prefers a bitmap scan and a sort, which read a
# million rows to keep 50,001 of them (0.5 s instead of 10 ms). JIT compiling
# (its cost threshold is passed with a million rows) costs more than the scans.
INDEX_SCANS_ONLY = ("SELECT set_config('enable_seqscan', 'off', true), "
                    "set_config('enable_bitmapscan', 'off', true), "
                    "set_config('enable_sort', 'off', true), set_config('jit', 'off', true)")

# What undoes INDEX_SCANS_ONLY inside a caller's batch(), whose transaction goes on.
PLANNER_DEFAULTS = "RESET enable_seqscan; RESET enable_bitmapscan; RESET enable_sort; RESET jit"

LIVE_ROWS = "SELECT pg_stat_get_live_tuples('tasks'::regclass) AS n"
PLANNED_ROWS = "EXPLAIN (FORMAT JSON) SELECT 1 FROM tasks"
PLANNED_PAIR = "EXPLAIN (FORMAT JSON) SELECT 1 FROM tasks WHERE queue = %s AND status = %s"


def over_limit(rows: Sequence[Mapping[str, Any]], limit: int) -> set[Group]:
    """The (queue, status) groups whose counts are lower bounds, from step 1's rows
    (a group of pending tasks is one when its claimable or its waiting part is)."""
    totals: dict[str, int] = {}
    for r in rows:
        if r["status"] != "pending":
            totals[r["status"]] = totals.get(r["status"], 0) + r["count"]
    return {(r["queue"], _COUNTED_AS.get(r["status"], r["status"])) for r in rows
            if (r["count"] if r["status"] == "pending" else totals[r["status"]]) > limit}


def spread(seen: Mapping[Group, int], over: set[Group], table_rows: int,
           weights: Mapping[Group, int]) -> dict[Group, int]:
    """Step 2: {group: estimate} for the groups in `over`.

    seen: {group: rows counted}; table_rows: the table's live rows; weights:
    {group: the planner's estimate} (only needed when several groups are over).
    """
    exact = sum(n for g, n in seen.items() if g not in over)
    rest = max(table_rows - exact, 0)
    if len(over) == 1:
        (group,) = over
        return {group: max(seen[group], rest)}
    total_weight = sum(max(weights.get(g, 0), 1) for g in over)
    return {g: max(seen[g], round(rest * max(weights.get(g, 0), 1) / total_weight))
            for g in over}


def estimate_rows(rows: Sequence[Mapping[str, Any]], limit: int, table_rows: Callable[[], int],
                  planned: Callable[[str, str], int]) -> list[dict[str, Any]]:
    """[{queue, status, count, estimated}] from step 1's rows: exact under the limit,
    spread() over it. table_rows() and planned(queue, status) are called only when
    some group is over the limit."""
    over = over_limit(rows, limit)
    seen: dict[Group, int] = {}
    for r in rows:
        status: str = r["status"]
        group = (r["queue"], _COUNTED_AS.get(status, status))
        seen[group] = seen.get(group, 0) + r["count"]
    estimates: dict[Group, int] = {}
    if over:
        weights = {g: planned(*g) for g in over} if len(over) > 1 else {}
        estimates = spread(seen, over, table_rows(), weights)
    out = [{"queue": q, "status": s, "count": estimates.get((q, s), n),
            "estimated": (q, s) in over} for (q, s), n in seen.items()]
    out.sort(key=lambda r: (r["queue"], r["status"]))
    return out
