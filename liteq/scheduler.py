"""Cron schedules: registered once per name, fired exactly once per occurrence.

    from liteq import task, register_schedule
    from liteq.scheduler import Scheduler

    @task()
    def daily_backup(): ...

    register_schedule(daily_backup, "0 2 * * *")   # at every import: still one row
    Scheduler(check_interval=60).run()              # or let liteqd fire it

Schedules live in the `schedules` table. Each fire is one transaction that moves
the schedule's next_run from the value this scheduler read to the next one and
inserts the task(s) (a compare-and-set in the backend), so any number of
schedulers and daemons sharing a database enqueue each occurrence once.

The cron maths is in liteq.cron; the standalone loop (`Scheduler`, `liteq
scheduler`) in liteq.scheduler_loop and liteqd.scheduler_cmd.

Cron syntax and time zones: see liteq.cron.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from .backends import get_backend
from .core import Task
from .errors import NotATaskError
from .cron import check_tz, next_after, normalize_cron
from .cron import (calculate_next_run, local_zone, next_run_after,  # noqa: F401 - public
                   parse_cron)
from .serialization import decode_payload, encode_payload
from .taskspec import MAX_RETRIES, check_name, check_number, check_priority
from .schedule_firing import MAX_CATCHUP, fire_due, next_fire_time  # noqa: F401 - public
from .timeutil import now, to_iso

if TYPE_CHECKING:
    from .backends.base import Backend

CATCHUP_MODES = ("coalesce", "all")



# (identity, schedule name) -> what this process registered under that name.
_registered: dict[tuple[str | None, str], tuple[Any, ...]] = {}


# ---- registration -------------------------------------------------------------

def _task_name(task: object) -> str:
    if isinstance(task, Task):
        return task.name
    if isinstance(task, str):
        if not task.strip():
            raise ValueError("task name must not be empty")
        return task
    raise NotATaskError(f"{task!r} is not a LiteQ task: pass a function decorated with @task "
                        f"or a registered task name")


def _check_int(label: str, value: object, minimum: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label} must be an integer, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{label} must be >= {minimum}, got {value!r}")
    return value


def register_schedule(task: Any, cron: str, *args: Any, name: str | None = None,
                      queue: str | None = None, priority: int | None = None,
                      max_retries: int | None = None, tz: str | None = None,
                      enabled: bool | None = None, catchup: str = "coalesce",
                      **kwargs: Any) -> int:
    """Run `task(*args, **kwargs)` on the cron schedule `cron`; returns the schedule id.

    Idempotent by name: call it at import in every process and the database keeps
    one schedule per name. When the expression, zone, arguments or options
    change, the row is updated in place; its next run is recomputed only when the
    expression or zone changed, so re-registering never skips or repeats a run.

    task:      a @task function or a task name (one this process does not know
               is accepted; a worker that lacks it fails the task as unknown).
    cron:      a croniter expression; see this module's docstring. Invalid ones
               raise ValueError saying what is wrong.
    name:      the schedule's name, default the task name. Two schedules of one
               task need distinct names.
    queue, priority, max_retries: override the task's own settings (None: the
               task's, looked up when each run is enqueued).
    tz:        IANA zone name the expression is read in; None: the machine's zone.
    enabled:   None (default) leaves an existing schedule's state alone, so a
               schedule an operator disabled stays disabled when the app
               restarts; a new one starts enabled. True enables it (from now,
               with no backlog); False keeps the row but does not fire it.
    catchup:   after downtime, "coalesce" (default) enqueues one run for all the
               missed occurrences; "all" enqueues one per missed occurrence (at
               most MAX_CATCHUP, the latest ones).
    The words above are reserved; every other keyword is an argument of the task.
    Arguments must be JSON values (TypeError names one that is not).
    """
    task_name = _task_name(task)
    if name is None:
        name = task_name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"schedule name must be a non-empty string, got {name!r}")
    check_name("task name", task_name)
    check_name("schedule name", name)
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValueError(f"queue must be a non-empty string, got {queue!r}")
    if queue is not None:
        check_name("queue", queue, queue=True)
    priority = _check_int("priority", priority)
    if priority is not None:
        check_priority(priority)
    max_retries = _check_int("max_retries", max_retries, minimum=0)
    if max_retries is not None:
        check_number("max_retries", max_retries, maximum=MAX_RETRIES)
    if catchup not in CATCHUP_MODES:
        raise ValueError(f"catchup must be one of {', '.join(CATCHUP_MODES)}, got {catchup!r}")
    tz = check_tz(tz)
    expr = normalize_cron(cron)
    next_run = next_after(expr, tz, now(), name)  # also validates the expression
    payload = encode_payload(task_name, args, kwargs)

    backend = get_backend()
    key = (backend.identity, name)
    mine = (task_name, expr, tz, payload, queue, priority, max_retries, catchup)
    previous = _registered.get(key)
    if previous is not None and previous != mine:
        warnings.warn(
            f"schedule {name!r} was registered again in this process with different "
            f"settings; the last registration replaces the first. To run {task_name!r} "
            f"on two schedules, give each a distinct name=", RuntimeWarning, stacklevel=2)
    _registered[key] = mine

    existing = backend.get_schedule(name) if enabled else None
    schedule_id = backend.upsert_schedule(name, task_name, expr, payload, queue, priority,
                                        max_retries, tz, catchup,
                                        None if enabled is None else bool(enabled), next_run)
    if existing is not None and not existing["enabled"]:
        # Re-enabled by the code: start from now rather than fire the backlog.
        backend.set_schedule_enabled(schedule_id, True, next_run)
    return schedule_id


# ---- listing and switching ----------------------------------------------------

def _schedule_dict(row: dict[str, Any]) -> dict[str, Any]:
    try:
        args, kwargs = decode_payload(row["payload"])
    except ValueError:
        args, kwargs = None, None
    return {
        "id": row["id"],
        "name": row["name"],
        "task_name": row["task_name"],
        "cron_expr": row["cron_expr"],
        "args": args,
        "kwargs": kwargs,
        "payload": row["payload"],
        "queue": row["queue"],
        "priority": row["priority"],
        "max_retries": row["max_retries"],
        "tz": row["tz"],
        "catchup": row["catchup"],
        "enabled": bool(row["enabled"]),
        "next_run": to_iso(row["next_run"]),
        "last_run": to_iso(row["last_run"]),
        "next_run_ts": row["next_run"],
        "last_run_ts": row["last_run"],
        "created_at": to_iso(row["created_at"]),
        "updated_at": to_iso(row["updated_at"]),
    }


def list_schedules(backend: Backend | None = None) -> list[dict[str, Any]]:
    """Every schedule as a dict, by name.

    Keys: id, name, task_name, cron_expr, args, kwargs, payload (their JSON
    text, as liteq 0.2 gave it), queue, priority,
    max_retries (None: the task's own), tz (None: the machine's zone), catchup,
    enabled (bool), next_run and last_run (ISO-8601 strings or None),
    next_run_ts and last_run_ts (epoch seconds or None), created_at, updated_at.
    """
    backend = backend or get_backend()
    return [_schedule_dict(r) for r in backend.list_schedules()]


def _find(backend: Backend, name_or_id: object) -> dict[str, Any] | None:
    if isinstance(name_or_id, bool) or not isinstance(name_or_id, (int, str)):
        raise TypeError(f"give a schedule name or id, not {name_or_id!r}")
    if isinstance(name_or_id, str):
        row = backend.get_schedule(name_or_id)
        if row is not None or not name_or_id.strip().isdigit():
            return row
        name_or_id = int(name_or_id)
    for row in backend.list_schedules():
        if row["id"] == name_or_id:
            return row
    return None


def enable_schedule(name_or_id: str | int, backend: Backend | None = None) -> bool:
    """Enable a schedule by name or id; False when there is no such schedule.

    A schedule that was disabled starts again from now: its next run is the first
    occurrence after now, so a long pause does not fire a backlog.
    """
    backend = backend or get_backend()
    row = _find(backend, name_or_id)
    if row is None:
        return False
    next_run = None
    if not row["enabled"] or row["next_run"] is None:
        next_run = next_after(row["cron_expr"], row["tz"], now(), row["name"])
    return backend.set_schedule_enabled(row["id"], True, next_run)


def disable_schedule(name_or_id: str | int, backend: Backend | None = None) -> bool:
    """Disable a schedule by name or id (it stays listed); False when there is none."""
    backend = backend or get_backend()
    row = _find(backend, name_or_id)
    if row is None:
        return False
    return backend.set_schedule_enabled(row["id"], False)


def run_schedule_now(name_or_id: str | int, backend: Backend | None = None) -> bool:
    """Make an enabled schedule due now, by name or id: the scheduler (liteqd's, or
    liteq.scheduler_loop) fires it at once as at any occurrence, with the schedule's
    arguments and the task's own queue, priority and retries (known where the app
    is loaded, which the caller, a web panel say, need not be). Its next run after
    that is the one it had. The daemon is woken. False when there is no such
    schedule; ValueError when it is disabled (enable it first)."""
    backend = backend or get_backend()
    row = _find(backend, name_or_id)
    if row is None:
        return False
    if not row["enabled"]:
        raise ValueError(f"schedule {row['name']!r} is disabled; enable it to run it")
    changed = backend.set_schedule_enabled(row["id"], True, now())
    backend.notify()
    return changed


def remove_schedule(name_or_id: str | int, backend: Backend | None = None) -> bool:
    """Delete a schedule by name or id; False when there is none. Tasks it already
    enqueued are untouched. An app that registers it at import brings it back:
    remove the register_schedule call too (or disable it instead)."""
    backend = backend or get_backend()
    row = _find(backend, name_or_id)
    if row is None:
        return False
    _registered.pop((backend.identity, row["name"]), None)
    return backend.delete_schedule(row["id"])


def __getattr__(name: str) -> Any:
    # The standalone loop lives in liteq.scheduler_loop, loaded on first use (the
    # `liteq scheduler` command around it is the daemon's: liteqd.scheduler_cmd).
    if name == "Scheduler":
        from .scheduler_loop import Scheduler
        return Scheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["register_schedule", "fire_due", "next_fire_time", "list_schedules",
           "enable_schedule", "disable_schedule", "remove_schedule", "next_run_after",
           "local_zone", "parse_cron", "calculate_next_run", "CATCHUP_MODES", "MAX_CATCHUP"]
