"""What a new task is made of: its options (with their defaults, written only here)
and the row a backend inserts.

`@task(...)` keeps a TaskOptions; `.delay()`, `.apply_async()`, `.map()` and the
scheduler turn it into NewTask rows (or one NewTasks batch), and every backend
inserts exactly these fields.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, replace
from collections.abc import Sequence
from typing import Any, cast

from .codec import to_json

#: The longest unique_key accepted (it is stored in a unique index).
MAX_UNIQUE_KEY = 512


def check_number(label: str, value: object, allow_none: bool = False,
                 allow_zero: bool = True) -> None:
    """Raise TypeError/ValueError unless `value` is a non-negative number (or None)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{label} must be a number, not {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{label} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_unique_key(key: object) -> None:
    """Raise TypeError/ValueError unless `key` is a usable unique_key: a non-empty
    string of at most MAX_UNIQUE_KEY characters."""
    if not isinstance(key, str):
        raise TypeError(f"unique_key must be a string, not {type(key).__name__}")
    if not key.strip():
        raise ValueError(f"unique_key must be a non-empty string, got {key!r}")
    if len(key) > MAX_UNIQUE_KEY:
        raise ValueError(f"unique_key is {len(key):,} characters long, over the limit of "
                         f"{MAX_UNIQUE_KEY}; pass a hash of it instead")


def derive_unique_key(task_name: str, args: Any, kwargs: Any) -> str:
    """The unique_key of @task(unique=True): the task's name and a sha256 of its
    arguments' JSON (keys sorted, so keyword order does not matter)."""
    call = to_json([list(args), kwargs])  # datetime, UUID, ... in their stored form
    try:
        text = json.dumps(call, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False)
    except TypeError:
        # A dict with keys of mixed types cannot be sorted; its order stays as given.
        text = json.dumps(call, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{task_name}:{digest}"


def check_depends_on(depends_on: Any) -> tuple[int, ...]:
    """The parent ids of depends_on as a tuple of ints, duplicates dropped (order kept);
    TypeError/ValueError for anything but a list or tuple of task ids."""
    if isinstance(depends_on, (str, bytes)) or not isinstance(depends_on, (list, tuple)):
        raise TypeError(f"depends_on must be a list of task ids, not "
                        f"{type(depends_on).__name__}")
    parents = cast("Sequence[object]", depends_on)
    for parent in parents:
        if isinstance(parent, bool) or not isinstance(parent, int):
            raise TypeError(f"depends_on holds task ids (ints), not {parent!r}")
        if parent <= 0:
            raise ValueError(f"depends_on: {parent!r} is not a task id")
    # Plain ints: a TaskHandle is an int subclass, and drivers dump a list by one type.
    return tuple(dict.fromkeys(int(cast(int, parent)) for parent in parents))


def missing_parents_error(missing: Any) -> ValueError:
    """The error of a depends_on naming tasks that do not exist (nothing was written)."""
    listed = ", ".join(str(i) for i in missing)
    return ValueError(f"depends_on: no task with id {listed}; nothing was enqueued")


#: How the error of a cancelled dependent tells its parent's end.
ENDED_WORDS = {"failed": "failed", "cancelled": "was cancelled"}


def parent_ended_text(parent_id: int, status: str) -> str:
    """The error of a task cancelled because a task it depends on (directly or
    through others) ended failed or cancelled."""
    return f"cancelled: it depends on task {parent_id}, which {ENDED_WORDS[status]}"


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task runs. These defaults are @task's defaults.

    max_retries counts retries after the first attempt (0 runs once). Failed
    attempts wait retry_delay * retry_backoff**(attempt-1) seconds, at most
    retry_max_delay. timeout is the time limit in seconds (None: the daemon's).
    """
    queue: str = "default"
    priority: int = 0
    max_retries: int = 3
    timeout: float | None = None
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    retry_max_delay: float = 300.0

    @classmethod
    def build(cls, **options: Any) -> TaskOptions:
        """Validated options; an unknown keyword is a TypeError naming it."""
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown task option(s) {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join(sorted(OPTION_NAMES))}")
        for key, value in options.items():
            if value is None and key != "timeout":
                raise (ValueError if key == "queue" else TypeError)(
                    f"{key} must be {'a non-empty string' if key == 'queue' else 'a number'}, "
                    f"not None")
        return cls().with_overrides(**options)

    def with_overrides(self, **changes: Any) -> TaskOptions:
        """A copy with the given options changed (None leaves one as it is), validated."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        queue = changes.get("queue", self.queue)
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue must be a non-empty string, got {queue!r}")
        for key in ("max_retries", "retry_delay", "retry_backoff", "retry_max_delay"):
            if key in changes:
                check_number(key, changes[key])
        if "timeout" in changes:
            check_number("timeout", changes["timeout"], allow_zero=False)
        if "priority" in changes:
            value = changes["priority"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"priority must be a number, not {type(value).__name__}")
            changes["priority"] = int(value)
        if "max_retries" in changes:
            changes["max_retries"] = int(changes["max_retries"])
        for key in ("retry_delay", "retry_backoff", "retry_max_delay"):
            if key in changes:
                changes[key] = float(changes[key])
        return replace(self, **changes)


OPTION_NAMES = frozenset(f.name for f in fields(TaskOptions))


@dataclass(slots=True)
class NewTask:
    """One task to insert. When it is due: run_at (absolute, epoch seconds), else
    `delay` seconds after the database's clock, else now by the database's clock.

    unique_key (stored in the row): while a pending or running task has it, the
    backend inserts nothing and returns that task's id instead.

    depends_on: ids of the tasks it waits for (the row is claimed only when every
    one is done); kept in order for parent_results().
    """
    name: str
    payload: str
    options: TaskOptions
    run_at: float | None = None
    delay: float | None = None
    unique_key: str | None = None
    depends_on: tuple[int, ...] = ()


@dataclass(slots=True)
class NewTasks:
    """Many calls of one task, inserted in one transaction.

    args_json is a JSON array with one element per task: that call's list of
    positional arguments. count is its length.
    """
    name: str
    args_json: str
    count: int
    options: TaskOptions
    run_at: float | None = None
    delay: float | None = None
