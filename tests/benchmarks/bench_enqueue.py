"""Enqueue throughput benchmark (not collected by pytest: its name does not start with test_).

    .venv/bin/python tests/benchmarks/bench_enqueue.py [--tasks N] [--bulk-tasks M] [--repeat R]
                                                       [--json]

Against a fresh temp database per run, from one producer process, it measures:

  delay      N calls of task.delay(i, "user@example.com"): one INSERT + commit each
  starmap    one task.starmap() of M calls: one transaction
  raw        the baseline: plain sqlite3, one INSERT + commit per row, into a table of the
             same shape (the DDL and indexes are copied from the LiteQ database), with the
             same journal mode (WAL) and synchronous level, and json.dumps of the arguments
  raw-bulk   plain sqlite3 executemany of M rows in one transaction, same table

and prints the median and every run, and the ratios LiteQ/raw. No daemon is involved:
LITEQ_SOCKET points into the temp dir, so wake-ups find nobody (as for an app whose
daemon is down), which is the cheap path of .delay().
"""

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # run from a checkout without installing

import liteq  # noqa: E402
from liteq import backends, settings  # noqa: E402
from liteq.db import init_db  # noqa: E402


@liteq.task(name="bench_send_email")
def send_email(user_id, to):
    return to


EMAIL = "user@example.com"


def _fresh_env(tmp):
    os.environ["LITEQ_DB"] = os.path.join(tmp, "bench.db")
    os.environ["LITEQ_SOCKET"] = os.path.join(tmp, "nobody.sock")
    backends.forget_backends()
    init_db()
    return os.environ["LITEQ_DB"]


def bench_delay(n):
    send_email.delay(-1, EMAIL)  # warm-up: opens the connection
    start = time.perf_counter()
    for i in range(n):
        send_email.delay(i, EMAIL)
    return n / (time.perf_counter() - start)


def bench_starmap(m):
    calls = [(i, EMAIL) for i in range(m)]
    send_email.starmap([(-1, EMAIL)])  # warm-up
    start = time.perf_counter()
    ids = send_email.starmap(calls)
    elapsed = time.perf_counter() - start
    assert len(ids) == m
    return m / elapsed


def _raw_db(tmp, liteq_db):
    """A raw sqlite3 connection to a new file with LiteQ's tasks table and indexes."""
    src = sqlite3.connect(liteq_db)
    ddl = [r[0] for r in src.execute(
        "SELECT sql FROM sqlite_master WHERE tbl_name = 'tasks' AND sql IS NOT NULL "
        "ORDER BY type != 'table'")]  # the table before its indexes and triggers
    src.close()
    path = os.path.join(tmp, f"raw-{time.perf_counter_ns()}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    # LiteQ's level comes from LITEQ_SYNC; use the one a LiteQ connection gets.
    level = settings.sync_pragma()
    conn.execute(f"PRAGMA synchronous = {level}")
    for sql in ddl:
        conn.execute(sql)
    return conn


RAW_INSERT = ("INSERT INTO tasks (name, payload, queue, priority, max_retries, run_at, "
              "created_at) VALUES (?, ?, 'default', 0, 3, ?, ?)")


def bench_raw(conn, n):
    dumps = json.dumps
    start = time.perf_counter()
    for i in range(n):
        t = time.time()
        conn.execute(RAW_INSERT, ("bench_send_email",
                                  dumps({"args": [i, EMAIL], "kwargs": {}}), t, t))
    return n / (time.perf_counter() - start)


def bench_raw_bulk(conn, m):
    calls = [(i, EMAIL) for i in range(m)]
    dumps = json.dumps
    start = time.perf_counter()
    t = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(RAW_INSERT, (("bench_send_email", dumps({"args": list(c), "kwargs": {}}),
                                   t, t) for c in calls))
    conn.execute("COMMIT")
    return m / (time.perf_counter() - start)


def run(args):
    results = {"delay": [], "starmap": [], "raw": [], "raw-bulk": []}
    for _ in range(args.repeat):
        tmp = tempfile.mkdtemp(prefix="liteq-bench-")
        try:
            db = _fresh_env(tmp)
            results["delay"].append(bench_delay(args.tasks))
            results["starmap"].append(bench_starmap(args.bulk_tasks))
            backends.forget_backends()
            conn = _raw_db(tmp, db)
            try:
                results["raw"].append(bench_raw(conn, args.tasks))
                results["raw-bulk"].append(bench_raw_bulk(conn, args.bulk_tasks))
            finally:
                conn.close()
        finally:
            backends.forget_backends()
            shutil.rmtree(tmp, ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in results.items()}
    return {
        "params": {"tasks": args.tasks, "bulk_tasks": args.bulk_tasks, "repeat": args.repeat,
                   "synchronous": settings.sync_pragma(),
                   "sqlite": sqlite3.sqlite_version, "python": sys.version.split()[0]},
        "results": {k: {"median": medians[k], "runs": results[k]} for k in results},
        "ratios": {"delay/raw": medians["delay"] / medians["raw"],
                   "starmap/raw-bulk": medians["starmap"] / medians["raw-bulk"]},
    }


LABELS = {
    "delay": ".delay(), one producer",
    "starmap": ".starmap() bulk, one call",
    "raw": "raw sqlite3 INSERT+commit",
    "raw-bulk": "raw sqlite3 executemany, 1 tx",
}


def print_text(report):
    p = report["params"]
    print(f"LiteQ enqueue benchmark: {p['tasks']} single, {p['bulk_tasks']} bulk, "
          f"{p['repeat']} runs; synchronous={p['synchronous']}, SQLite {p['sqlite']}, "
          f"Python {p['python']}")
    print(f"{'measure':<32}{'median tasks/s':>16}   runs (tasks/s)")
    for key, label in LABELS.items():
        r = report["results"][key]
        runs = " ".join(f"{x:,.0f}" for x in r["runs"])
        print(f"{label:<32}{r['median']:>16,.0f}   {runs}")
    for key, value in report["ratios"].items():
        print(f"{'ratio ' + key:<32}{value:>16.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000,
                    help="single .delay() calls (and raw inserts) per run (default 10000)")
    ap.add_argument("--bulk-tasks", type=int, default=100_000,
                    help="calls in the one .starmap() per run (default 100000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs (default 5)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = ap.parse_args(argv)
    if args.tasks < 1 or args.bulk_tasks < 1 or args.repeat < 1:
        ap.error("--tasks, --bulk-tasks and --repeat must be at least 1")
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
