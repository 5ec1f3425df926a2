"""What a new task is made of: its options (with their defaults, written only here)
and the row a backend inserts.

`@task(...)` keeps a TaskOptions; `.delay()`, `.apply_async()`, `.map()` and the
scheduler turn it into NewTask rows (or one NewTasks batch), and every backend
inserts exactly these fields.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, fields, replace
from collections.abc import Sequence
from typing import Any, cast

from .codec import to_json

# The limits on what a task may be given, the same on every backend (README: "Limits
# on values"). They are checked here, before anything is written, so a value one
# backend would store and the other refuse is refused by both.

#: The longest unique_key accepted (it is stored in a unique index).
MAX_UNIQUE_KEY = 512
#: The longest task, queue or schedule name, in characters.
MAX_NAME = 200
#: priority is a 32-bit signed integer (PostgreSQL's `integer` column).
PRIORITY_RANGE = (-(2**31), 2**31 - 1)
#: max_retries: 0 up to this.
MAX_RETRIES = 1_000_000
#: timeout, countdown, retry_delay, retry_max_delay and a schedule()'s delay: at most
#: ten years of seconds (a larger one overflows the daemon's timers).
MAX_SECONDS = 10 * 365 * 86400
#: retry_backoff: 0 up to this factor.
MAX_BACKOFF = 100.0
#: eta / an absolute run_at: epoch seconds from 1970 to the end of year 9999.
MAX_EPOCH = 253402300799.0

# Control characters (NUL included) and lone surrogates (not valid UTF-8): no
# database stores them the same way, and no log or command line shows them.
_BAD_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
# What PostgreSQL's text cannot hold at all (a unique_key may hold other characters).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_number(label: str, value: object, allow_none: bool = False,
                 allow_zero: bool = True, maximum: float = MAX_SECONDS,
                 minimum: float = 0) -> None:
    """Raise TypeError/ValueError unless `value` is a finite number from `minimum`
    (excluded when it is 0 and not allow_zero) to `maximum`, or None if allowed."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{label} must be a number, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{label} must be a finite number, got {value!r}")
    if value < minimum or (value == 0 and not allow_zero):
        low = f"> {minimum}" if (minimum == 0 and not allow_zero) else f">= {minimum}"
        raise ValueError(f"{label} must be {low}, got {value!r}")
    if value > maximum:
        raise ValueError(f"{label} must be at most {maximum:,}, got {value!r}")


def check_name(label: str, value: object, queue: bool = False) -> str:
    """Raise TypeError/ValueError unless `value` is a usable name: a string of 1 to
    MAX_NAME characters with no control characters; a queue name also has no comma
    and no leading or trailing space (liteqd --queues could never name it)."""
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_NAME:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValueError(f"{label} must be 1 to {MAX_NAME} characters long, got "
                         f"{len(value):,} ({shown!r})")
    bad = _BAD_CHARS.search(value)
    if bad:
        raise ValueError(f"{label} {value[:40]!r} holds the control character or lone "
                         f"surrogate {bad.group()!r}")
    if queue and ("," in value or value != value.strip()):
        raise ValueError(f"{label} {value!r} must not hold a comma or start or end with "
                         f"a space (liteqd --queues could not name it)")
    return value


# Task names already found good: a task's name is the same on every call, so the
# enqueue path checks it once (bounded, for apps that make names up as they go).
_GOOD_TASK_NAMES: set[str] = set()


def _check_task_name(name: object) -> None:
    if isinstance(name, str) and name in _GOOD_TASK_NAMES:
        return
    good = check_name("task name", name)
    if len(_GOOD_TASK_NAMES) < 10_000:
        _GOOD_TASK_NAMES.add(good)


def check_priority(value: object) -> int:
    """priority as an int within PRIORITY_RANGE (a float is truncated); TypeError/
    ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"priority must be a number, not {type(value).__name__}")
    low, high = PRIORITY_RANGE
    check_number("priority", value, minimum=low, maximum=high)
    return int(value)


def check_due(run_at: float | None = None, delay: float | None = None) -> None:
    """ValueError unless an absolute run_at (epoch seconds) is within 0..MAX_EPOCH and
    a delay within -MAX_SECONDS..MAX_SECONDS (a negative one is already due)."""
    check_number("run_at (eta)", run_at, allow_none=True, maximum=MAX_EPOCH)
    check_number("delay", delay, allow_none=True, minimum=-MAX_SECONDS)


def check_purge(older_than: float, statuses: str | Sequence[str],
                known: Sequence[str]) -> tuple[str, ...]:
    """The statuses of a purge() as a tuple, after checking that older_than is a
    finite number of seconds and every status is in `known` (ValueError)."""
    check_number("older_than", older_than, minimum=-math.inf, maximum=math.inf)
    chosen = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    unknown = sorted({s for s in chosen if s not in known}, key=repr)
    if unknown:
        raise ValueError(f"unknown task status(es) {unknown}; known: {tuple(known)}")
    return chosen


def check_unique_key(key: object) -> None:
    """Raise TypeError/ValueError unless `key` is a usable unique_key: a non-empty
    string of at most MAX_UNIQUE_KEY characters, with no NUL and no lone surrogate."""
    if not isinstance(key, str):
        raise TypeError(f"unique_key must be a string, not {type(key).__name__}")
    if not key.strip():
        raise ValueError(f"unique_key must be a non-empty string, got {key!r}")
    if len(key) > MAX_UNIQUE_KEY:
        raise ValueError(f"unique_key is {len(key):,} characters long, over the limit of "
                         f"{MAX_UNIQUE_KEY}; pass a hash of it instead")
    bad = _UNSTORABLE.search(key)
    if bad:
        raise ValueError(f"unique_key {key[:40]!r} holds {bad.group()!r}, which no "
                         f"database stores alike; pass a hash of it instead")


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
        check_name("queue", queue, queue=True)
        for key in ("retry_delay", "retry_max_delay"):
            if key in changes:
                check_number(key, changes[key])
        if "retry_backoff" in changes:
            check_number("retry_backoff", changes["retry_backoff"], maximum=MAX_BACKOFF)
        if "max_retries" in changes:
            check_number("max_retries", changes["max_retries"], maximum=MAX_RETRIES)
        if "timeout" in changes:
            check_number("timeout", changes["timeout"], allow_zero=False)
        if "priority" in changes:
            changes["priority"] = check_priority(changes["priority"])
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

    def __post_init__(self) -> None:
        # Every way of enqueueing builds one, so its limits hold on every path.
        _check_task_name(self.name)
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
        _check_task_name(self.name)
        if self.run_at is not None or self.delay is not None:
            check_due(self.run_at, self.delay)
