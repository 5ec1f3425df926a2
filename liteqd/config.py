"""liteqd settings: command-line flags, each with a LITEQ_* environment variable.

A flag wins over its variable, and the variable over the default, so a systemd
EnvironmentFile can hold the whole configuration.
"""

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from liteq.version import __version__
from liteq.errors import ConfigError
from liteq.rates import parse_rate
from liteq.taskspec import MAX_SECONDS, check_name, check_number


# Children per pool, at most: a typo must not fork-bomb the machine.
MAX_CHILDREN = 512
# Coroutine tasks one child runs at once, at most (--async-concurrency).
MAX_ASYNC_CONCURRENCY = 10_000


@dataclass
class PoolSpec:
    """A group of children that serve the same queues."""
    name: str
    queues: list[str]
    size: int
    # Coroutine tasks each child runs at once; None: the daemon's --async-concurrency.
    async_concurrency: int | None = None


@dataclass
class DaemonConfig:
    """Everything the supervisor needs to run."""
    app: str
    db: str
    pools: list[PoolSpec]
    timeout: float | None = None          # default task time limit, seconds; None = no limit
    kill_grace: float = 2.0        # seconds between the soft timeout and SIGKILL
    graceful_timeout: float = 30.0
    max_tasks_per_child: int = 0   # 0 = never recycle by count
    max_memory_per_child: float = 0.0  # MB; 0 = never recycle by memory
    prefetch: int = 0               # 0: automatic (see Pool.depth)
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    poll_interval: float = 1.0
    log_format: str = "auto"
    log_level: str = "info"
    socket: str | None = None
    socket_group: str | None = None
    scheduler: bool = True
    poll_only: bool = False
    no_ddl: bool = False            # leave schema changes to `liteq db upgrade`
    queue_limits: dict[str, int] = field(default_factory=dict[str, int])   # queue -> most running at once
    queue_rates: dict[str, float] = field(default_factory=dict[str, float])    # queue -> most starts a second
    async_concurrency: int = 1      # coroutine tasks a child runs at once (pool default)
    async_block_threshold: float = 0.5  # seconds a coroutine may hold the loop unwarned
    # Retention: seconds a finished task is kept, per status (0: forever).
    keep_done: float = 7 * 86400.0
    keep_failed: float = 30 * 86400.0
    keep_cancelled: float = 7 * 86400.0
    extra: dict[str, Any] = field(default_factory=dict[str, Any])

    @property
    def queues(self) -> list[str]:
        """Every queue any pool serves, in order."""
        out: list[str] = []
        for p in self.pools:
            out.extend(q for q in p.queues if q not in out)
        return out


