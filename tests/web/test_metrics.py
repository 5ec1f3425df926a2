"""Metrics that survive retention and retries, and every
attempt's error: real daemons on each backend, /metrics read as Prometheus reads it.

Counters are counted where outcomes are recorded (task_stats), so with retention
deleting finished tasks within a second, no scrape may ever see one go down.
"""

import json
import math
import os
import sqlite3
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import liteq
from liteq import backends
from liteq.backends.stats import BUCKETS, OTHER_NAME
from liteq.metrics import LiteQCollector, render

from support.processes import wait_for
from support.task_table import all_tasks, fresh_backend, put_tasks

OUTCOMES = ("succeeded", "failed", "retried", "timed_out", "cancelled")


# ---- reading the metrics ------------------------------------------------------------

def scrape(db):
    """{(sample name, sorted labels): value} of one scrape, through the exposition
    format and prometheus_client's parser (a malformed line is an error)."""
    text = render(LiteQCollector(db, store_factory=lambda: backends.get_backend(db),
                                 status_fn=lambda: None)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    _check_text(text)
    return out


def _check_text(text):
    """What the lenient parser lets through: every sample line is NAME{LABELS} VALUE
    with a finite or +Inf value, and each family has one HELP and one TYPE."""
    seen_type = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in seen_type, f"two TYPE lines for {name}"
            seen_type.add(name)
        elif line and not line.startswith("#"):
            name_labels, _, value = line.rpartition(" ")
            assert name_labels and (value in ("+Inf", "-Inf", "NaN") or float(value) == float(value)), line
            name = name_labels.split("{", 1)[0]
            assert any(name == t or name.startswith(t + "_") for t in seen_type), line


def counters(sample):
    """The counter and histogram samples of a scrape (what may never go down)."""
    return {k: v for k, v in sample.items()
            if k[0].endswith("_total") or k[0].endswith("_bucket")
            or k[0].endswith("_count") or k[0].endswith("_sum")}


def value(sample, name, **labels):
    """One sample's value (0 when absent)."""
    return sample.get((name, tuple(sorted(labels.items()))), 0.0)


def outcome(sample, task, what, queue="default"):
    return value(sample, "liteq_task_outcomes_total", queue=queue, task=task, outcome=what)


class Scrapes:
    """Every scrape of a test, each checked against the one before: no counter or
    histogram sample goes down or disappears."""

    def __init__(self, db):
        self.db = db
        self.last = {}
        self.count = 0

    def take(self):
        now = counters(scrape(self.db))
        for key, before in self.last.items():
            assert key in now, f"{key} disappeared"
            assert now[key] >= before, f"{key} went down: {before} -> {now[key]}"
        self.last = now
        self.count += 1
        return now

    def until(self, predicate, timeout, message):
        """Scrape until predicate(scrape) holds."""
        wait_for(lambda: predicate(self.take()), timeout, message)
        return self.last


def check_histograms(sample):
    """Buckets are cumulative, the +Inf bucket is the count, and the bounds are BUCKETS."""
    series = {}
    for (name, labels), v in sample.items():
        for base in ("liteq_task_run_seconds", "liteq_task_wait_seconds"):
            if name == base + "_bucket":
                d = dict(labels)
                le = d.pop("le")
                series.setdefault((base, tuple(sorted(d.items()))), {})[le] = v
    assert series, "no histogram series"
    for (base, labels), buckets in series.items():
        bounds = sorted(buckets, key=lambda le: math.inf if le == "+Inf" else float(le))
        assert [float(b) for b in bounds[:-1]] == list(BUCKETS) and bounds[-1] == "+Inf"
        values = [buckets[b] for b in bounds]
        assert values == sorted(values), (base, labels, values)
        assert values[-1] == sample[(base + "_count", labels)], (base, labels)
        assert sample[(base + "_sum", labels)] >= 0
    return series


# ---- counters, retention and restarts ---------------------------------------------------

def test_counters_never_drop_with_retention_and_retries(db, daemons, app, workdir):
    d = daemons.start("--keep-done", "0.3", "--keep-failed", "0.3", "--keep-cancelled", "0.3")
    scrapes = Scrapes(db)
    scrapes.take()
    rounds, adds, fails, flakies = 4, 60, 3, 4
    for r in range(rounds):
        with fresh_backend(db) as backend:
            put_tasks(backend, "add", json.dumps([[r, n] for n in range(adds)]), adds)
            put_tasks(backend, "always_fail", json.dumps([[f"boom {r}"]] * fails), fails,
                      max_retries=0)
        for n in range(flakies):
            # Fails once, then succeeds: one retry each.
            app.flaky.delay(os.path.join(workdir, f"flaky-{r}-{n}"), 1)
        done_so_far = (r + 1) * (adds + flakies)
        scrapes.until(lambda s: value(s, "liteq_tasks_processed_total", queue="default")
                      >= done_so_far, 60, lambda: d.dump())

    s = scrapes.until(lambda s: outcome(s, "always_fail", "failed") >= rounds * fails, 30,
                      lambda: d.dump())
    # Retention deletes what they count: every finished row goes, the counters stay.
    wait_for(lambda: not any(t["status"] in ("done", "failed") for t in all_tasks(db)),
             30, lambda: d.dump())
    assert d.events("tasks.pruned")
    s = scrapes.take()
    assert value(s, "liteq_tasks_processed_total", queue="default") == rounds * (adds + flakies)
    assert value(s, "liteq_tasks_failed_total", queue="default") == rounds * fails
    assert outcome(s, "add", "succeeded") == rounds * adds
    assert outcome(s, "flaky", "succeeded") == rounds * flakies
    assert outcome(s, "flaky", "retried") == rounds * flakies
    assert outcome(s, "always_fail", "failed") == rounds * fails
    assert value(s, "liteq_tasks", queue="default", status="done") == 0

    # Every attempt has a run time and a wait time, counted in cumulative buckets.
    series = check_histograms(s)
    assert ("liteq_task_run_seconds", (("queue", "default"), ("task", "add"))) in series
    attempts = {"add": rounds * adds, "flaky": 2 * rounds * flakies,
                "always_fail": rounds * fails}
    for task, n in attempts.items():
        for base in ("liteq_task_run_seconds", "liteq_task_wait_seconds"):
            assert value(s, base + "_count", queue="default", task=task) == n, (base, task)
    assert scrapes.count > rounds

    # A retried task counts again when it runs again; nothing is taken back.
    with fresh_backend(db) as backend:
        (again,) = put_tasks(backend, "always_fail", json.dumps([["once more"]]), 1,
                               max_retries=0)
    scrapes.until(lambda s: outcome(s, "always_fail", "failed") == rounds * fails + 1, 30,
                  lambda: d.dump())
    assert backends.get_backend(db).retry_failed(task_id=again) == 1
    scrapes.until(lambda s: outcome(s, "always_fail", "failed") == rounds * fails + 2, 30,
                  lambda: d.dump())

    # A restart keeps them: they live in the database, not in a process.
    d.stop()
    d2 = daemons.start("--keep-done", "0.3")
    s = scrapes.take()
    assert outcome(s, "add", "succeeded") == rounds * adds
    assert d2.alive()


def test_cancels_and_time_outs_are_counted(db, daemons, app):
    with fresh_backend(db) as backend:
        later = put_tasks(backend, "add", json.dumps([[1, 1]] * 3), 3)   # no daemon yet
        (slow,) = put_tasks(backend, "slow", json.dumps([[30]]), 1, timeout=0.5,
                            max_retries=1, retry_delay=0.05)
    scrapes = Scrapes(db)
    for tid in later:
        assert liteq.cancel_task(tid)       # no daemon involved
    s = scrapes.take()
    assert outcome(s, "add", "cancelled") == 3
    d = daemons.start("--keep-cancelled", "0.3")
    # Two attempts that hit the limit: one retried, the second failed for good.
    s = scrapes.until(lambda s: outcome(s, "slow", "failed") == 1, 60, lambda: d.dump())
    assert outcome(s, "slow", "timed_out") == 2
    assert outcome(s, "slow", "retried") == 1
    wait_for(lambda: not any(t["status"] == "cancelled" for t in all_tasks(db)), 30,
             lambda: d.dump())
    assert outcome(scrapes.take(), "add", "cancelled") == 3
    errors = liteq.get_task_status(slow)["errors"]
    assert [e["attempt"] for e in errors] == [1, 2]
    assert all(e["error"].startswith("TaskTimeout:") for e in errors), errors


def test_worker_metrics_have_stable_labels(db, daemons):
    d = daemons.start()
    text = render(LiteQCollector(db)).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.value for s in fams["liteq_daemon_up"].samples] == [1]
    children = fams["liteq_pool_children"].samples
    assert children and all(set(s.labels) == {"host", "pool"} for s in children)
    beats = fams["liteq_worker_heartbeat_age_seconds"].samples
    assert beats and all(set(s.labels) == {"host"} for s in beats)
    assert [s.labels["version"] for s in fams["liteq_build_info"].samples] == \
        [liteq.__version__]
    assert d.alive()


