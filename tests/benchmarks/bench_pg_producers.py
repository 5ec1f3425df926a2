"""Parallel producers on PostgreSQL (not collected by pytest: its name does not start
with test_).

    .venv/bin/python tests/benchmarks/bench_pg_producers.py [--producers 1,2,4,8] [--seconds S]
                                                            [--repeat R] [--latency N] [--url URL]
                                                            [--json]

Each producer is a process calling task.delay() in a loop for S seconds, all
starting together; the figure is the tasks all of them enqueued per second. Three
ways, alternated within each repeat (the order rotates so none always meets a
warmer server), on one schema (emptied between runs):

  notify-each  every .delay() sends its NOTIFY (liteq before wake-up coalescing:
               NOTIFY_INTERVAL_S = 0)
  coalesced    the shipped behaviour: a process notifies at most once per
               NOTIFY_INTERVAL_S for tasks due now
  raw          plain psycopg INSERT ... RETURNING id + commit per row into a copy
               of the tasks table (same indexes), no NOTIFY: the ceiling

PostgreSQL commits transactions that sent a NOTIFY one at a time, under one lock
held through the commit's WAL flush; that is what notify-each runs into. It
prints the median of R runs per (way, producers) and the ratios to raw. No daemon
listens (the lock is taken whether or not anyone listens).

--latency N also measures the wake-up latency of one producer with a real liteqd
(concurrency 2) idle on the schema: N samples of .delay() of a task whose first
line is `return time.time()`, waiting for it to finish before the next (the loop
of tests/benchmarks/bench_latency.py), notify-each and coalesced alternated in blocks of 25;
it prints the p50 and p95 of each (ms from .delay()'s return to the task's start).
"""

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # run from a checkout without installing
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for its support package

import psycopg  # noqa: E402

import liteq  # noqa: E402
from support import pg_helpers  # noqa: E402
from liteq import backends  # noqa: E402
from liteq.backends.postgres import inserts as pg_tasks  # noqa: E402
from liteq.db import init_db  # noqa: E402

EMAIL = "user@example.com"
WAYS = ("notify-each", "coalesced", "raw")
RAW_INSERT = ("INSERT INTO raw_tasks (name, payload, queue, priority, max_retries, run_at) "
              "VALUES (%s, %s, %s, %s, %s, now()) RETURNING id")


@liteq.task(name="bench_send_email")
def send_email(user_id, to):
    return to


def _producer(way, url, seconds, barrier, out):
    """One producer process: enqueue for `seconds` after the barrier; put its count."""
    os.environ["LITEQ_DB"] = url
    backends.forget_backends()
    _set_way(way)
    if way == "raw":
        conn = psycopg.connect(url, autocommit=True)

        def one(i):
            payload = json.dumps({"args": [i, EMAIL], "kwargs": {}}, separators=(",", ":"))
            conn.execute(RAW_INSERT, ("bench_send_email", payload, "default", 0, 3),
                         prepare=True).fetchone()
    else:
        def one(i):
            send_email.delay(i, EMAIL)
    one(-1)  # warm-up: the connection and the prepared statements
    one(-2)
    barrier.wait(timeout=60)
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        one(n)
        n += 1
    out.put(n)


