"""`liteq bench` runs end to end on a small load and reports every figure."""

import json
import os
import subprocess
import sys

import pytest

FIGURES = ("delay_per_s", "delay_later_per_s", "delay_daemon_per_s", "bulk_per_s",
           "drain_per_s", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
           "supervisor_rss_mb", "raw_insert_per_s", "raw_executemany_per_s",
           "delay_vs_raw", "bulk_vs_raw", "delay_daemon_vs_none")


def _run(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("LITEQ_DB", "LITEQ_SOCKET")}
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
    import pg_helpers
    url = pg_helpers.server_url()   # skips (or fails under LITEQ_TEST_POSTGRES) without one
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        before = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")}
    proc = _run("--db", url, "--tasks", "300", "--repeat", "1", "--samples", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["backend"] == "postgresql"
    for key in FIGURES:
        assert figures["median"][key] > 0, key
    with psycopg.connect(url, autocommit=True) as conn:
        after = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")}
    assert not {s for s in after - before if s.startswith("liteq_bench_")}
    table = _run("--db", url, "--tasks", "200", "--repeat", "1", "--samples", "10")
    assert "raw PostgreSQL INSERT+commit" in table.stdout, table.stderr
    assert _run("--db", "/tmp/x.db").returncode == 2
