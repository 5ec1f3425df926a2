"""Cron schedules: registered once per name, fired exactly once per occurrence.

    from liteq import task, register_schedule
    from liteq.scheduler import Scheduler

    @task()
    def daily_backup(): ...

    register_schedule(daily_backup, "0 2 * * *")   # at every import: still one row
    Scheduler(check_interval=60).run()              # or let liteqd fire it

Schedules live in the `schedules` table. Each fire is one transaction that moves
the schedule's next_run from the value this scheduler read to the next one and
inserts the task(s) (a compare-and-set in liteq.storage), so any number of
schedulers and daemons sharing a database enqueue each occurrence once.

Cron syntax is croniter's: five fields (minute hour day-of-month month
day-of-week) with ranges, steps, lists, names, `L`, `#`, `W`, `H` (hashed on the
schedule name), the `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly` aliases, an
optional 6th field for SECONDS (croniter's default placement: `* * * * * */10`
is every 10 seconds) and an optional 7th for the year.

Times: occurrences are computed in the schedule's zone (an IANA name, or the
machine's local zone) with zone-aware datetimes, and stored as epoch seconds.
When clocks go back, a wall-clock time that comes round a second time fires
once, unless the hour field is `*` (then every real hour has its runs); a time
skipped when clocks go forward fires at the first valid time after the gap.
"""

import argparse
import os
import select
import signal
import sys
import threading
import warnings
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

from . import storage
from .app_loader import load_app, refuse_loop_at_import
from .core import TASK_REGISTRY, Task
from .errors import ConfigError, DatabaseError, NotATaskError
from .serialization import decode_payload, encode_payload
from .timeutil import now, to_iso
from .wakeup import wake as _wake

CATCHUP_MODES = ("coalesce", "all")

# catchup="all" enqueues at most this many missed occurrences per fire (the most
# recent ones), so a long outage of a per-second schedule cannot flood the queue.
MAX_CATCHUP = 100

# @task's own defaults, used when the schedule's task is not registered in this
# process and the schedule row does not override them.
_DEFAULT_QUEUE = "default"
_DEFAULT_PRIORITY = 0
_DEFAULT_MAX_RETRIES = 3
_DEFAULT_RETRY = (1.0, 2.0, 300.0)  # retry_delay, retry_backoff, retry_max_delay

_FIELDS_HELP = ("expected 5 fields (minute hour day-of-month month day-of-week), "
                "optionally a 6th for seconds and a 7th for the year, "
                "or one of @hourly @daily @weekly @monthly @yearly @midnight")

# An hour-restricted per-second expression can have a whole repeated hour of
# occurrences to step over when clocks go back; this bounds that walk.
_MAX_SKIP = 20000

# (db path, schedule name) -> what this process registered under that name.
_registered = {}


# ---- time zones -------------------------------------------------------------

_local_cache = {}


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


def _find_local_zone(tz_env):
    if tz_env:
        name = tz_env[1:] if tz_env.startswith(":") else tz_env
        try:
            if name.startswith("/"):
                with open(name, "rb") as f:
                    return ZoneInfo.from_file(f, key=name)
            return ZoneInfo(name)
        except (OSError, ValueError, KeyError):
            return datetime.now().astimezone().tzinfo
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
        return datetime.now().astimezone().tzinfo


def _zone(tz) -> tzinfo:
    """The tzinfo for a stored or given zone name (None: the local zone)."""
    if tz is None:
        return local_zone()
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, KeyError, OSError):
        raise ValueError(
            f"unknown time zone {tz!r}: give an IANA name such as 'Europe/Berlin', "
            f"'America/New_York' or 'UTC'") from None


def _check_tz(tz):
    if tz is None:
        return None
    if isinstance(tz, ZoneInfo) and tz.key:
        tz = tz.key
    if not isinstance(tz, str) or not tz.strip():
        raise ValueError(f"tz must be an IANA time zone name such as 'Europe/Berlin', "
                         f"got {tz!r}")
    tz = tz.strip()
    _zone(tz)
    return tz


# ---- cron computation -------------------------------------------------------

