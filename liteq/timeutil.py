"""Time in one form: seconds since the Unix epoch (UTC) as a float.

Every time the database stores is such a number, so SQL compares numbers and
never text in two formats (the bug that kept delayed tasks from coming due in
the project LiteQ grew from).
"""

import time
from datetime import datetime, timedelta, timezone
from typing import Any

now = time.time


def due_from(when: object) -> tuple[float | None, float | None]:
    """(run_at, delay) for `.schedule(when)`: an absolute time in epoch seconds for a
    datetime or an ISO-8601 string (naive = local time, as `datetime.now()` gives
    it; aware = its own zone), or a delay in seconds (for a timedelta or a number),
    which the backend adds to the database's clock."""
    if isinstance(when, str):
        text = when.strip()
        if text.endswith(("Z", "z")):  # Python 3.10's fromisoformat() does not read it
            text = text[:-1] + "+00:00"
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"when {when!r} is not an ISO-8601 date and time, such as "
                             f"2026-12-01T09:30:00 or 2026-12-01T09:30:00+01:00") from None
    if isinstance(when, datetime):
        return when.timestamp(), None
    if isinstance(when, timedelta):
        return None, when.total_seconds()
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return None, float(when)
    raise TypeError(
        f"when must be a datetime, an ISO-8601 string, a timedelta or a number of seconds, "
        f"not {type(when).__name__}"
    )


def to_iso(ts: Any) -> str | None:
    """Render epoch seconds as an ISO-8601 string in local time with its offset, or None."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(float(ts), timezone.utc).astimezone().isoformat()
    except (TypeError, ValueError, OverflowError):
        return str(ts)
