"""Rate limits as users write them: "100/s", "600/m" (or "/min"), "1000/h", Celery's
notation, or a plain number of tasks per second.

parse_rate() turns one into tasks per second, refusing anything else with a
ValueError that names the problem (at the decorator line or when liteqd reads its
flags, never at claim time).
"""

from __future__ import annotations

import math

# Seconds per unit, by every spelling accepted after the "/".
_UNITS: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
}

# At most this many a second: faster than any claim loop, and 1/rate stays a
# usable float (a typo such as 1e300/s is refused, not turned into "no limit").
MAX_PER_SECOND = 1_000_000.0

_FORMS = 'N/s, N/m (or N/min) or N/h, e.g. "100/s"'


def parse_rate(value: object, label: str = "rate_limit") -> float | None:
    """Tasks per second of a rate limit: None stays None (no limit); a number is tasks
    per second; a string is "N/s", "N/m", "N/min" or "N/h" (N may have a fraction).
    Anything else, zero, a negative, NaN or an unbounded rate is a ValueError (a
    TypeError for a value of the wrong type) naming `label`."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{label} must be a string such as \"100/s\" or a number, "
                        f"not {type(value).__name__}")
    if isinstance(value, (int, float)):
        return _checked(float(value), 1.0, label, value)
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a string such as \"100/s\" or a number, "
                        f"not {type(value).__name__}")
    number, sep, unit = value.strip().partition("/")
    unit = unit.strip().lower()
    if sep and unit not in _UNITS:
        raise ValueError(f"{label}: unknown unit {unit!r} in {value!r}; write {_FORMS}")
    try:
        count = float(number.strip())
    except ValueError:
        raise ValueError(f"{label} must be {_FORMS}; got {value!r}") from None
    return _checked(count, _UNITS[unit] if sep else 1.0, label, value)


def _checked(count: float, seconds: float, label: str, raw: object) -> float:
    if math.isnan(count) or count <= 0:
        raise ValueError(f"{label} must allow more than 0 tasks; got {raw!r}")
    per_second = count / seconds
    if not math.isfinite(per_second) or per_second > MAX_PER_SECOND:
        raise ValueError(f"{label} allows at most {MAX_PER_SECOND:g} tasks a second; "
                         f"got {raw!r}")
    return per_second


def describe(per_second: float) -> str:
    """A rate for people: "20/s", "6/min" or "1/h" style, in the unit that reads best."""
    for unit, seconds in (("s", 1.0), ("min", 60.0), ("h", 3600.0)):
        n = per_second * seconds
        if n >= 1 or unit == "h":
            return f"{n:g}/{unit}"
    return f"{per_second:g}/s"  # unreachable; keeps type checkers content
