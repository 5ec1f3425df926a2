"""Prometheus metrics for a LiteQ database, read at scrape time.

    from prometheus_client import REGISTRY
    from liteq.metrics import LiteQCollector
    REGISTRY.register(LiteQCollector())          # or: db="/var/lib/app/liteq.db"

`liteq monitor` serves the same metrics on /metrics. Every scrape runs a few
indexed queries and one status request to the daemon (2 s timeout); nothing is
kept in memory between scrapes, so several panels or scrapers agree.

Families (gauges unless noted):

    liteq_build_info{version}                   1, naming this LiteQ's version
    liteq_tasks{queue,status}                   tasks by queue and status (rows now;
                                                running: started by a child)
    liteq_tasks_claimed{queue}                  tasks a daemon claimed that no child
                                                has started yet (status running)
    liteq_tasks_processed_total{queue}          counter: tasks that succeeded
    liteq_tasks_failed_total{queue}             counter: tasks that failed for good
    liteq_task_outcomes_total{queue,task,outcome}   counter, outcome one of
        succeeded, failed (for good), retried (an attempt failed and the task went
        back to wait), timed_out (attempts that hit their time limit; each also
        counted as retried or failed), cancelled
    liteq_task_run_seconds{queue,task}          histogram: started -> finished, per attempt
    liteq_task_wait_seconds{queue,task}         histogram: due (run_at) -> started, per attempt
    liteq_oldest_pending_age_seconds{queue}     age of the oldest due pending task (0: none)
    liteq_daemon_up                             1 when liteqd answers on its socket
    liteq_pool_children{host,pool}              live children per pool (absent when down)
    liteq_pool_size{host,pool}                  the pool's target size (absent when down)
    liteq_workers{host}                         daemons with a heartbeat row, per host
    liteq_worker_heartbeat_age_seconds{host}    seconds since the stalest heartbeat of
                                                the host's daemons

The counters and histograms come from the task_stats table, which the daemons
update in the same transaction as each batch of outcomes they record (and
liteq.cancel() as it cancels): they count every daemon of the queue, survive
restarts, and never go down when retention deletes finished tasks or an operator
retries a failed one. Task names past LITEQ_METRICS_MAX_TASK_NAMES (default 200)
are counted under task="other". Worker labels are the host and pool, never a pid
or a daemon's random id, so series survive restarts.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from . import control
from .version import __version__
from .backends import TASK_STATUSES, get_backend
from .backends.stats import BUCKETS, HISTOGRAMS, OUTCOMES
from .timeutil import now

_HISTOGRAM_HELP = {
    "run": ("liteq_task_run_seconds", "Seconds each attempt ran (started to finished)."),
    "wait": ("liteq_task_wait_seconds",
             "Seconds each attempt waited from its due time (run_at) until it started."),
}

CONTROL_TIMEOUT = 2.0  # seconds a scrape waits for the daemon's status reply


def daemon_status(db: str | None = None,
                  timeout: float = CONTROL_TIMEOUT) -> dict[str, Any] | None:
    """The daemon's status reply (pools without queue counts), or None when it is down."""
    try:
        return control.status(include_queues=False, db=db, timeout=timeout)
    except (control.DaemonNotRunning, control.ControlError, TimeoutError, OSError, ValueError):
        return None