def run_once(way, url, producers, seconds):
    """Tasks per second of `producers` processes enqueueing the `way` way."""
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(producers), ctx.Queue()
    procs = [ctx.Process(target=_producer, args=(way, url, seconds, barrier, out))
             for _ in range(producers)]
    for p in procs:
        p.start()
    try:
        counts = [out.get(timeout=seconds + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    return sum(counts) / seconds


DEFAULT_INTERVAL = pg_tasks.NOTIFY_INTERVAL_S
DEFAULT_MAX = pg_tasks.NOTIFY_INTERVAL_MAX_S


def _set_way(way):
    """Make this process's .delay() notify the `way` way."""
    each = way == "notify-each"
    pg_tasks.NOTIFY_INTERVAL_S = 0.0 if each else DEFAULT_INTERVAL
    pg_tasks.NOTIFY_INTERVAL_MAX_S = 0.0 if each else DEFAULT_MAX
    pg_tasks._Notified.interval = pg_tasks.NOTIFY_INTERVAL_S


def latency(url, samples):
    """{way: [ms]}: .delay() -> the task's first line, one producer, an idle daemon."""
    from bench_latency import APP, Daemon, wait_done
    workdir = tempfile.mkdtemp(prefix="lqpglat-", dir="/tmp")
    app_path = os.path.join(workdir, "bench_latency_app.py")
    with open(app_path, "w") as f:
        f.write(APP)
    sys.path.insert(0, workdir)
    import bench_latency_app as app
    os.environ["LITEQ_DB"] = url
    backends.forget_backends()
    store = backends.get_backend()
    daemon = Daemon(workdir, app_path, url, os.path.join(workdir, "d.sock"), 2)
    out = {"notify-each": [], "coalesced": []}
    try:
        time.sleep(0.5)
        block = 0
        while min(len(v) for v in out.values()) < samples:
            way = ("notify-each", "coalesced")[block % 2]
            _set_way(way)
            for _ in range(25):
                task_id = app.stamp.delay()
                t0 = time.time()
                row = wait_done(store, task_id)
                out[way].append((json.loads(row["result"]) - t0) * 1000)
            block += 1
    finally:
        daemon.kill()
        _set_way("coalesced")
        sys.path.remove(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main(argv=None):
    """Run the measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--producers", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", default=os.environ.get(pg_helpers.ENV, pg_helpers.DEFAULT_URL))
    parser.add_argument("--latency", type=int, default=0, help="latency samples per way")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.producers.split(",")]
    schema, url = pg_helpers.create_schema(args.url)
    runs = {(w, p): [] for w in WAYS for p in counts}
    try:
        os.environ["LITEQ_DB"] = url
        init_db()
        backends.forget_backends()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE raw_tasks (LIKE tasks INCLUDING ALL)")
        for r in range(args.repeat):
            for p in counts:
                order = WAYS[r % 3:] + WAYS[:r % 3]
                for way in order:
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute("TRUNCATE tasks, raw_tasks")
                        conn.execute("CHECKPOINT")
                    runs[way, p].append(run_once(way, url, p, args.seconds))
        lat = latency(url, args.latency) if args.latency else {}
    finally:
        pg_helpers.drop_schema(args.url, schema)
    med = {k: statistics.median(v) for k, v in runs.items()}
    lat_fig = {w: {"p50": statistics.median(v),
                   "p95": sorted(v)[int(len(v) * 0.95) - 1]} for w, v in lat.items()}
    if args.json:
        print(json.dumps({**{f"{w}/{p}": {"median": med[w, p], "runs": runs[w, p]}
                             for w, p in runs}, "latency_ms": lat_fig}, indent=2))
        return
    print(f"tasks/s, median of {args.repeat} runs of {args.seconds:g} s "
          f"(coalesced: NOTIFY_INTERVAL_S = {DEFAULT_INTERVAL:g} to {pg_tasks.NOTIFY_INTERVAL_MAX_S:g})")
    print(f"{'producers':>9}  {'notify-each':>11}  {'coalesced':>9}  {'raw':>7}  "
          f"{'each/raw':>8}  {'coal/raw':>8}")
    for p in counts:
        each, coal, raw = med["notify-each", p], med["coalesced", p], med["raw", p]
        print(f"{p:>9}  {each:>11,.0f}  {coal:>9,.0f}  {raw:>7,.0f}  "
              f"{each / raw:>8.2f}  {coal / raw:>8.2f}")
    for way, fig in lat_fig.items():
        print(f"latency {way:<11}  p50 {fig['p50']:.2f} ms  p95 {fig['p95']:.2f} ms "
              f"({len(lat[way])} samples)")
    print("runs: " + "; ".join(f"{w}/{p}: " + ",".join(f"{x:.0f}" for x in runs[w, p])
                               for w, p in runs))


if __name__ == "__main__":
    main()