def test_task_names_past_the_cap_count_as_other(backend, monkeypatch):
    monkeypatch.setenv("LITEQ_METRICS_MAX_TASK_NAMES", "3")
    names = [f"job{n}" for n in range(6)]
    for name in names:
        put_tasks(backend, name, json.dumps([[]]), 1)
    rows = backend.claim("w1", ["default"], 10)
    t = time.time()
    # Two batches: the cap holds across them, and names already counted stay themselves.
    backend.record_outcomes("w1", done=[(r["id"], "null", t, t) for r in rows[:4]])
    backend.record_outcomes("w1", done=[(r["id"], "null", t, t) for r in rows[4:]])
    backend.record_outcomes("w1", done=[])
    s = scrape(backend.target)
    counted = {dict(k[1])["task"]: v for k, v in s.items()
               if k[0] == "liteq_task_outcomes_total" and dict(k[1])["outcome"] == "succeeded"}
    assert sum(counted.values()) == 6
    assert len(counted) == 4 and counted[OTHER_NAME] == 3, counted
    check_histograms(s)


# ---- every attempt's error -------------------------------------------------------------------

def test_every_attempts_error_is_kept(db, daemons, app, workdir):
    daemons.start()
    ok = app.flaky.delay(os.path.join(workdir, "ok"), 2)        # fails twice, then succeeds
    bad = app.flaky.delay(os.path.join(workdir, "bad"), 10)     # fails all 4 attempts
    fine = app.add.delay(1, 2)
    for tid in (ok, bad, fine):
        liteq.wait_for_task(tid, timeout=60)

    st = liteq.get_task_status(ok)
    assert st["status"] == "done" and st["error"] is None
    assert [e["attempt"] for e in st["errors"]] == [1, 2]
    assert [e["error"].splitlines()[0] for e in st["errors"]] == [
        "RuntimeError: flaky failure number 1", "RuntimeError: flaky failure number 2"]
    assert all(e["finished_at"] for e in st["errors"])

    st = liteq.get_task_status(bad)
    assert st["status"] == "failed"
    assert [e["attempt"] for e in st["errors"]] == [1, 2, 3, 4]
    assert st["errors"][-1]["error"] == st["error"]
    assert st.errors == st["errors"]

    assert liteq.get_task_status(fine)["errors"] == []


