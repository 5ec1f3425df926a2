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
from typing import Any

from .codec import to_json

# The rules and limits of every value (liteq.backends.rules), named here too for the
# modules that build tasks.
from .backends.rules import MAX_BACKOFF as MAX_BACKOFF
from .backends.rules import MAX_EPOCH as MAX_EPOCH
from .backends.rules import MAX_NAME as MAX_NAME
from .backends.rules import MAX_RETRIES as MAX_RETRIES
from .backends.rules import MAX_SECONDS as MAX_SECONDS
from .backends.rules import MAX_UNIQUE_KEY as MAX_UNIQUE_KEY
from .backends.rules import PRIORITY_RANGE as PRIORITY_RANGE
from .backends.rules import check_depends_on as check_depends_on
from .backends.rules import check_due as check_due
from .backends.rules import check_name as check_name
from .backends.rules import check_number as check_number
from .backends.rules import OPTION_ORDER, check_option, check_queue, check_task_name
from .backends.rules import check_priority as check_priority
from .backends.rules import check_purge as check_purge
from .backends.rules import check_unique_key as check_unique_key


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
        check_queue(changes.get("queue", self.queue))
        checked = {key: check_option(key, changes[key]) for key in OPTION_ORDER
                   if key in changes}
        return replace(self, **checked)


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

    def __post_init__(self) -> None:
        # Every way of enqueueing builds one, so its limits hold on every path.
        check_task_name(self.name)
        if self.run_at is not None or self.delay is not None:
            check_due(self.run_at, self.delay)


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

    def __post_init__(self) -> None:
        check_task_name(self.name)
        if self.run_at is not None or self.delay is not None:
            check_due(self.run_at, self.delay)