class LiteQCollector(Collector):
    """A prometheus-client collector that reads one LiteQ database at each scrape.

    db: the database path (default: LITEQ_DB, read at each scrape).
    store_factory: a callable returning the backend to read with (default: the
    calling thread's cached backend for db); the web panel passes its own.
    """

    def __init__(self, db: str | None = None, store_factory: Callable[[], Any] | None = None,
                 status_fn: Callable[[], dict[str, Any] | None] | None = None) -> None:
        self.db = db
        self._store_factory = store_factory or (lambda: get_backend(self.db))
        self._status_fn = status_fn or (lambda: daemon_status(self.db))

    def describe(self) -> list[Metric]:
        """No up-front description: the families depend on what is in the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families described in the module docstring."""
        store = self._store_factory()
        t = now()
        build = GaugeMetricFamily("liteq_build_info", "The LiteQ version serving these "
                                  "metrics (always 1).", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        yield from self._task_families(store, t)
        yield from self._daemon_families(store, t)

    def _task_families(self, store: Any, t: float) -> list[Metric]:
        counts: dict[tuple[str, str], int] = {}
        for row in store.queue_stats():
            counts[(row["queue"], row["status"])] = row["count"]
        cells = store.task_stats()
        queues = sorted(set(store.list_queues()) | {q for q, _ in counts}
                        | {c["queue"] for c in cells})
        claimed = claimed_family(store, counts, queues)

        tasks = GaugeMetricFamily("liteq_tasks", "Tasks in the database by queue and status.",
                                  labels=["queue", "status"])
        for queue in queues:
            for status in TASK_STATUSES:
                tasks.add_metric([queue, status], counts.get((queue, status), 0))
        out: list[Metric] = [tasks, *_counter_families(queues, cells),
                             *_histogram_families(cells)]

        age = GaugeMetricFamily("liteq_oldest_pending_age_seconds",
                                "Seconds the oldest due pending task of a queue has waited "
                                "(0 when nothing is due).", labels=["queue"])
        oldest = {r["queue"]: r["oldest_run_at"] for r in store.oldest_pending()}
        for queue in queues:
            run_at = oldest.get(queue)
            age.add_metric([queue], max(0.0, t - run_at) if run_at is not None else 0.0)
        out.insert(1, claimed)
        out.append(age)
        return out

    def _daemon_families(self, store: Any, t: float) -> list[Metric]:
        st = self._status_fn()
        up = GaugeMetricFamily("liteq_daemon_up",
                               "1 when liteqd answers on its control socket, else 0.")
        up.add_metric([], 1 if st is not None else 0)
        out: list[Metric] = [up]
        if st is not None:
            host = str(st.get("hostname") or socket.gethostname())
            children = GaugeMetricFamily("liteq_pool_children",
                                         "Live worker children per pool.",
                                         labels=["host", "pool"])
            size = GaugeMetricFamily("liteq_pool_size", "Target number of children per pool.",
                                     labels=["host", "pool"])
            for pool in st.get("pools", []):
                children.add_metric([host, pool["name"]], len(pool.get("children", [])))
                size.add_metric([host, pool["name"]], pool.get("size", 0))
            out += [children, size]
        daemons: dict[str, int] = {}
        stalest: dict[str, float] = {}
        for w in store.list_workers():
            host = str(w.get("hostname") or "unknown")
            daemons[host] = daemons.get(host, 0) + 1
            if w.get("last_heartbeat") is not None:
                age = max(0.0, t - w["last_heartbeat"])
                stalest[host] = max(age, stalest.get(host, 0.0))
        workers = GaugeMetricFamily("liteq_workers",
                                    "Daemons with a heartbeat row in the database, per host.",
                                    labels=["host"])
        beat = GaugeMetricFamily("liteq_worker_heartbeat_age_seconds",
                                 "Seconds since the stalest heartbeat of the host's daemons.",
                                 labels=["host"])
        for host in sorted(daemons):
            workers.add_metric([host], daemons[host])
            if host in stalest:
                beat.add_metric([host], stalest[host])
        out += [workers, beat]
        return out


def _counter_families(queues: Iterable[str], cells: list[dict[str, Any]]) -> list[Metric]:
    """The outcome counters: per queue (processed, failed) and per queue, task name and
    outcome. Every outcome of a (queue, task) seen is given, 0 when none happened, so
    rate() has a series from the first scrape."""
    per_queue: dict[tuple[str, str], int] = {}
    per_task: dict[tuple[str, str, str], int] = {}
    for c in cells:
        if c["metric"] in OUTCOMES:
            key = (c["queue"], c["name"], c["metric"])
            per_task[key] = per_task.get(key, 0) + int(c["count"])
            per_queue[(c["queue"], c["metric"])] = \
                per_queue.get((c["queue"], c["metric"]), 0) + int(c["count"])
    processed = CounterMetricFamily("liteq_tasks_processed",
                                    "Tasks that succeeded (counted as recorded; retention "
                                    "never lowers it).", labels=["queue"])
    failed = CounterMetricFamily("liteq_tasks_failed",
                                 "Tasks that failed for good (counted as recorded; "
                                 "retention and retries never lower it).", labels=["queue"])
    for queue in queues:
        processed.add_metric([queue], per_queue.get((queue, "succeeded"), 0))
        failed.add_metric([queue], per_queue.get((queue, "failed"), 0))
    outcomes = CounterMetricFamily("liteq_task_outcomes",
                                   "Outcomes by queue, task name and outcome (succeeded, "
                                   "failed, retried, timed_out, cancelled).",
                                   labels=["queue", "task", "outcome"])
    for queue, name in sorted({(q, n) for q, n, _ in per_task}):
        for outcome in OUTCOMES:
            outcomes.add_metric([queue, name, outcome], per_task.get((queue, name, outcome), 0))
    return [processed, failed, outcomes]


def _histogram_families(cells: list[dict[str, Any]]) -> list[Metric]:
    """The run and wait time histograms per queue and task name, cumulative buckets
    built from task_stats' per-bucket counts."""
    out: list[Metric] = []
    for metric in HISTOGRAMS:
        name, help_text = _HISTOGRAM_HELP[metric]
        family = HistogramMetricFamily(name, help_text, labels=["queue", "task"])
        series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        for c in cells:
            if c["metric"] != metric:
                continue
            counts, total = series.setdefault((c["queue"], c["name"]),
                                              ([0] * (len(BUCKETS) + 1), [0.0]))
            index = min(max(int(c["bucket"]), 0), len(BUCKETS))
            counts[index] += int(c["count"])
            total[0] += float(c["total"] or 0.0)
        for (queue, task), (counts, total) in sorted(series.items()):
            buckets: list[tuple[str, float]] = []
            running = 0
            for bound, n in zip([*(_le(b) for b in BUCKETS), "+Inf"], counts):
                running += n
                buckets.append((bound, running))
            family.add_metric([queue, task], buckets, sum_value=total[0])
        out.append(family)
    return out


def _le(bound: float) -> str:
    """A bucket bound as Prometheus clients write it (1.0, 0.005, 3600.0)."""
    return repr(float(bound))




def claimed_family(store: Any, counts: dict[tuple[str, str], int],
                   queues: list[str]) -> GaugeMetricFamily:
    """liteq_tasks_claimed{queue}, taking those tasks out of counts' running ones:
    "running" means a child started the task; a claimed one waits for a child."""
    family = GaugeMetricFamily("liteq_tasks_claimed",
                               "Tasks a daemon claimed that no child has started yet.",
                               labels=["queue"])
    by_queue = store.claimed_counts()
    for queue in queues:
        running = counts.get((queue, "running"), 0)
        n = min(by_queue.get(queue, 0), running)
        if running:
            counts[(queue, "running")] = running - n
        family.add_metric([queue], n)
    return family


def render(collector: Collector) -> bytes:
    """The Prometheus text exposition of one collector (a private registry)."""
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
