"""Jinja filters of the panel: times, durations and sizes for people to read.

Every time the panel shows names its zone ("2026-12-08 09:00:00 CET"): the panel's
display zone (`liteq monitor --timezone`, default the machine's), or for a
schedule's runs the schedule's own zone as well. The JSON API gives ISO 8601 with
the offset (api_time()).
"""

from datetime import datetime, timezone, tzinfo
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..timeutil import now

CLOCK_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


def zone_named(name: str | None) -> tzinfo | None:
    """The zone called `name` (an IANA name such as Europe/Berlin, or UTC); None for
    the machine's local zone. ValueError names an unknown zone."""
    if name is None or name == "" or name == "local":
        return None
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as "
                         f"Europe/Berlin, or UTC") from None


def in_zone(ts: Any, zone: tzinfo | None) -> datetime | None:
    """Epoch seconds as an aware datetime in `zone` (None: local), or None."""
    if ts is None:
        return None
    try:
        moment = datetime.fromtimestamp(float(ts), timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return moment.astimezone(zone) if zone is not None else moment.astimezone()


def clock(ts: Any, zone: tzinfo | None = None) -> str:
    """Epoch seconds as 'YYYY-MM-DD HH:MM:SS ZONE' in `zone` ('' for None)."""
    moment = in_zone(ts, zone)
    if moment is None:
        return "" if ts is None else str(ts)
    return moment.strftime(CLOCK_FORMAT)


def iso(ts: Any, zone: tzinfo | None = None) -> str | None:
    """Epoch seconds as ISO 8601 with its offset (None for None)."""
    moment = in_zone(ts, zone)
    return None if moment is None else moment.isoformat()


def duration(seconds: Any) -> str:
    """A length of time: '850 ms', '12.3 s', '4m 05s', '2h 10m', '3d 4h'."""
    if seconds is None:
        return ""
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d {int(s % 86400 // 3600)}h"


def ago(ts: Any, at: float | None = None) -> str:
    """'5 s ago' for past times, 'in 3m 10s' for future ones ('' for None)."""
    if ts is None:
        return ""
    delta = (now() if at is None else at) - float(ts)
    if abs(delta) < 1:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


def size(nbytes: Any) -> str:
    """Bytes as '512 B', '3.4 MB' ('' for None)."""
    if nbytes is None:
        return ""
    n = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def filters_for(zone: tzinfo | None) -> dict[str, Callable[..., Any]]:
    """The Jinja filters, with times shown in `zone` (None: the machine's zone).

    clock(ts) and iso(ts) use that zone; clock_in(ts, "Europe/Berlin") another one.
    """
    def clock_in(ts: Any, name: str | None) -> str:
        try:
            return clock(ts, zone_named(name))
        except ValueError:
            return clock(ts, zone)

    def clock_here(ts: Any) -> str:
        return clock(ts, zone)

    def iso_here(ts: Any) -> str:
        return iso(ts, zone) or ""

    return {"clock": clock_here, "iso": iso_here,
            "clock_in": clock_in, "duration": duration, "ago": ago, "size": size}


FILTERS = filters_for(None)
