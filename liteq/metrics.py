"""Prometheus metrics for a LiteQ database, read at scrape time.

    from prometheus_client import REGISTRY
    from liteq.metrics import LiteQCollector
    REGISTRY.register(LiteQCollector())          # or: db="/var/lib/app/liteq.db"

`liteq monitor` serves the same metrics on /metrics. Every scrape runs a few
indexed queries and one status request to the daemon (2 s timeout); nothing is
kept in memory between scrapes, so several panels or scrapers agree.

Families (all gauges unless noted):

    liteq_tasks{queue,status}                   tasks by queue and status
    liteq_tasks_processed_total{queue}          counter: tasks that finished done
    liteq_tasks_failed_total{queue}             counter: tasks that finished failed
    liteq_oldest_pending_age_seconds{queue}     age of the oldest due pending task (0: none)
    liteq_daemon_up                             1 when liteqd answers on its socket
    liteq_pool_children{pool}                   live children per pool (absent when down)
    liteq_pool_size{pool}                       the pool's target size (absent when down)
    liteq_worker_heartbeat_age_seconds{worker_id}   seconds since each daemon's heartbeat

The two counters are the database's counts of done and failed rows. Purging old
tasks or retrying failed ones lowers them; Prometheus' rate() and increase()
treat a drop as a counter reset, so graphs stay correct apart from that one
sample.
"""

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import control
from .backends import TASK_STATUSES, Backend, get_backend
from .timeutil import now

CONTROL_TIMEOUT = 2.0  # seconds a scrape waits for the daemon's status reply


def daemon_status(db: str | None = None, timeout: float = CONTROL_TIMEOUT) -> dict[str, Any] | None:
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

    def __init__(self, db: str | None = None, store_factory: Callable[[], Backend] | None = None,
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
        yield from self._task_families(store, t)
        yield from self._daemon_families(store, t)

    def _task_families(self, store: Backend, t: float) -> list[Metric]:
        counts: dict[tuple[str, str], int] = {}
        for row in store.queue_stats():
            counts[(row["queue"], row["status"])] = row["count"]
        queues = sorted(set(store.list_queues()) | {q for q, _ in counts})

        tasks = GaugeMetricFamily("liteq_tasks", "Tasks in the database by queue and status.",
                                  labels=["queue", "status"])
        processed = CounterMetricFamily("liteq_tasks_processed",
                                        "Tasks that finished successfully (done rows).",
                                        labels=["queue"])
        failed = CounterMetricFamily("liteq_tasks_failed",
                                     "Tasks that failed for good (failed rows).",
                                     labels=["queue"])
        for queue in queues:
            for status in TASK_STATUSES:
                tasks.add_metric([queue, status], counts.get((queue, status), 0))
            processed.add_metric([queue], counts.get((queue, "done"), 0))
            failed.add_metric([queue], counts.get((queue, "failed"), 0))

        age = GaugeMetricFamily("liteq_oldest_pending_age_seconds",
                                "Seconds the oldest due pending task of a queue has waited "
                                "(0 when nothing is due).", labels=["queue"])
        oldest = {r["queue"]: r["oldest_run_at"] for r in store.oldest_pending()}
        for queue in queues:
            run_at = oldest.get(queue)
            age.add_metric([queue], max(0.0, t - run_at) if run_at is not None else 0.0)
        return [tasks, processed, failed, age]

    def _daemon_families(self, store: Backend, t: float) -> list[Metric]:
        st = self._status_fn()
        up = GaugeMetricFamily("liteq_daemon_up",
                               "1 when liteqd answers on its control socket, else 0.")
        up.add_metric([], 1 if st is not None else 0)
        out: list[Metric] = [up]
        if st is not None:
            children = GaugeMetricFamily("liteq_pool_children",
                                         "Live worker children per pool.", labels=["pool"])
            size = GaugeMetricFamily("liteq_pool_size", "Target number of children per pool.",
                                     labels=["pool"])
            for pool in st.get("pools", ()):
                children.add_metric([pool["name"]], len(pool.get("children", ())))
                size.add_metric([pool["name"]], pool.get("size", 0))
            out += [children, size]
        beat = GaugeMetricFamily("liteq_worker_heartbeat_age_seconds",
                                 "Seconds since each daemon last wrote its heartbeat.",
                                 labels=["worker_id"])
        for w in store.list_workers():
            if w.get("last_heartbeat") is not None:
                beat.add_metric([str(w["worker_id"])], max(0.0, t - w["last_heartbeat"]))
        out.append(beat)
        return out


def render(collector: Collector) -> bytes:
    """The Prometheus text exposition of one collector (a private registry)."""
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