# (flag, env var, type, default, help)
OPTIONS: list[tuple[str, str, type[Any], Any, str]] = [
    ("--app", "LITEQ_APP", str, None, "the tasks: a file (tasks.py) or a module (myapp.tasks)"),
    ("--db", "LITEQ_DB", str, "liteq.db", "the queue database: a file path, or a URL"),
    ("--queues", "LITEQ_QUEUES", str, "default", "comma-separated queues of the default pool"),
    ("--concurrency", "LITEQ_CONCURRENCY", int, None,
     "children of the default pool (default: number of CPUs)"),
    ("--pool", "LITEQ_POOLS", str, None,
     "a pool of its own: NAME:QUEUE[,QUEUE...]:SIZE[:ASYNC] (ASYNC: its children's "
     "--async-concurrency); repeat the flag, or separate with ';' in LITEQ_POOLS"),
    ("--async-concurrency", "LITEQ_ASYNC_CONCURRENCY", int, 1,
     "coroutine (async def) tasks each child runs at once on its event loop; sync tasks "
     "still run one at a time, alone in their child (default 1)"),
    ("--async-block-threshold", "LITEQ_ASYNC_BLOCK_THRESHOLD", float, 0.5,
     "with --async-concurrency above 1: log task.loop_blocked when one coroutine holds "
     "its child's event loop this many seconds without awaiting (0: never)"),
    ("--timeout", "LITEQ_TIMEOUT", float, None,
     "time limit in seconds for tasks that set none (default: no limit)"),
    ("--kill-grace", "LITEQ_KILL_GRACE", float, 2.0,
     "seconds after the time limit before the child is SIGKILLed"),
    ("--graceful-timeout", "LITEQ_GRACEFUL_TIMEOUT", float, 30.0,
     "seconds running tasks get to finish on stop or reload"),
    ("--max-tasks-per-child", "LITEQ_MAX_TASKS_PER_CHILD", int, 0,
     "replace a child after this many tasks (0: never)"),
    ("--max-memory-per-child", "LITEQ_MAX_MEMORY_PER_CHILD", float, 0.0,
     "replace a child whose RSS exceeds this many MB after a task (0: never)"),
    ("--prefetch", "LITEQ_PREFETCH", int, 0,
     "tasks a child holds, the running one included: 0 (automatic) sends tasks ahead "
     "to a busy child only while tasks take under 2.5 ms; N holds N even behind a long "
     "task; either way short tasks get more, up to 32 (about 5 ms of queued work)"),
    ("--heartbeat-interval", "LITEQ_HEARTBEAT_INTERVAL", float, 5.0,
     "seconds between heartbeats"),
    ("--stale-after", "LITEQ_STALE_AFTER", float, 30.0,
     "a worker whose heartbeat is older than this is dead and its tasks are reclaimed"),
    ("--poll-interval", "LITEQ_POLL_INTERVAL", float, 1.0,
     "longest sleep when idle (wake-ups and due times cut it short)"),
    ("--log-format", "LITEQ_LOG_FORMAT", str, "auto", "json, console, or auto (json unless a tty)"),
    ("--log-level", "LITEQ_LOG_LEVEL", str, "info", "debug, info, warning, error"),
    ("--socket", "LITEQ_SOCKET", str, None,
     "control socket path (default: derived from the database path)"),
    ("--socket-group", "LITEQ_SOCKET_GROUP", str, None,
     "group allowed to use the control socket (mode 0660)"),
    ("--keep-done", "LITEQ_KEEP_DONE", float, 7 * 86400.0,
     "seconds a done task is kept before the daemon deletes it (0: forever; default 7 days)"),
    ("--keep-failed", "LITEQ_KEEP_FAILED", float, 30 * 86400.0,
     "seconds a failed task is kept (0: forever; default 30 days)"),
    ("--keep-cancelled", "LITEQ_KEEP_CANCELLED", float, None,
     "seconds a cancelled task is kept (0: forever; default: as --keep-done)"),
    ("--no-scheduler", "LITEQ_NO_SCHEDULER", bool, False, "do not fire cron schedules"),
    ("--queue-limit", "LITEQ_QUEUE_LIMITS", str, None,
     "QUEUE=N: at most N tasks of QUEUE run at once over every daemon on the database; "
     "repeat the flag, or separate with ';' in LITEQ_QUEUE_LIMITS"),
    ("--no-ddl", "LITEQ_NO_DDL", bool, False,
     "never create or migrate the queue's tables: missing or older ones are an error "
     "saying to run `liteq db upgrade` (for a database role without DDL rights)"),
    ("--queue-rate", "LITEQ_QUEUE_RATES", str, None,
     "QUEUE=N/s (or N/m, N/min, N/h): at most that many tasks of QUEUE start, evenly "
     "spread, over every daemon on the database; repeat the flag, or separate with ';' "
     "in LITEQ_QUEUE_RATES"),
    ("--poll-only", "LITEQ_POLL_ONLY", bool, False,
     "no wake-up channel (no LISTEN on PostgreSQL, as PgBouncer in transaction mode "
     "needs): find tasks by polling every --poll-interval"),
]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def build_parser(prog: str = "liteqd", description: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of liteqd (and `liteq worker`)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description or "LiteQ supervisor daemon: runs the tasks "
        "of an app with a pool of forked worker processes.",
        epilog="Every option can also be set by the LITEQ_* variable shown with it.")
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    for flag, env, typ, _default, text in OPTIONS:
        dest = flag[2:].replace("-", "_")
        helptext = f"{text} [{env}]"
        if typ is bool:
            parser.add_argument(flag, dest=dest, action="store_true", default=None, help=helptext)
        elif flag in ("--pool", "--queue-limit", "--queue-rate"):
            parser.add_argument(flag, dest=dest, action="append", default=None, help=helptext)
        else:
            # Kept as text here; converted with the env value so both get one error style.
            parser.add_argument(flag, dest=dest, default=None, help=helptext)
    return parser


