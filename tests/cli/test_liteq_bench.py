"""`liteq bench` runs end to end on a small load and reports every figure."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from support.processes import TAG_VAR, tagged_processes
from liteq.launcher import namespaces_unavailable

FIGURES = ("delay_per_s", "delay_later_per_s", "delay_daemon_per_s", "bulk_per_s",
           "drain_per_s", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
           "supervisor_rss_mb", "raw_insert_per_s", "raw_executemany_per_s",
           "delay_vs_raw", "bulk_vs_raw", "delay_daemon_vs_none")


def _run(*args, timeout=120, env=None):
    env = {**{k: v for k, v in os.environ.items() if k not in ("LITEQ_DB", "LITEQ_SOCKET")},
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "liteq.cli", "bench", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_bench_json_reports_every_figure():
    proc = _run("--tasks", "300", "--repeat", "1", "--samples", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    med = figures["median"]
    for key in FIGURES:
        assert key in med, key
        assert med[key] > 0, (key, med[key])
    # Every latency sample is a real start: p50 <= p95 <= p99.
    assert med["latency_p50_ms"] <= med["latency_p95_ms"] <= med["latency_p99_ms"]
    assert figures["tasks"] == 300 and figures["concurrency"] == 2


def test_bench_table_and_bad_options():
    proc = _run("--tasks", "200", "--repeat", "1", "--samples", "10")
    assert proc.returncode == 0, proc.stderr
    assert "drain no-op tasks" in proc.stdout and "latency" in proc.stdout
    assert "tasks/s" in proc.stdout
    bad = _run("--tasks", "0")
    assert bad.returncode == 2 and "--tasks must be at least 1" in bad.stderr


@pytest.mark.parametrize("argv", [["--concurrency", "x"], ["--repeat", "-1"]])
def test_bench_rejects_malformed_numbers(argv):
    proc = _run(*argv)
    assert proc.returncode == 2


def test_bench_on_postgresql_reports_every_figure_and_drops_its_schemas():
    from support import pg_helpers
    url = pg_helpers.server_url()   # skips (or fails under LITEQ_TEST_POSTGRES) without one
    import psycopg
    proc = _run("--db", url, "--tasks", "300", "--repeat", "1", "--samples", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["backend"] == "postgresql"
    for key in FIGURES:
        assert figures["median"][key] > 0, key
    # Only this run's schemas: other tests may run `liteq bench` on the same server at once.
    made = figures["scratch_schemas"]
    assert made and all(s.startswith("liteq_bench_") for s in made)
    with psycopg.connect(url, autocommit=True) as conn:
        left = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")}
    assert not left & set(made)
    table = _run("--db", url, "--tasks", "200", "--repeat", "1", "--samples", "10")
    assert "raw PostgreSQL INSERT+commit" in table.stdout, table.stderr
    assert _run("--db", "/tmp/x.db").returncode == 2


def test_bench_hosts_drains_with_a_daemon_per_namespace_and_leaves_nothing_running():
    from support import pg_helpers
    url = pg_helpers.server_url()
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex
    try:
        proc = _run("--db", url, "--hosts", "2", "--tasks", "300", "--repeat", "1",
                    "--samples", "10", "--json", env={TAG_VAR: tag})
        left = tagged_processes(tag)   # daemons, their children, unshare: all gone
    finally:
        for p in tagged_processes(tag):
            p.kill()
    assert proc.returncode == 0, proc.stderr
    assert left == [], [p.cmdline() for p in left]
    figures = json.loads(proc.stdout)
    assert figures["hosts"] == 2 and "hosts_note" not in figures
    for key in FIGURES:
        assert figures["median"][key] > 0, key
    hosts = figures["drain_by_host"]
    # Two daemons, each the pid 1 of a PID namespace under a host name of its own,
    # drained the 300 tasks between them.
    assert sorted(h["hostname"] for h in hosts) == ["liteq-bench-1", "liteq-bench-2"]
    assert [h["pid_in_namespace"] for h in hosts] == [1, 1]
    assert sum(h["tasks"] for h in hosts) == 300


def test_bench_hosts_needs_postgresql_and_a_positive_number():
    assert "--hosts needs --db postgresql" in _run("--hosts", "2").stderr
    assert _run("--hosts", "0", "--db", "postgresql://x@127.0.0.1/y").returncode == 2


def test_bench_async_sleep_workload_reports_both_drains():
    proc = _run("--workload", "async-sleep", "--tasks", "200", "--repeat", "1",
                "--async-concurrency", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["workload"] == "async-sleep" and figures["async_concurrency"] == 20
    med = figures["median"]
    for key in ("async_drain_per_s", "baseline_per_s", "speedup"):
        assert med[key] > 0, (key, med)
    table = _run("--workload", "async-sleep", "--tasks", "100", "--repeat", "1",
                 "--async-concurrency", "10")
    assert table.returncode == 0, table.stderr
    assert "--async-concurrency 10" in table.stdout and "ratio 10 / 1" in table.stdout
    bad = _run("--workload", "async-sleep", "--async-concurrency", "0")
    assert bad.returncode == 2 and "--async-concurrency must be at least 1" in bad.stderr
