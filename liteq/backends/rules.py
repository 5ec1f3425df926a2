"""The rules every value given to a queue must meet, and their limits: one set for
both backends (README: "Limits on values").

They are checked before anything is written: by @task, .delay() and the other
front doors for an early error, and again by the backends' shared enqueue layer
(liteq.backends.enqueue) for whatever reaches a backend directly, so a value one
database would store and the other refuse is refused by both with the same
ValueError (or TypeError for a value of the wrong type).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, cast

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


def check_task_name(name: object) -> None:
    """Raise TypeError/ValueError unless `name` is a usable task name (see check_name)."""
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


def check_queue(value: object) -> str:
    """The queue name `value`, if usable (see check_name); ValueError otherwise."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"queue must be a non-empty string, got {value!r}")
    return check_name("queue", value, queue=True)


#: The task options in the order they are checked, so the first bad one is named alike
#: whatever order a call gives them in.
OPTION_ORDER = ("queue", "retry_delay", "retry_max_delay", "retry_backoff", "max_retries",
                "timeout", "priority")


def check_option(key: str, value: Any) -> Any:
    """The TaskOptions field `key` set to `value`, as stored (priority and max_retries
    ints, the retry settings floats); TypeError/ValueError when out of its range."""
    if key == "queue":
        return check_queue(value)
    if key == "priority":
        return check_priority(value)
    if key == "timeout":
        check_number("timeout", value, allow_none=True, allow_zero=False)
        return value
    if key == "max_retries":
        check_number("max_retries", value, maximum=MAX_RETRIES)
        return int(value)
    if key == "retry_backoff":
        check_number("retry_backoff", value, maximum=MAX_BACKOFF)
        return float(value)
    check_number(key, value)        # retry_delay, retry_max_delay
    return float(value)


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


def check_payload(payload: object) -> None:
    """TypeError unless a task's payload is text (it is stored as given: a backend
    does not parse it)."""
    if not isinstance(payload, str):
        raise TypeError(f"a task's payload must be a string, not {type(payload).__name__}")


def check_args_json(args_json: object, count: object) -> None:
    """ValueError unless args_json (of a batch of calls) is a JSON array of `count`
    arrays, one list of positional arguments per call."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, not {type(count).__name__}")
    if not isinstance(args_json, str):
        raise TypeError(f"args_json must be a string, not {type(args_json).__name__}")
    if count <= 0 and args_json.strip() in ("", "[]"):
        return
    try:
        calls = json.loads(args_json)
    except ValueError:
        raise ValueError("args_json must be a JSON array of argument lists; it is not "
                         "valid JSON") from None
    if not isinstance(calls, list):
        raise ValueError("args_json must be a JSON array of argument lists, got "
                         f"{type(calls).__name__}")
    items = cast("list[object]", calls)
    if any(not isinstance(call, list) for call in items):
        raise ValueError("args_json must be a JSON array of argument lists: every "
                         "element must be an array")
    if len(items) != count:
        raise ValueError(f"args_json holds {len(items):,} calls, but count is {count:,}")