def _normalize_cron(cron) -> str:
    if not isinstance(cron, str):
        raise TypeError(f"cron must be a string such as '0 2 * * *', "
                        f"not {type(cron).__name__}")
    expr = " ".join(cron.split())
    if not expr:
        raise ValueError(f"invalid cron expression {cron!r}: it is empty; {_FIELDS_HELP}")
    return expr


def _hash_id(expr, name):
    # `H` fields are hashed on the schedule name so they are stable across
    # processes. The @ aliases mean their fixed Vixie-cron times only without a
    # hash id (with one croniter turns @daily into a hashed time).
    if expr.startswith("@") or not name:
        return None
    return name.encode("utf-8")


def _croniter(expr, start, name):
    try:
        return croniter(expr, start, hash_id=_hash_id(expr, name))
    except CroniterBadDateError as exc:
        raise ValueError(f"cron expression {expr!r} never matches a date: {exc}") from None
    except (CroniterError, ValueError, TypeError, KeyError, IndexError) as exc:
        msg = str(exc)
        if "columns" in msg:
            msg = f"it has {len(expr.split())} field(s); {_FIELDS_HELP}"
        raise ValueError(f"invalid cron expression {expr!r}: {msg}") from None


def _is_repeated_wall_time(ts, zone) -> bool:
    """True when `ts` is the second time its local wall-clock time occurs (clocks went back)."""
    local = datetime.fromtimestamp(ts, zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _occurrences(expr, zone, after, name):
    """Yield the schedule's fire times (epoch seconds) strictly after `after`, increasing."""
    it = _croniter(expr, datetime.fromtimestamp(after, zone), name)
    every_hour = it.expanded[1] == ["*"]
    last = after
    skipped = 0
    while True:
        try:
            t = it.get_next(float)
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


def _next_after(expr, tz, after, name=None) -> float:
    return next(_occurrences(expr, _zone(tz), after, name))


def _latest_before(expr, tz, before, floor, limit, name=None) -> list:
    """Up to `limit` fire times in [floor, before), the latest ones, oldest first."""
    zone = _zone(tz)
    it = _croniter(expr, datetime.fromtimestamp(before, zone), name)
    every_hour = it.expanded[1] == ["*"]
    out = []
    last = before
    for _ in range(limit + _MAX_SKIP):
        t = it.get_prev(float)
        if t < floor or len(out) >= limit:
            break
        if t >= last or (not every_hour and _is_repeated_wall_time(t, zone)):
            continue
        out.append(t)
        last = t
    out.reverse()
    return out


def next_run_after(cron: str, after=None, tz=None, name=None) -> float:
    """The first fire time of `cron` strictly after `after`, as epoch seconds.

    `after` is a datetime (naive = local time) or epoch seconds, default now;
    `tz` an IANA zone name (default: the local zone); `name` the schedule name
    that `H` fields are hashed on. Raises ValueError for an invalid expression.
    """
    expr = _normalize_cron(cron)
    if after is None:
        after = now()
    elif isinstance(after, datetime):
        after = after.timestamp()
    return _next_after(expr, _check_tz(tz), float(after), name)


# The seed project's names for a cron expression's fields, and croniter's aliases.
_FIELD_NAMES = ("minute", "hour", "day", "month", "weekday", "second", "year")
_ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *",
            "@annually": "0 0 1 1 *"}


def parse_cron(cron_expr: str) -> dict:
    """The fields of a cron expression by name, after checking it (the seed's function):
    {minute, hour, day, month, weekday}, plus second and year when the expression
    has croniter's 6th and 7th fields. Raises ValueError for an invalid expression."""
    expr = _normalize_cron(cron_expr)
    _croniter(expr, now(), None)  # raises ValueError saying what is wrong
    return dict(zip(_FIELD_NAMES, _ALIASES.get(expr.lower(), expr).split()))


def calculate_next_run(cron_expr: str, from_time=None) -> datetime:
    """The first fire time of `cron_expr` after `from_time` (a naive local datetime,
    default now), as a naive local datetime: the seed's function, with full cron
    syntax. next_run_after() gives epoch seconds and takes a zone."""
    return datetime.fromtimestamp(next_run_after(cron_expr, from_time))


# ---- registration -------------------------------------------------------------