def _convert(typ: type[Any], raw: Any, source: str) -> Any:
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        low = str(raw).strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{source} must be true or false; got {raw!r}")
    if typ in (int, float):
        try:
            return typ(raw)
        except (TypeError, ValueError):
            kind = "a whole number" if typ is int else "a number"
            raise ConfigError(f"{source} must be {kind}; got {raw!r}") from None
    return raw


def _within_limits(source: str, value: float | None) -> None:
    """ConfigError unless a number flag is finite and within liteq's shared limit on
    seconds (a NaN passes every comparison; 1e300 overflows the daemon's timers)."""
    try:
        check_number(source, value, allow_none=True, maximum=MAX_SECONDS)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _queue_name(source: str, name: str) -> str:
    """ConfigError unless `name` follows liteq's rule for queue names."""
    try:
        return check_name(f"{source}: queue", name, queue=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _async_concurrency(source: str, n: int) -> int:
    """ConfigError unless n is a sensible number of coroutines per child."""
    if not 1 <= n <= MAX_ASYNC_CONCURRENCY:
        raise ConfigError(f"{source} must be from 1 to {MAX_ASYNC_CONCURRENCY} coroutine "
                          f"tasks per child; got {n}")
    return n


def _parse_pool(text: str, source: str) -> PoolSpec:
    parts = text.strip().split(":")
    if len(parts) not in (3, 4) or not parts[0] or not parts[1]:
        raise ConfigError(f"{source}: a pool is NAME:QUEUE[,QUEUE...]:SIZE[:ASYNC], e.g. "
                          f"emails:emails:2 or fetch:fetch:2:100; got {text!r}")
    name, queues, size = parts[:3]
    async_n = None
    if len(parts) == 4:
        try:
            async_n = int(parts[3])
        except ValueError:
            raise ConfigError(f"{source}: pool {name!r} async concurrency must be a whole "
                              f"number; got {parts[3]!r}") from None
        _async_concurrency(f"{source}: pool {name!r} async concurrency", async_n)
    try:
        n = int(size)
    except ValueError:
        raise ConfigError(f"{source}: pool {name!r} size must be a whole number; "
                          f"got {size!r}") from None
    if not 1 <= n <= MAX_CHILDREN:
        raise ConfigError(f"{source}: pool {name!r} needs from 1 to {MAX_CHILDREN} children; "
                          f"got {n}")
    qs = [_queue_name(source, q.strip()) for q in queues.split(",") if q.strip()]
    return PoolSpec(name, qs, n, async_n)


def _parse_queue_limit(text: str, source: str) -> tuple[str, int]:
    queue, sep, number = text.strip().partition("=")
    if not sep or not queue.strip():
        raise ConfigError(f"{source}: a queue limit is QUEUE=N, e.g. emails=5; got {text!r}")
    try:
        n = int(number)
    except ValueError:
        raise ConfigError(f"{source}: the limit of queue {queue.strip()!r} must be a whole "
                          f"number; got {number!r}") from None
    if n < 1:
        raise ConfigError(f"{source}: the limit of queue {queue.strip()!r} must be at least "
                          f"1; got {n}")
    return _queue_name(source, queue.strip()), n


def _parse_queue_rate(text: str, source: str) -> tuple[str, float | None]:
    queue, sep, rate = text.strip().partition("=")
    if not sep or not queue.strip():
        raise ConfigError(f"{source}: a queue rate is QUEUE=N/s (or N/m, N/h), e.g. "
                          f"emails=20/s; got {text!r}")
    try:
        per_second = parse_rate(rate.strip(), f"the rate of queue {queue.strip()!r}")
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return _queue_name(source, queue.strip()), per_second


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """Merge parsed flags with LITEQ_* variables and validate everything."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for flag, var, typ, default, _ in OPTIONS:
        dest = flag[2:].replace("-", "_")
        raw = getattr(args, dest, None)
        source = flag
        if raw is None and env.get(var) not in (None, ""):
            raw, source = env[var], var
        if raw is None:
            values[dest] = default
        elif dest == "pool":
            items = cast("list[str]", raw) if isinstance(raw, list) else str(raw).split(";")
            values[dest] = [_parse_pool(i, source) for i in items if i.strip()]
        elif dest == "queue_limit":
            items = cast("list[str]", raw) if isinstance(raw, list) else str(raw).split(";")
            values[dest] = dict(_parse_queue_limit(i, source) for i in items if i.strip())
        elif dest == "queue_rate":
            items = cast("list[str]", raw) if isinstance(raw, list) else str(raw).split(";")
            values[dest] = dict(_parse_queue_rate(i, source) for i in items if i.strip())
        else:
            values[dest] = _convert(typ, raw, source)
        values[dest + "__source"] = source

    if not values["app"]:
        raise ConfigError("no app given: pass --app tasks.py (a file) or --app myapp.tasks "
                          "(a module), or set LITEQ_APP")
    for key, minimum, strict in (("timeout", 0, True), ("kill_grace", 0, False),
                                 ("graceful_timeout", 0, False),
                                 ("heartbeat_interval", 0, True), ("stale_after", 0, True),
                                 ("poll_interval", 0, True), ("max_tasks_per_child", 0, False),
                                 ("max_memory_per_child", 0, False),
                                 ("keep_done", 0, False), ("keep_failed", 0, False),
                                 ("keep_cancelled", 0, False),
                                 ("async_block_threshold", 0, False)):
        v = values[key]
        if v is not None and (v < minimum or (strict and v <= minimum)):
            op = ">" if strict else ">="
            raise ConfigError(f"{values[key + '__source']} must be {op} {minimum}; got {v:g}")
        _within_limits(values[key + "__source"], v)
    if values["prefetch"] < 0:
        raise ConfigError(f"{values['prefetch__source']} must be 0 (automatic) or more; "
                          f"got {values['prefetch']}")
    _async_concurrency(values["async_concurrency__source"], values["async_concurrency"])
    if values["stale_after"] <= values["heartbeat_interval"]:
        raise ConfigError("--stale-after must be longer than --heartbeat-interval")
    level = values["log_level"].lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{values['log_level__source']} must be one of "
                          f"{', '.join(LOG_LEVELS)}; got {values['log_level']!r}")
    fmt = values["log_format"].lower()
    if fmt not in ("auto", "json", "console"):
        raise ConfigError(f"{values['log_format__source']} must be json, console or auto; "
                          f"got {values['log_format']!r}")

    pools: list[PoolSpec] = values["pool"] or []
    # With --pool, the default pool exists only when --queues/--concurrency ask for it.
    if not pools or getattr(args, "queues", None) is not None or \
            getattr(args, "concurrency", None) is not None or \
            env.get("LITEQ_QUEUES") or env.get("LITEQ_CONCURRENCY"):
        concurrency = values["concurrency"]
        if concurrency is None:
            concurrency = os.cpu_count() or 1
        if not 1 <= concurrency <= MAX_CHILDREN:
            raise ConfigError(f"{values['concurrency__source']} must be from 1 to "
                              f"{MAX_CHILDREN}; got {concurrency}")
        queues = [_queue_name(values["queues__source"], q.strip())
                  for q in values["queues"].split(",") if q.strip()]
        if not queues:
            raise ConfigError(f"{values['queues__source']} names no queue")
        pools = [PoolSpec("default", queues, concurrency)] + pools
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise ConfigError(f"pool names must be unique; got {', '.join(names)}")

    return DaemonConfig(
        app=values["app"], db=values["db"], pools=pools, timeout=values["timeout"],
        kill_grace=values["kill_grace"], graceful_timeout=values["graceful_timeout"],
        max_tasks_per_child=values["max_tasks_per_child"],
        max_memory_per_child=values["max_memory_per_child"], prefetch=values["prefetch"],
        heartbeat_interval=values["heartbeat_interval"], stale_after=values["stale_after"],
        poll_interval=values["poll_interval"], log_format=fmt, log_level=level,
        socket=values["socket"], socket_group=values["socket_group"],
        scheduler=not values["no_scheduler"], poll_only=values["poll_only"],
        no_ddl=values["no_ddl"],
        queue_limits=values["queue_limit"] or {},
        queue_rates=values["queue_rate"] or {},
        async_concurrency=values["async_concurrency"],
        async_block_threshold=values["async_block_threshold"],
        keep_done=values["keep_done"], keep_failed=values["keep_failed"],
        keep_cancelled=(values["keep_done"] if values["keep_cancelled"] is None
                        else values["keep_cancelled"]))
