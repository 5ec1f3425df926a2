"""Cron maths: time zones, and the fire times of a cron expression.

Cron syntax is croniter's: five fields (minute hour day-of-month month
day-of-week) with ranges, steps, lists, names, `L`, `#`, `W`, `H` (hashed on the
schedule name), the `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly` aliases, an
optional 6th field for SECONDS (croniter's default placement: `* * * * * */10`
is every 10 seconds) and an optional 7th for the year.

Occurrences are computed in the schedule's zone (an IANA name, or the machine's
local zone) with zone-aware datetimes, and returned as epoch seconds. When
clocks go back, a wall-clock time that comes round a second time fires once,
unless the hour field is `*` (then every real hour has its runs); a time skipped
when clocks go forward fires at the first valid time after the gap.
"""

import os
from collections.abc import Iterator
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

from .timeutil import now, to_iso

_FIELDS_HELP = ("expected 5 fields (minute hour day-of-month month day-of-week), "
                "optionally a 6th for seconds and a 7th for the year, "
                "or one of @hourly @daily @weekly @monthly @yearly @midnight")

# An hour-restricted per-second expression can have a whole repeated hour of
# occurrences to step over when clocks go back; this bounds that walk.
_MAX_SKIP = 20000


# ---- time zones -------------------------------------------------------------

_local_cache: dict[str | None, tzinfo] = {}


def local_zone() -> tzinfo:
    """The machine's local time zone, with its DST rules.

    TZ (an IANA name or a zoneinfo file path) wins, then /etc/localtime. When
    neither yields zone rules (a POSIX rule string in TZ, no /etc/localtime) the
    current fixed UTC offset is used, which cannot follow DST changes.
    """
    tz_env = os.environ.get("TZ")
    zone = _local_cache.get(tz_env)
    if zone is None:
        zone = _find_local_zone(tz_env)
        if isinstance(zone, ZoneInfo):  # a fixed-offset fallback goes stale at DST changes
            _local_cache[tz_env] = zone
    return zone


def _current_offset_zone() -> tzinfo:
    """The current fixed UTC offset (astimezone() always sets one)."""
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


def _find_local_zone(tz_env: str | None) -> tzinfo:
    if tz_env:
        name = tz_env[1:] if tz_env.startswith(":") else tz_env
        try:
            if name.startswith("/"):
                with open(name, "rb") as f:
                    return ZoneInfo.from_file(f, key=name)
            return ZoneInfo(name)
        except (OSError, ValueError, KeyError):
            return _current_offset_zone()
    try:
        real = os.path.realpath("/etc/localtime")
        marker = "/zoneinfo/"
        if marker in real:
            try:
                return ZoneInfo(real.split(marker, 1)[1])
            except (ValueError, KeyError, OSError):
                pass
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return _current_offset_zone()


def zone_of(tz: str | None) -> tzinfo:
    """The tzinfo for a stored or given zone name (None: the local zone)."""
    if tz is None:
        return local_zone()
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, KeyError, OSError):
        raise ValueError(
            f"unknown time zone {tz!r}: give an IANA name such as 'Europe/Berlin', "
            f"'America/New_York' or 'UTC'") from None


def check_tz(tz: object) -> str | None:
    if tz is None:
        return None
    if isinstance(tz, ZoneInfo) and tz.key:
        tz = tz.key
    if not isinstance(tz, str) or not tz.strip():
        raise ValueError(f"tz must be an IANA time zone name such as 'Europe/Berlin', "
                         f"got {tz!r}")
    tz = tz.strip()
    zone_of(tz)
    return tz


# ---- cron computation -------------------------------------------------------

def normalize_cron(cron: object) -> str:
    if not isinstance(cron, str):
        raise TypeError(f"cron must be a string such as '0 2 * * *', "
                        f"not {type(cron).__name__}")
    expr = " ".join(cron.split())
    if not expr:
        raise ValueError(f"invalid cron expression {cron!r}: it is empty; {_FIELDS_HELP}")
    return expr


def _hash_id(expr: str, name: str | None) -> bytes | None:
    # `H` fields are hashed on the schedule name so they are stable across
    # processes. The @ aliases mean their fixed Vixie-cron times only without a
    # hash id (with one croniter turns @daily into a hashed time).
    if expr.startswith("@") or not name:
        return None
    return name.encode("utf-8")