def _task_name(task) -> str:
    if isinstance(task, Task):
        return task.name
    if isinstance(task, str):
        if not task.strip():
            raise ValueError("task name must not be empty")
        return task
    raise NotATaskError(f"{task!r} is not a LiteQ task: pass a function decorated with @task "
                        f"or a registered task name")


def _check_int(label, value, minimum=None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label} must be an integer, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{label} must be >= {minimum}, got {value!r}")
    return value


def register_schedule(task, cron, *args, name=None, queue=None, priority=None,
                      max_retries=None, tz=None, enabled=None, catchup="coalesce",
                      **kwargs) -> int:
    """Run `task(*args, **kwargs)` on the cron schedule `cron`; returns the schedule id.

    Idempotent by name: call it at import in every process and the database keeps
    one schedule per name. When the expression, zone, arguments or options
    change, the row is updated in place; its next run is recomputed only when the
    expression or zone changed, so re-registering never skips or repeats a run.

    task:      a @task function or a task name (one this process does not know
               is accepted; a worker that lacks it fails the task as unknown).
    cron:      a croniter expression; see this module's docstring. Invalid ones
               raise ValueError saying what is wrong.
    name:      the schedule's name, default the task name. Two schedules of one
               task need distinct names.
    queue, priority, max_retries: override the task's own settings (None: the
               task's, looked up when each run is enqueued).
    tz:        IANA zone name the expression is read in; None: the machine's zone.
    enabled:   None (default) leaves an existing schedule's state alone, so a
               schedule an operator disabled stays disabled when the app
               restarts; a new one starts enabled. True enables it (from now,
               with no backlog); False keeps the row but does not fire it.
    catchup:   after downtime, "coalesce" (default) enqueues one run for all the
               missed occurrences; "all" enqueues one per missed occurrence (at
               most MAX_CATCHUP, the latest ones).
    The words above are reserved; every other keyword is an argument of the task.
    Arguments must be JSON values (TypeError names one that is not).
    """
    task_name = _task_name(task)
    if name is None:
        name = task_name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"schedule name must be a non-empty string, got {name!r}")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValueError(f"queue must be a non-empty string, got {queue!r}")
    priority = _check_int("priority", priority)
    max_retries = _check_int("max_retries", max_retries, minimum=0)
    if catchup not in CATCHUP_MODES:
        raise ValueError(f"catchup must be one of {', '.join(CATCHUP_MODES)}, got {catchup!r}")
    tz = _check_tz(tz)
    expr = _normalize_cron(cron)
    next_run = _next_after(expr, tz, now(), name)  # also validates the expression
    payload = encode_payload(task_name, args, kwargs)

    store = storage.get_store()
    key = (store.path, name)
    mine = (task_name, expr, tz, payload, queue, priority, max_retries, catchup)
    previous = _registered.get(key)
    if previous is not None and previous != mine:
        warnings.warn(
            f"schedule {name!r} was registered again in this process with different "
            f"settings; the last registration replaces the first. To run {task_name!r} "
            f"on two schedules, give each a distinct name=", RuntimeWarning, stacklevel=2)
    _registered[key] = mine

    existing = store.get_schedule(name) if enabled else None
    schedule_id = store.upsert_schedule(name, task_name, expr, payload, queue, priority,
                                        max_retries, tz, catchup,
                                        None if enabled is None else bool(enabled), next_run)
    if existing is not None and not existing["enabled"]:
        # Re-enabled by the code: start from now rather than fire the backlog.
        store.set_schedule_enabled(schedule_id, True, next_run)
    return schedule_id


# ---- firing -----------------------------------------------------------------

def _task_row(row, run_at):
    """The row fire_schedule inserts: the task's own settings unless the schedule overrides."""
    t = TASK_REGISTRY.get(row["task_name"])
    if t is not None:
        queue, priority, max_retries = t.queue, t.priority, t.max_retries
        timeout = t.timeout
        retry = (t.retry_delay, t.retry_backoff, t.retry_max_delay)
    else:
        queue, priority, max_retries = _DEFAULT_QUEUE, _DEFAULT_PRIORITY, _DEFAULT_MAX_RETRIES
        timeout, retry = None, _DEFAULT_RETRY
    if row["queue"] is not None:
        queue = row["queue"]
    if row["priority"] is not None:
        priority = row["priority"]
    if row["max_retries"] is not None:
        max_retries = row["max_retries"]
    return (row["task_name"], row["payload"], queue, priority, max_retries, run_at,
            timeout, *retry)