def test_errors_of_a_reclaimed_task_and_of_the_async_reader(backend):
    import asyncio
    (tid,) = put_tasks(backend, "job", json.dumps([[]]), 1, max_retries=0)
    assert backend.claim("w-dead", ["default"], 1)
    assert backend.reclaim(["w-dead"], reason="its worker died") == [(tid, "failed")]
    errors = asyncio.run(liteq.aget_task_status(tid))["errors"]
    assert [e["attempt"] for e in errors] == [1]
    assert errors[0]["error"] == "its worker died, and the task has no retries left"
    assert errors[0]["error"] == liteq.get_task_status(tid)["error"]
    s = scrape(backend.target)
    assert outcome(s, "job", "failed") == 1


def test_errors_go_with_their_task(backend):
    (tid,) = put_tasks(backend, "job", json.dumps([[]]), 1, max_retries=0)
    assert backend.claim("w1", ["default"], 1)
    t = time.time() - 100
    backend.record_outcomes("w1", failed=[(tid, "ValueError: x", t, t)])
    assert len(backend.task_errors(tid)) == 1
    assert backend.prune("failed", 10, 100) == 1
    assert backend.task_errors(tid) == []
    assert outcome(scrape(backend.target), "job", "failed") == 1   # the count stays


# ---- upgrading a version 4 queue ------------------------------------------------------------------