def _croniter(expr: str, start: datetime | float, name: str | None) -> "croniter[float]":
    try:
        return croniter(expr, start, hash_id=_hash_id(expr, name))
    except CroniterBadDateError as exc:
        raise ValueError(f"cron expression {expr!r} never matches a date: {exc}") from None
    except (CroniterError, ValueError, TypeError, KeyError, IndexError) as exc:
        msg = str(exc)
        if "columns" in msg:
            msg = f"it has {len(expr.split())} field(s); {_FIELDS_HELP}"
        raise ValueError(f"invalid cron expression {expr!r}: {msg}") from None


def _is_repeated_wall_time(ts: float, zone: tzinfo) -> bool:
    """True when `ts` is the second time its local wall-clock time occurs (clocks went back)."""
    local = datetime.fromtimestamp(ts, zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def occurrences(expr: str, zone: tzinfo, after: float, name: str | None) -> Iterator[float]:
    """Yield the schedule's fire times (epoch seconds) strictly after `after`, increasing."""
    it = _croniter(expr, datetime.fromtimestamp(after, zone), name)
    every_hour = it.expanded[1] == ["*"]
    last = after
    skipped = 0
    while True:
        try:
            t = it.get_next(float)  # pyright: ignore[reportUnknownMemberType]  (stub: FloatInt)
        except CroniterBadDateError as exc:
            raise ValueError(
                f"cron expression {expr!r} never matches a date after "
                f"{to_iso(last)}: {exc}") from None
        except (CroniterError, ValueError, OverflowError) as exc:
            raise ValueError(f"cron expression {expr!r}: cannot compute the next time "
                             f"after {to_iso(last)}: {exc}") from None
        if t <= last or (not every_hour and _is_repeated_wall_time(t, zone)):
            skipped += 1
            if skipped > _MAX_SKIP:
                raise ValueError(f"cron expression {expr!r}: no usable time after "
                                 f"{to_iso(last)} (stepped over {_MAX_SKIP} candidates)")
            continue
        skipped = 0
        last = t
        yield t


def next_after(expr: str, tz: str | None, after: float, name: str | None = None) -> float:
    return next(occurrences(expr, zone_of(tz), after, name))


def latest_before(expr: str, tz: str | None, before: float, floor: float, limit: int,
                  name: str | None = None) -> list[float]:
    """Up to `limit` fire times in [floor, before), the latest ones, oldest first."""
    zone = zone_of(tz)
    it = _croniter(expr, datetime.fromtimestamp(before, zone), name)
    every_hour = it.expanded[1] == ["*"]
    out: list[float] = []
    last = before
    for _ in range(limit + _MAX_SKIP):
        t = it.get_prev(float)  # pyright: ignore[reportUnknownMemberType]  (stub: FloatInt)
        if t < floor or len(out) >= limit:
            break
        if t >= last or (not every_hour and _is_repeated_wall_time(t, zone)):
            continue
        out.append(t)
        last = t
    out.reverse()
    return out


def next_run_after(cron: str, after: datetime | float | None = None, tz: str | None = None,
                   name: str | None = None) -> float:
    """The first fire time of `cron` strictly after `after`, as epoch seconds.

    `after` is a datetime (naive = local time) or epoch seconds, default now;
    `tz` an IANA zone name (default: the local zone); `name` the schedule name
    that `H` fields are hashed on. Raises ValueError for an invalid expression.
    """
    expr = normalize_cron(cron)
    if after is None:
        after = now()
    elif isinstance(after, datetime):
        after = after.timestamp()
    return next_after(expr, check_tz(tz), float(after), name)



# liteq 0.2's names for a cron expression's fields, and croniter's aliases.
_FIELD_NAMES = ("minute", "hour", "day", "month", "weekday", "second", "year")
_ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *",
            "@annually": "0 0 1 1 *"}


def parse_cron(cron_expr: str) -> dict[str, str]:
    """The fields of a cron expression by name, after checking it (liteq 0.2's function):
    {minute, hour, day, month, weekday}, plus second and year when the expression
    has croniter's 6th and 7th fields. Raises ValueError for an invalid expression."""
    expr = normalize_cron(cron_expr)
    _croniter(expr, now(), None)  # raises ValueError saying what is wrong
    return dict(zip(_FIELD_NAMES, _ALIASES.get(expr.lower(), expr).split()))


def calculate_next_run(cron_expr: str, from_time: datetime | None = None) -> datetime:
    """The first fire time of `cron_expr` after `from_time` (a naive local datetime,
    default now), as a naive local datetime: liteq 0.2's function, with full cron
    syntax. next_run_after() gives epoch seconds and takes a zone."""
    return datetime.fromtimestamp(next_run_after(cron_expr, from_time))