def _plan(row, at):
    """(run times to enqueue, new next_run) for a due schedule row."""
    expr, tz, name, due = row["cron_expr"], row["tz"], row["name"], row["next_run"]
    zone = _zone(tz)
    new_next = next(_occurrences(expr, zone, at, name))
    if row["catchup"] == "all":
        runs = [due]
        for t in _occurrences(expr, zone, due, name):
            if t > at:
                break
            if len(runs) >= MAX_CATCHUP:
                runs = _latest_before(expr, tz, new_next, due, MAX_CATCHUP, name)
                break
            runs.append(t)
        return runs, new_next
    # coalesce: one run, stamped with the latest occurrence it stands for.
    latest = due
    following = next(_occurrences(expr, zone, due, name))
    if following <= at:
        found = _latest_before(expr, tz, new_next, due, 1, name)
        latest = found[-1] if found else due
    return [latest], new_next


def fire_due(store=None, at=None, log=None) -> list:
    """Fire every enabled schedule whose next run has come; returns the new task ids.

    For each due schedule the next run moves to the first occurrence after `at`
    (default now) and its task is enqueued, both in one compare-and-set
    transaction: a schedule another scheduler fired first is skipped. Each task's
    run_at is the occurrence it stands for. A schedule whose time cannot be
    computed (a corrupt expression or an unknown zone in its row) is parked with
    no next run, and reported; registering or enabling it again revives it.

    log, when given, is called as log(event, **fields) with event
    "schedule.fired" (schedule, schedule_id, task, task_ids, occurrences,
    next_run) or "schedule.error" (schedule, schedule_id, error). Without it
    fires are silent and errors go to stderr.
    """
    store = store or storage.get_store()
    if at is None:
        at = now()
    elif isinstance(at, datetime):
        at = at.timestamp()
    fired = []
    for row in store.due_schedules(at):
        try:
            runs, new_next = _plan(row, at)
        except ValueError as exc:
            if store.park_schedule(row["id"], row["next_run"]):
                message = (f"{exc}; schedule parked (no next run) until it is "
                           f"registered or enabled again")
                if log is not None:
                    log("schedule.error", schedule=row["name"], schedule_id=row["id"],
                        error=message)
                else:
                    print(f"liteq scheduler: schedule {row['name']!r}: {message}",
                          file=sys.stderr, flush=True)
            continue
        ids = store.fire_schedule(row["id"], row["next_run"], new_next,
                                  [_task_row(row, t) for t in runs])
        if ids is None:
            continue  # another scheduler fired this occurrence
        fired.extend(ids)
        if log is not None:
            log("schedule.fired", schedule=row["name"], schedule_id=row["id"],
                task=row["task_name"], task_ids=ids, occurrences=runs, next_run=new_next)
    if fired:
        _wake(store.path)
    return fired


def next_fire_time(store=None):
    """The earliest next run of any enabled schedule (epoch seconds), or None."""
    store = store or storage.get_store()
    return store.next_schedule_time()


# ---- listing and switching ----------------------------------------------------

def _schedule_dict(row) -> dict:
    try:
        args, kwargs = decode_payload(row["payload"])
    except ValueError:
        args, kwargs = None, None
    return {
        "id": row["id"],
        "name": row["name"],
        "task_name": row["task_name"],
        "cron_expr": row["cron_expr"],
        "args": args,
        "kwargs": kwargs,
        "payload": row["payload"],
        "queue": row["queue"],
        "priority": row["priority"],
        "max_retries": row["max_retries"],
        "tz": row["tz"],
        "catchup": row["catchup"],
        "enabled": bool(row["enabled"]),
        "next_run": to_iso(row["next_run"]),
        "last_run": to_iso(row["last_run"]),
        "next_run_ts": row["next_run"],
        "last_run_ts": row["last_run"],
        "created_at": to_iso(row["created_at"]),
        "updated_at": to_iso(row["updated_at"]),
    }