def test_a_version_4_sqlite_file_is_upgraded(db_path):
    from liteq.backends.sqlite import schema
    backend = backends.open_backend(db_path)
    (tid,) = put_tasks(backend, "job", json.dumps([[]]), 1, max_retries=0)
    backend.claim("w1", ["default"], 1)
    t = time.time()
    backend.record_outcomes("w1", failed=[(tid, "ValueError: old", t, t)])
    backend.close()
    raw = sqlite3.connect(db_path)
    with raw:   # back to what version 4 had
        for sql in ("DROP TRIGGER tasks_drop_errors", "DROP TABLE task_errors",
                    "DROP TABLE task_stats", "PRAGMA user_version = 4"):
            raw.execute(sql)
    raw.close()
    backends.forget_backends()
    backend = backends.open_backend(db_path)
    try:
        assert [e["error"] for e in backend.task_errors(tid)] == ["ValueError: old"]
        assert backend.task_stats() == []
        (n,) = put_tasks(backend, "job", json.dumps([[]]), 1)
        backend.claim("w1", ["default"], 1)
        backend.record_outcomes("w1", done=[(n, "null", t, t)])
        assert [c["metric"] for c in backend.task_stats()].count("succeeded") == 1
    finally:
        backend.close()
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    raw.close()


def test_a_version_4_postgres_schema_is_upgraded():
    from support import pg_helpers
    from liteq.backends.postgres import schema
    server = pg_helpers.server_url()
    name, url = pg_helpers.create_schema(server)
    try:
        statements = ["CREATE TABLE liteq_migrations (version integer PRIMARY KEY, "
                      "applied_at timestamptz NOT NULL DEFAULT now())"]
        for version in range(1, 5):
            statements += [*schema._MIGRATIONS[version],
                           f"INSERT INTO liteq_migrations (version) VALUES ({version})"]
        statements.append("INSERT INTO tasks (name, payload, status, attempts, error, "
                          "finished_at) VALUES ('job', '{}', 'failed', 1, 'ValueError: old', "
                          "now())")
        for sql in statements:
            pg_helpers.rows(url, sql)
        backends.forget_backends()
        backend = backends.open_backend(url)
        try:
            tid = pg_helpers.rows(url, "SELECT id FROM tasks")[0]["id"]
            assert [e["error"] for e in backend.task_errors(tid)] == ["ValueError: old"]
            assert backend.task_stats() == []
            (new,) = put_tasks(backend, "job", json.dumps([[]]), 1)
            assert backend.cancel(new)
            assert [c["metric"] for c in backend.task_stats()] == ["cancelled"]
        finally:
            backend.close()
        versions = pg_helpers.rows(url, "SELECT version FROM liteq_migrations ORDER BY 1")
        assert [v["version"] for v in versions] == list(range(1, schema.SCHEMA_VERSION + 1))
    finally:
        backends.forget_backends()
        pg_helpers.drop_schema(server, name)


def test_the_grafana_dashboard_asks_for_metrics_that_exist(backend):
    import re
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "liteq-dashboard.json"
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"]
              if isinstance(v.get("query"), dict)]
    used = {m for e in exprs for m in re.findall(r"\bliteq_\w+", e)}
    # Every family, as /metrics names its samples, with a daemon up and outcomes recorded.
    (tid,) = put_tasks(backend, "job", json.dumps([[]]), 1)
    backend.claim("w1", ["default"], 1)
    t = time.time()
    backend.record_outcomes("w1", done=[(tid, "null", t, t)])
    backend.heartbeat("w1", "h1", "default", 1, os.getpid(), t)
    text = render(LiteQCollector(backend.target, store_factory=lambda: backend,
                                 status_fn=lambda: {"hostname": "h1", "pools": [
                                     {"name": "default", "size": 1, "children": [{}]}]}))
    exported = {s.name for f in text_string_to_metric_families(text.decode()) for s in f.samples}
    assert used and used <= exported, sorted(used - exported)


@pytest.mark.parametrize("seconds, index", [(0.0, 0), (0.005, 0), (0.006, 1), (3600.0, 17),
                                            (1e9, 18)])
def test_bucket_bounds(seconds, index):
    from liteq.backends.stats import bucket_of
    assert bucket_of(seconds) == index
