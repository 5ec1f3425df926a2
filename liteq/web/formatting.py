"""Jinja filters of the panel: times, durations and sizes for people to read."""

from collections.abc import Callable
from datetime import datetime

from ..timeutil import now


def clock(ts: float | str | None) -> str:
    """Epoch seconds as local 'YYYY-MM-DD HH:MM:SS' ('' for None)."""
    if ts is None:
        return ""
    try:
        return datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def duration(seconds: float | str | None) -> str:
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


def ago(ts: float | str | None, at: float | None = None) -> str:
    """'5 s ago' for past times, 'in 3m 10s' for future ones ('' for None)."""
    if ts is None:
        return ""
    delta = (now() if at is None else at) - float(ts)
    if abs(delta) < 1:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


def size(nbytes: float | str | None) -> str:
    """Bytes as '512 B', '3.4 MB' ('' for None)."""
    if nbytes is None:
        return ""
    n = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


FILTERS: dict[str, Callable[..., str]] = {"clock": clock, "duration": duration, "ago": ago, "size": size}
