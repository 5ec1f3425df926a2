"""Outcome statistics: what the backends count as they record outcomes, and how they
write and read them (once; each backend's stats.py holds its statements).

Counters derived from task rows go down when retention deletes rows or an
operator retries a failed task. So each backend counts outcomes where they
happen, in the same transaction as the outcome itself, into a small table
(`task_stats`): one row per (queue, task name, metric, bucket), holding a count
and a sum. A batch of outcomes is tallied in Python first and written with one
UPSERT per batch, never one per task.

Metrics (the `metric` column):
    succeeded, failed, retried, cancelled     bucket 0: how many attempts/tasks
                                              ended so (failed: for good)
    timed_out                                 bucket 0: attempts that hit their
                                              time limit (also counted in retried
                                              or failed, whichever followed)
    run, wait                                 histograms: bucket i counts the
                                              observations in (BUCKETS[i-1],
                                              BUCKETS[i]] (i = len(BUCKETS): above
                                              the last); `total` sums their seconds

Labels stay bounded: a task name gets its own rows only while the table holds
fewer than max_task_names() distinct names; later names are counted under
OTHER_NAME. Queues are the operator's own configuration and are kept as they are.
"""

from __future__ import annotations

import abc

import bisect
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

OUTCOMES = ("succeeded", "failed", "retried", "timed_out", "cancelled")
HISTOGRAMS = ("run", "wait")

# Upper bounds (seconds) of the histogram buckets, shared by run and wait time:
# from a no-op task's few milliseconds to an hour-long job or backlog.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
           60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

# The label every task name past the cap is counted under.
OTHER_NAME = "other"
DEFAULT_MAX_TASK_NAMES = 200

# The error text of an attempt that hit its time limit starts so (liteqd's
# executor raises TaskTimeout; the supervisor writes the same prefix when it
# kills a child past the limit).
_TIMEOUT_PREFIX = "TaskTimeout:"

# (queue, name, metric, bucket)
Key = tuple[str, str, str, int]
# (key, count, total): a cell as written
Cell = tuple[Key, int, float]


def max_task_names() -> int:
    """The cap on distinct task names in the statistics (LITEQ_METRICS_MAX_TASK_NAMES,
    default 200)."""
    raw = os.environ.get("LITEQ_METRICS_MAX_TASK_NAMES", "")
    try:
        value = int(raw) if raw.strip() else DEFAULT_MAX_TASK_NAMES
    except ValueError:
        raise ValueError(f"LITEQ_METRICS_MAX_TASK_NAMES must be a whole number, "
                         f"not {raw!r}") from None
    return max(1, value)


def is_timeout(error_text: str | None) -> bool:
    """True when an attempt's error says it hit its time limit."""
    return bool(error_text) and str(error_text).startswith(_TIMEOUT_PREFIX)


def bucket_of(seconds: float) -> int:
    """The histogram bucket index of an observation (see the module docstring)."""
    return bisect.bisect_left(BUCKETS, seconds)


class NameCache:
    """The task names the statistics table holds, as far as this process knows: read
    from the table once, and again when a batch brings a name not in it (another
    daemon may have added it)."""

    def __init__(self) -> None:
        self.names: set[str] | None = None
        self.overflow: set[str] = set()     # names seen past the cap (not re-read for)

    def refresh(self, tally: Tally, read: Callable[[], Iterable[str]]) -> None:
        """Read the names again with `read()` when the batch has one not seen yet."""
        wanted = {key[1] for key in tally.cells}
        if self.names is None or not wanted <= self.names | self.overflow:
            self.names = set(read())