def list_schedules(store=None) -> list:
    """Every schedule as a dict, by name.

    Keys: id, name, task_name, cron_expr, args, kwargs, payload (their JSON
    text, as the seed gave it), queue, priority,
    max_retries (None: the task's own), tz (None: the machine's zone), catchup,
    enabled (bool), next_run and last_run (ISO-8601 strings or None),
    next_run_ts and last_run_ts (epoch seconds or None), created_at, updated_at.
    """
    store = store or storage.get_store()
    return [_schedule_dict(r) for r in store.list_schedules()]


def _find(store, name_or_id):
    if isinstance(name_or_id, bool) or not isinstance(name_or_id, (int, str)):
        raise TypeError(f"give a schedule name or id, not {name_or_id!r}")
    if isinstance(name_or_id, str):
        row = store.get_schedule(name_or_id)
        if row is not None or not name_or_id.strip().isdigit():
            return row
        name_or_id = int(name_or_id)
    for row in store.list_schedules():
        if row["id"] == name_or_id:
            return row
    return None


def enable_schedule(name_or_id, store=None) -> bool:
    """Enable a schedule by name or id; False when there is no such schedule.

    A schedule that was disabled starts again from now: its next run is the first
    occurrence after now, so a long pause does not fire a backlog.
    """
    store = store or storage.get_store()
    row = _find(store, name_or_id)
    if row is None:
        return False
    next_run = None
    if not row["enabled"] or row["next_run"] is None:
        next_run = _next_after(row["cron_expr"], row["tz"], now(), row["name"])
    return store.set_schedule_enabled(row["id"], True, next_run)


def disable_schedule(name_or_id, store=None) -> bool:
    """Disable a schedule by name or id (it stays listed); False when there is none."""
    store = store or storage.get_store()
    row = _find(store, name_or_id)
    if row is None:
        return False
    return store.set_schedule_enabled(row["id"], False)


def remove_schedule(name_or_id, store=None) -> bool:
    """Delete a schedule by name or id; False when there is none. Tasks it already
    enqueued are untouched. An app that registers it at import brings it back:
    remove the register_schedule call too (or disable it instead)."""
    store = store or storage.get_store()
    row = _find(store, name_or_id)
    if row is None:
        return False
    _registered.pop((store.path, row["name"]), None)
    return store.delete_schedule(row["id"])


# ---- the standalone scheduler loop --------------------------------------------

def _print_event(event, **fields):
    if event == "schedule.fired":
        ids = fields["task_ids"]
        ids = (", ".join(f"#{i}" for i in ids) if len(ids) <= 5
               else f"#{ids[0]}..#{ids[-1]} ({len(ids)} tasks)")
        when = to_iso(fields["occurrences"][-1])
        extra = f" ({len(fields['occurrences'])} occurrences)" if len(fields["occurrences"]) > 1 else ""
        print(f"liteq scheduler: fired {fields['schedule']!r} for {when}{extra}: "
              f"task {fields['task']} {ids}; next run {to_iso(fields['next_run'])}", flush=True)
    else:
        print(f"liteq scheduler: schedule {fields.get('schedule')!r}: {fields.get('error')}",
              file=sys.stderr, flush=True)


