"""PostgreSQL backend benchmark (not collected by pytest: its name does not start with test_).

    .venv/bin/python tests/benchmarks/bench_postgres.py [--tasks N] [--bulk-tasks M] [--pending P]
                                                        [--repeat R] [--url URL]

Against a fresh schema per run on the server (LITEQ_TEST_POSTGRES, else the project's
standard one), from one producer process, it measures:

  delay       N calls of task.delay(i, "user@example.com"): one statement each (the
              INSERT, its RETURNING id and its pg_notify), in autocommit
  raw         the baseline: plain psycopg, one prepared INSERT ... RETURNING id per row
              in autocommit (so one commit each), into a copy of LiteQ's tasks table
              (CREATE TABLE ... (LIKE tasks INCLUDING ALL): same indexes and settings),
              with json.dumps of the arguments
  starmap     one task.starmap() of M calls: one statement, one transaction
  claim+record  with P tasks pending, rounds of what the daemon does per sync: one
              batch() recording 4 outcomes and claiming 4 tasks; the time per round

It prints the median of R runs (each run interleaves LiteQ and the baseline) and
every run. No daemon listens, so notifications go nowhere (the cheap path).
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # run from a checkout without installing
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for its support package

import psycopg  # noqa: E402

import liteq  # noqa: E402
from support import pg_helpers  # noqa: E402
from liteq import backends  # noqa: E402

EMAIL = "user@example.com"


@liteq.task(name="bench_send_email")
def send_email(user_id, to):
    return to


def _use(url):
    os.environ["LITEQ_DB"] = url
    backends.forget_backends()
    return backends.get_backend()


def bench_delay(n):
    """.delay() calls per second."""
    send_email.delay(-1, EMAIL)  # warm-up: connection and prepared statement
    start = time.perf_counter()
    for i in range(n):
        send_email.delay(i, EMAIL)
    return n / (time.perf_counter() - start)


def bench_raw(url, n):
    """Plain psycopg INSERT + commit per row, into a copy of the tasks table."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE raw_tasks (LIKE tasks INCLUDING ALL)")
        sql = ("INSERT INTO raw_tasks (name, payload, queue, priority, max_retries, run_at) "
               "VALUES (%s, %s, %s, %s, %s, now()) RETURNING id")

        def one(i):
            payload = json.dumps({"args": [i, EMAIL], "kwargs": {}}, separators=(",", ":"))
            conn.execute(sql, ("bench_send_email", payload, "default", 0, 3),
                         prepare=True).fetchone()

        one(-1)
        start = time.perf_counter()
        for i in range(n):
            one(i)
        return n / (time.perf_counter() - start)


def bench_starmap(m):
    """Tasks per second of one starmap() of m calls."""
    send_email.starmap([(-1, EMAIL)])  # warm-up
    calls = [(i, EMAIL) for i in range(m)]
    start = time.perf_counter()
    ids = send_email.starmap(calls)
    elapsed = time.perf_counter() - start
    assert len(ids) == m
    return m / elapsed


def bench_claim_record(backend, pending, rounds=300, size=4):
    """Median milliseconds of one batch() that records `size` outcomes and claims `size`
    tasks, with `pending` tasks waiting."""
    backend.enqueue_many(_many(pending))
    held = [r["id"] for r in backend.claim("bench", ["default"], size)]
    times = []
    for _ in range(rounds):
        t = time.time()
        start = time.perf_counter()
        with backend.batch():
            backend.record_outcomes("bench", done=[(i, "null", t, t) for i in held])
            held = [r["id"] for r in backend.claim("bench", ["default"], size)]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _many(count):
    from liteq.taskspec import NewTasks, TaskOptions
    args = json.dumps([[i, EMAIL] for i in range(count)], separators=(",", ":"))
    return NewTasks("bench_send_email", args, count, TaskOptions())


def _run(server, fn):
    schema, url = pg_helpers.create_schema(server)
    try:
        return fn(url)
    finally:
        backends.forget_backends()
        pg_helpers.drop_schema(server, schema)


def main(argv=None):
    """Run the measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--bulk-tasks", type=int, default=20000)
    parser.add_argument("--pending", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--url", default=os.environ.get(pg_helpers.ENV, pg_helpers.DEFAULT_URL))
    args = parser.parse_args(argv)
    server = args.url
    runs = {"delay": [], "raw": [], "starmap": [], "claim_record_ms": []}
    for n in range(args.repeat):
        # Alternate which goes first, so neither always meets a warmer server.
        order = ("delay", "raw") if n % 2 == 0 else ("raw", "delay")
        for name in order:
            if name == "delay":
                runs["delay"].append(_run(server, lambda u: (_use(u), bench_delay(args.tasks))[1]))
            else:
                runs["raw"].append(_run(server, lambda u: (_use(u), bench_raw(u, args.tasks))[1]))
        runs["starmap"].append(_run(server, lambda u: (_use(u), bench_starmap(args.bulk_tasks))[1]))
        runs["claim_record_ms"].append(
            _run(server, lambda u: bench_claim_record(_use(u), args.pending)))
        print(f"run {n + 1}/{args.repeat}: " + ", ".join(
            f"{k} {v[-1]:,.1f}" for k, v in runs.items()), file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"PostgreSQL backend, {identity(server)}; median of {args.repeat} runs")
    print(f"  .delay()          {med['delay']:>10,.0f} tasks/s")
    print(f"  raw INSERT+commit {med['raw']:>10,.0f} rows/s   "
          f"(.delay() = {med['delay'] / med['raw']:.2f} x raw; target >= 0.8)")
    print(f"  starmap({args.bulk_tasks:,})    {med['starmap']:>10,.0f} tasks/s   "
          f"(target >= 100,000)")
    print(f"  claim+record 4    {med['claim_record_ms']:>10.2f} ms per batch() with "
          f"{args.pending:,} pending")
    print("  runs: " + "; ".join(f"{k} " + ", ".join(f"{x:,.1f}" for x in v)
                                 for k, v in runs.items()))


def identity(url):
    """The server as LiteQ names it (no password)."""
    return backends.identity_of(url)


if __name__ == "__main__":
    main()
