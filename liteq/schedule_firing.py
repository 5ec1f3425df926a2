"""Firing due schedules: the part of the cron schedules that the scheduler loop runs.

liteq.scheduler (registration, listing, switching) re-exports fire_due and
next_fire_time; liteq.scheduler_loop calls them, so the loop does not import the
module that lazily exports the loop.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .backends import get_backend
from .core import TASK_REGISTRY
from .cron import latest_before, occurrences, zone_of
from .taskspec import NewTask, TaskOptions
from .timeutil import now, to_iso

if TYPE_CHECKING:
    from .backends.base import Backend

# catchup="all" enqueues at most this many missed occurrences per fire (the most
# recent ones), so a long outage of a per-second schedule cannot flood the queue.
MAX_CATCHUP = 100


# ---- firing -----------------------------------------------------------------

def _new_task(row: dict[str, Any], run_at: float) -> NewTask:
    """The task a fire inserts: the task's own options unless the schedule overrides."""
    registered = TASK_REGISTRY.get(row["task_name"])
    options = registered.options if registered is not None else TaskOptions()
    options = options.with_overrides(queue=row["queue"], priority=row["priority"],
                                     max_retries=row["max_retries"])
    return NewTask(row["task_name"], row["payload"], options, run_at=run_at)


def _plan(row: dict[str, Any], at: float) -> tuple[list[float], float]:
    """(run times to enqueue, new next_run) for a due schedule row."""
    expr, tz, name, due = row["cron_expr"], row["tz"], row["name"], row["next_run"]
    zone = zone_of(tz)
    new_next = next(occurrences(expr, zone, at, name))
    if row["catchup"] == "all":
        runs: list[float] = [due]
        for t in occurrences(expr, zone, due, name):
            if t > at:
                break
            if len(runs) >= MAX_CATCHUP:
                runs = latest_before(expr, tz, new_next, due, MAX_CATCHUP, name)
                break
            runs.append(t)
        return runs, new_next
    # coalesce: one run, stamped with the latest occurrence it stands for.
    latest = due
    following = next(occurrences(expr, zone, due, name))
    if following <= at:
        found = latest_before(expr, tz, new_next, due, 1, name)
        latest = found[-1] if found else due
    return [latest], new_next


def fire_due(backend: Backend | None = None, at: datetime | float | None = None,
             log: Callable[..., object] | None = None) -> list[int]:
    """Fire every enabled schedule whose next run has come; returns the new task ids.

    For each due schedule the next run moves to the first occurrence after `at`
    (default now) and its task is enqueued, both in one compare-and-set
    transaction: a schedule another scheduler fired first is skipped. Each task's
    run_at is the occurrence it stands for. A schedule whose time cannot be
    computed (a corrupt expression or an unknown zone in its row) is parked with
    no next run, and reported; registering or enabling it again revives it.

    log, when given, is called as log(event, **fields) with event
    "schedule.fired" (schedule, schedule_id, name: the task's name, as task events
    say it, task_ids, occurrences: epoch seconds, next_run: an ISO-8601 time) or
    "schedule.error" (schedule, schedule_id, error). Without it
    fires are silent and errors go to stderr.
    """
    backend = backend or get_backend()
    if at is None:
        at = now()
    elif isinstance(at, datetime):
        at = at.timestamp()
    fired: list[int] = []
    for row in backend.due_schedules(at):
        try:
            runs, new_next = _plan(row, at)
        except ValueError as exc:
            if backend.park_schedule(row["id"], row["next_run"]):
                message = (f"{exc}; schedule parked (no next run) until it is "
                           f"registered or enabled again")
                if log is not None:
                    log("schedule.error", schedule=row["name"], schedule_id=row["id"],
                        error=message)
                else:
                    print(f"liteq scheduler: schedule {row['name']!r}: {message}",
                          file=sys.stderr, flush=True)
            continue
        ids = backend.fire_schedule(row["id"], row["next_run"], new_next,
                                  [_new_task(row, t) for t in runs])
        if ids is None:
            continue  # another scheduler fired this occurrence
        fired.extend(ids)
        if log is not None:
            log("schedule.fired", schedule=row["name"], schedule_id=row["id"],
                name=row["task_name"], task_ids=ids, occurrences=runs,
                next_run=to_iso(new_next))
    if fired:
        backend.notify()
    return fired


def next_fire_time(backend: Backend | None = None) -> float | None:
    """The earliest next run of any enabled schedule (epoch seconds), or None."""
    backend = backend or get_backend()
    return backend.next_schedule_time()