class Scheduler:
    """Fires due schedules in a loop: `Scheduler(check_interval=60).run()`.

    It sleeps until the next fire time, but never longer than check_interval,
    so schedules registered by other processes are seen within that interval.
    Stops on SIGTERM or SIGINT (when run in the main thread), on
    KeyboardInterrupt, and on .stop() from any thread. Sleeps are measured on
    the monotonic clock; fire times are wall-clock times.
    """

    def __init__(self, check_interval: float = 60, db_path=None, log=None):
        if isinstance(check_interval, bool) or not isinstance(check_interval, (int, float)):
            raise TypeError(f"check_interval must be a number of seconds, "
                            f"not {type(check_interval).__name__}")
        if not check_interval > 0:
            raise ValueError(f"check_interval must be > 0, got {check_interval!r}")
        self.check_interval = float(check_interval)
        self.db_path = db_path
        self.log = log or _print_event
        self._stopping = False
        self._lock = threading.Lock()
        self._pipe = None

    @property
    def running(self) -> bool:
        """True while run() runs (the seed's flag). Setting it to False stops run(), from
        any thread, as .stop() does."""
        return self._pipe is not None and not self._stopping

    @running.setter
    def running(self, value):
        if not value:
            self.stop()

    def run_once(self) -> list:
        """Fire what is due now; returns the new task ids."""
        return fire_due(storage.get_store(self.db_path), log=self.log)

    def stop(self) -> None:
        """Ask a running .run() to return; safe from any thread."""
        self._stopping = True
        with self._lock:
            if self._pipe is not None:
                self._nudge(self._pipe[1])

    @staticmethod
    def _nudge(fd):
        try:
            os.write(fd, b"x")
        except OSError:
            pass  # the pipe is full: a wake-up is pending anyway

    def _on_signal(self, signum, frame):
        # Only record and nudge: the loop acts, outside the handler (no lock taken
        # here, since the handler may interrupt the thread that holds it).
        self._stopping = True
        pipe = self._pipe
        if pipe is not None:
            self._nudge(pipe[1])

    def _sleep_for(self, store) -> float:
        nxt = store.next_schedule_time()
        if nxt is None:
            return self.check_interval
        # A small floor, so a clock that reads a hair early cannot spin the loop.
        return min(self.check_interval, max(0.01, nxt - now()))

    def run(self) -> None:
        """Fire schedules until stopped; blocks. A .stop() that came first ends it at once.

        Raises AppStartsLoop (a ConfigError) when reached while liteqd or `liteq`
        imports the app: there it would block the import forever.
        """
        refuse_loop_at_import("Scheduler.run()")
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        with self._lock:
            self._pipe = (r, w)
        saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                saved[sig] = signal.signal(sig, self._on_signal)
        store = storage.get_store(self.db_path)
        try:
            while not self._stopping:
                try:
                    fire_due(store, log=self.log)
                    wait = self._sleep_for(store)
                except DatabaseError as exc:
                    print(f"liteq scheduler: {exc}; retrying", file=sys.stderr, flush=True)
                    wait = min(self.check_interval, 5.0)
                if self._stopping:
                    break
                # select() measures its timeout on the monotonic clock; a signal or
                # .stop() writes to the pipe and ends the wait at once.
                ready, _, _ = select.select([r], [], [], wait)
                if ready:
                    try:
                        while os.read(r, 512):
                            pass
                    except BlockingIOError:
                        pass
        except KeyboardInterrupt:
            pass
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            with self._lock:
                self._pipe = None
                os.close(r)
                os.close(w)
            self._stopping = False  # so the same Scheduler can run again


# ---- CLI ------------------------------------------------------------------------

def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def main(argv=None) -> int:
    """`liteq scheduler --app tasks.py [--interval 60] [--db PATH]`; returns the exit code.

    Imports the app (which registers its tasks and schedules), then fires
    schedules until SIGTERM or Ctrl-C (exit 0). A missing or broken app, or a
    database that cannot be opened, is reported on stderr with exit code 1.
    """
    parser = argparse.ArgumentParser(
        prog="liteq scheduler",
        description="Fire the cron schedules of a LiteQ app (standalone; liteqd does "
                    "this itself, so run this only without the daemon or beside it).")
    parser.add_argument("--app", required=True,
                        help="the app that defines tasks and schedules: a file "
                             "(tasks.py) or a module (myapp.tasks)")
    parser.add_argument("--interval", type=_positive_float, default=60.0,
                        help="longest sleep between checks, in seconds (default 60)")
    parser.add_argument("--db", help="queue database (default: LITEQ_DB, else ./liteq.db)")
    args = parser.parse_args(argv)
    if args.db:
        # The app's own calls (register_schedule, .delay) must use the same file.
        os.environ["LITEQ_DB"] = args.db
        storage.forget_stores()
    try:
        load_app(args.app)
        store = storage.get_store()
        count = len(store.list_schedules())
    except (ConfigError, DatabaseError, ValueError, TypeError) as exc:
        print(f"liteq scheduler: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"liteq scheduler: {count} schedule(s) in {store.path}; checking at least every "
          f"{args.interval:g} s", flush=True)
    Scheduler(check_interval=args.interval).run()
    print("liteq scheduler: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
