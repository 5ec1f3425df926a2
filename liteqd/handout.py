"""Which child gets which claimed task (pure: no sockets, no database).

A pool of one-task children gives each task to the least loaded child, so the best
task goes to an idle child. A pool of children that run several coroutines at once
(--async-concurrency N > 1) counts slots: a coroutine task takes one of a child's N
and goes to the child with the most free; a sync task takes all N (it runs alone in
its child) and goes to a child with nothing in hand when there is one, else behind
the coroutines of the child with the most free slots (which then starts nothing more
until it has run it). A task that fits nowhere goes back to pending.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import protocol
from .pool import ChildHandle, TaskRun

Row = Mapping[str, Any]


def least_loaded(rows: Sequence[Row], children: Sequence[ChildHandle]) -> dict[int, list[Row]]:
    """{child pid: rows} giving each row to the child holding the fewest tasks (the
    first of them on a tie), counting those given before it."""
    batches: dict[int, list[Row]] = {c.pid: [] for c in children}
    for row in rows:
        child = min(children, key=lambda c: len(c.inflight) + len(batches[c.pid]))
        batches[child.pid].append(row)
    return batches


def by_slots(rows: Sequence[Row], room: dict[int, int], slots: int,
             is_coroutine: Callable[[str], bool]
             ) -> tuple[dict[int, list[tuple[Row, bool]]], list[int]]:
    """({child pid: [(row, coroutine)]}, unplaced task ids) for children of `slots`
    coroutine slots each, with `room` free (changed as tasks are placed)."""
    batches: dict[int, list[tuple[Row, bool]]] = {pid: [] for pid in room}
    unplaced: list[int] = []
    for row in rows:
        coroutine = is_coroutine(row["name"])
        pid = None
        if not coroutine:
            pid = next((p for p, r in room.items() if r == slots), None)
        if pid is None and room:
            pid = max(room, key=room.__getitem__)
            if room[pid] <= 0:
                pid = None
        if pid is None:
            unplaced.append(row["id"])
            continue
        room[pid] = room[pid] - 1 if coroutine else 0
        batches[pid].append((row, coroutine))
    return batches, unplaced


def task_run(row: Row, default_timeout: float | None, coroutine: bool = False) -> TaskRun:
    """The TaskRun of a claimed row."""
    limit = row["timeout"] if row["timeout"] is not None else default_timeout
    return TaskRun(row["id"], row["name"], row["queue"], row["attempts"],
                   row["max_retries"], limit, row["retry_delay"], row["retry_backoff"],
                   row["retry_max_delay"], coroutine=coroutine)


def task_message(run: TaskRun, row: Row, start_by: float) -> protocol.TaskMessage:
    """The message that hands a claimed row to a child."""
    return protocol.task(run.id, run.name, row["payload"], run.limit, run.queue,
                         run.attempts, run.max_retries, row["created_at"], start_by)