class Tally:
    """The statistics of one batch of outcomes, before they are written."""

    def __init__(self) -> None:
        self.cells: dict[Key, list[float]] = {}

    def __bool__(self) -> bool:
        return bool(self.cells)

    def add(self, queue: str, name: str, metric: str, bucket: int = 0,
            count: int = 1, total: float = 0.0) -> None:
        """Add `count` to a cell (and `total` to its sum)."""
        cell = self.cells.setdefault((str(queue), str(name), metric, bucket), [0, 0.0])
        cell[0] += count
        cell[1] += total

    def outcome(self, queue: str, name: str, outcome: str, error: str | None = None) -> None:
        """Count one outcome (and a time-out, when the error says so)."""
        self.add(queue, name, outcome)
        if outcome in ("failed", "retried") and is_timeout(error):
            self.add(queue, name, "timed_out")

    def observe(self, queue: str, name: str, metric: str, seconds: float | None) -> None:
        """Add one observation to a histogram (negative times, from clock skew, count
        as 0; unknown ones are skipped)."""
        if seconds is None:
            return
        seconds = max(0.0, float(seconds))
        self.add(queue, name, metric, bucket_of(seconds), 1, seconds)

    def attempt(self, row: Any, outcome: str, error: str | None,
                started: float | None, finished: float | None) -> None:
        """Count one recorded attempt: its outcome, run time and wait time. row (a
        mapping) holds the task's queue, name and run_at (the due time this attempt
        started after). On the daemon's hot path, once per outcome: kept inline."""
        queue, name = row["queue"], row["name"]
        cells = self.cells
        key = (queue, name, outcome, 0)
        cell = cells.get(key)
        if cell is None:
            cells[key] = [1, 0.0]
        else:
            cell[0] += 1
        if error is not None and outcome != "succeeded" and error.startswith(_TIMEOUT_PREFIX):
            self.add(queue, name, "timed_out")
        if started is None:
            return
        run_at = row["run_at"]
        for metric, seconds in (("run", None if finished is None else finished - started),
                                ("wait", None if run_at is None else started - run_at)):
            if seconds is None:
                continue
            if seconds < 0:
                seconds = 0.0   # clock skew between the daemon and the database
            key = (queue, name, metric, bisect.bisect_left(BUCKETS, seconds))
            cell = cells.get(key)
            if cell is None:
                cells[key] = [1, seconds]
            else:
                cell[0] += 1
                cell[1] += seconds

    def capped(self, cache: NameCache, cap: int) -> list[Cell]:
        """The cells as (key, count, total), sorted by key (every writer locks rows in
        one order, so concurrent batches cannot deadlock), names past the cap merged
        into OTHER_NAME. The cache (names the table holds) is extended in place."""
        known: set[str] = cache.names if cache.names is not None else set()
        merged: dict[Key, list[float]] = {}
        for (queue, name, metric, bucket), (count, total) in self.cells.items():
            if name not in known:
                if len(known) < cap:
                    known.add(name)
                else:
                    cache.overflow.add(name)
                    name = OTHER_NAME
            cell = merged.setdefault((queue, name, metric, bucket), [0, 0.0])
            cell[0] += count
            cell[1] += total
        return [(key, int(c), float(s)) for key, (c, s) in sorted(merged.items())]


def reclaimed_tally(rows: Iterable[Any]) -> Tally:
    """The tally of reclaimed tasks (rows with queue, name and the status they got):
    back to pending is a retry, failed is a failure for good."""
    tally = Tally()
    for r in rows:
        tally.outcome(r["queue"], r["name"], "failed" if r["status"] == "failed" else "retried")
    return tally


# ---- writing and reading, once for every backend ------------------------------------------

def write_tally(tally: Tally, cache: NameCache, names: Callable[[], Iterable[str]],
                upsert: Callable[[list[Cell]], None]) -> None:
    """Add a batch's tally to task_stats: names() reads the task names the table holds
    (only when the batch brings one this process has not seen), upsert(cells) adds
    the cells, capped and in key order, with the backend's statement."""
    if not tally:
        return
    cache.refresh(tally, names)
    upsert(tally.capped(cache, max_task_names()))


@dataclass(frozen=True)
class StatsSQL:
    """A backend's statements that read the statistics and the attempts' errors:
    read gives [{queue, name, metric, bucket, count, total}] (shards added up);
    errors_of, with a task id, [{attempt, error, finished_at}] oldest first."""

    read: str
    errors_of: str


class StatsReads(abc.ABC):
    """Mixin of the backends: what the panel, liteq.monitoring and liteq.metrics read
    of the statistics. The backend supplies stats_sql and _stats_rows(sql, params),
    which runs one of them (with its driver's error handling)."""

    stats_sql: ClassVar[StatsSQL]

    @abc.abstractmethod
    def _stats_rows(self, sql: str, params: Sequence[object]) -> list[dict[str, Any]]:
        """Run one of stats_sql's statements; its rows as dicts."""

    def task_errors(self, task_id: int) -> list[dict[str, Any]]:
        """Every recorded attempt's error of a task, oldest first:
        [{attempt, error, finished_at}]."""
        return self._stats_rows(self.stats_sql.errors_of, (int(task_id),))

    def task_stats(self) -> list[dict[str, Any]]:
        """The outcome statistics: [{queue, name, metric, bucket, count, total}]."""
        return self._stats_rows(self.stats_sql.read, ())
