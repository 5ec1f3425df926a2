"""liteq 0.2's text times, read as what they are, in exact epoch seconds.

The project LiteQ grew from (PyPI `liteq` up to 0.2.1) stored times as text in
two forms that look alike but mean different things:

- `2026-11-30 06:35:36`: SQLite's CURRENT_TIMESTAMP (created_at, started_at,
  finished_at, last_heartbeat, and run_at by default). A space separator, no
  fraction, and UTC.
- `2026-11-30T15:35:36.232345`: Python's `datetime.now().isoformat()` (run_at
  of `.schedule()` and of retries, the schedules' next_run and last_run). A `T`
  separator, and the machine's local wall-clock time.

A value with an explicit offset (`+09:00`, `Z`) is read in that offset. A date
alone came from Python too, so it is local midnight.

The result is exact to the microsecond: it is computed from whole microseconds
and divided once, so `datetime.fromtimestamp()` gives back the stored
microseconds. (SQLite's julianday() keeps only milliseconds and adds float
noise: `06:24:49` came back as `06:24:49.000010`.)
"""

import calendar
import re
import sqlite3
from datetime import datetime

SQL_FUNCTION = "liteq_seed_epoch"

_US = 1_000_000

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:([T ])(\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?", re.IGNORECASE)


def _offset_seconds(text: str) -> int:
    """Seconds east of UTC for `Z`, `+09`, `+0900` or `+09:00`."""
    if text.upper() == "Z":
        return 0
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return sign * (int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60)


def seed_text_to_epoch(value: object) -> float | None:
    """Epoch seconds (float) of a time liteq 0.2 stored, or None.

    Numbers are returned as they are (already epoch seconds); text is read as
    the module docstring says; None and text that is not a date stay None.
    """
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    match = _ISO.fullmatch(str(value).strip())
    if match is None:
        return None
    year, month, day, sep, hour, minute, second, fraction, offset = match.groups()
    micro = int((fraction or "")[:6].ljust(6, "0"))
    try:
        wall = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                        int(second or 0))
        if offset is not None:
            seconds = calendar.timegm(wall.timetuple()) - _offset_seconds(offset)
        elif sep == " ":
            seconds = calendar.timegm(wall.timetuple())
        else:
            # Whole seconds of a naive local time are exact in a float; the
            # microseconds are added as integers below.
            seconds = int(wall.timestamp())
    except (ValueError, OverflowError, OSError):
        return None
    return (seconds * _US + micro) / _US


def register(conn: sqlite3.Connection) -> None:
    """Make seed_text_to_epoch() callable in SQL on `conn` as liteq_seed_epoch(x)."""
    conn.create_function(SQL_FUNCTION, 1, seed_text_to_epoch)


__all__ = ["seed_text_to_epoch", "register", "SQL_FUNCTION"]
