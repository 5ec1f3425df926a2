"""PostgreSQL with a million pending tasks: the daemon's claim + record round,
`liteqctl status` and the panel's overview, against a thousand as the baseline.

    .venv/bin/python tests/benchmarks/bench_pg_scale.py [--big 1000000] [--small 1000]
                                                        [--rounds 301] [--repeat 7] [--url URL]

Not collected by pytest (a benchmark prints figures; tests assert behaviour).
For each size, in a fresh schema of its own (dropped at the end) on the server
(--url, else LITEQ_TEST_POSTGRES, else the project's standard one), it enqueues
the pending tasks with enqueue_many (the statement of .starmap()) in chunks, then
measures, all in the same command:

  claim+record   one batch() that records the outcome of the task claimed in the
                 previous round and claims one more: the daemon's round, on a
                 backend opened as the daemon opens it (median and p95 of --rounds)
  queue counts   control.queue_counts(estimate=True): what `liteqctl status` reads
                 (groups over the backend's limit are estimated, see
                 liteq/backends/postgres/counts.py)
  overview       liteq.web.views.overview(): what the panel's overview reads
  liteqctl       a whole `liteqctl status --json` process against a live daemon
                 (paused on a queue with no tasks, so the counts are what it reads)
  exact counts   queue_stats() and list_queues(), exact: what the two above read
                 before they estimated, for comparison

and shows `liteqctl status` as an operator sees it with the big queue.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # run from a checkout without installing
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for its support package

from support import pg_helpers  # noqa: E402
from liteq import backends, control  # noqa: E402
from liteq.launcher import start_daemon  # noqa: E402
from liteq.taskspec import NewTasks, TaskOptions  # noqa: E402
from liteq.web import views  # noqa: E402

CHUNK = 100_000
APP = "from liteq import task\n\n@task\ndef noop():\n    return None\n"


def build(url, n):
    """Enqueue n pending no-op tasks, CHUNK per statement; returns the seconds taken."""
    store = backends.open_backend(url)
    t0 = time.perf_counter()
    try:
        left = n
        while left:
            k = min(CHUNK, left)
            store.enqueue_many(NewTasks("noop", json.dumps([[]] * k), k, TaskOptions()))
            left -= k
    finally:
        store.close()   # the session's end reports its inserts to the statistics
    return time.perf_counter() - t0


def timed_ms(fn, repeat):
    """Milliseconds of each of `repeat` calls of fn() (after one unmeasured call)."""
    fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def claim_record_ms(url, rounds):
    """Milliseconds of each daemon round: one batch() recording 1 outcome, claiming 1."""
    store = backends.open_backend(url, daemon=True)
    try:
        held = [r["id"] for r in store.claim("bench", ["default"], 1)]
        out = []
        for _ in range(rounds):
            t = time.time()
            t0 = time.perf_counter()
            with store.batch():
                store.record_outcomes("bench", done=[(i, "null", t, t) for i in held])
                held = [r["id"] for r in store.claim("bench", ["default"], 1)]
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        store.close()


def liteqctl_ms(url, sock, repeat, text=False):
    """Milliseconds of whole `liteqctl status --json` processes; with text=True, one
    run of `liteqctl status` and its output instead."""
    env = dict(os.environ, LITEQ_DB=url, LITEQ_SOCKET=sock)
    argv = [sys.executable, "-m", "liteqd.ctl", "status"]
    if text:
        return subprocess.run(argv, env=env, check=True, capture_output=True, text=True,
                              timeout=60).stdout
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv + ["--json"], env=env, check=True, capture_output=True, timeout=60)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def measure(server, n, args, work, label):
    """Every figure for n pending tasks, in a schema made and dropped here."""
    schema, url = pg_helpers.create_schema(server)
    figures = {"n": n}
    try:
        figures["build_s"] = build(url, n)
        print(f"{label}: {n:,} pending tasks enqueued in {figures['build_s']:.1f} s", flush=True)
        os.environ["LITEQ_DB"] = url
        backends.forget_backends()
        store = backends.get_backend(url)
        rounds = claim_record_ms(url, args.rounds)
        figures["claim_p50"] = statistics.median(rounds)
        figures["claim_p95"] = statistics.quantiles(rounds, n=20)[-1]
        figures["counts"] = statistics.median(timed_ms(
            lambda: control.queue_counts(url, estimate=True), args.repeat))
        figures["overview"] = statistics.median(timed_ms(
            lambda: views.overview(store), args.repeat))
        figures["exact_stats"] = statistics.median(timed_ms(store.queue_stats, args.repeat))
        figures["exact_queues"] = statistics.median(timed_ms(store.list_queues, args.repeat))
        figures["shown"] = control.queue_counts(url, estimate=True)
        figures["exact"] = control.queue_counts(url)
        app = os.path.join(work, "scale_app.py")
        with open(app, "w") as f:
            f.write(APP)
        sock = os.path.join(work, f"{label}.sock")
        # Paused on a queue with no tasks: what is timed is the status, not a drain.
        with start_daemon(app, db=url, concurrency=1, socket=sock, queues="idle",
                          log_path=os.path.join(work, f"{label}.log")):
            figures["liteqctl"] = statistics.median(liteqctl_ms(url, sock, args.repeat))
            figures["liteqctl_text"] = liteqctl_ms(url, sock, 1, text=True)
        return figures
    finally:
        backends.forget_backends()
        pg_helpers.drop_schema(server, schema)


ROWS = [("claim_p50", "claim 1 + record 1, one batch(), median", "ms", "{:.2f}"),
        ("claim_p95", "claim 1 + record 1, p95", "ms", "{:.2f}"),
        ("counts", "liteqctl's counts (queue_counts, estimate=True)", "ms", "{:.1f}"),
        ("overview", "panel overview() (estimate=True)", "ms", "{:.1f}"),
        ("liteqctl", "whole `liteqctl status --json` process", "ms", "{:.0f}"),
        ("exact_stats", "exact queue_stats()", "ms", "{:.1f}"),
        ("exact_queues", "exact list_queues()", "ms", "{:.1f}")]


def main(argv=None):
    """Build both sizes, measure them and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--big", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=1_000)
    p.add_argument("--rounds", type=int, default=301, help="claim+record rounds per size")
    p.add_argument("--repeat", type=int, default=7, help="calls per read figure (median)")
    p.add_argument("--url", default=os.environ.get(pg_helpers.ENV, pg_helpers.DEFAULT_URL))
    args = p.parse_args(argv)
    os.environ.pop("LITEQ_SOCKET", None)
    work = tempfile.mkdtemp(prefix="liteq-pgscale-", dir="/tmp")
    try:
        small = measure(args.url, args.small, args, work, "small")
        big = measure(args.url, args.big, args, work, "big")
    finally:
        subprocess.run(["rm", "-rf", work], check=False)
    print()
    print(f"PostgreSQL, {backends.identity_of(args.url)}: medians "
          f"({args.rounds} claim rounds, {args.repeat} calls per read)")
    width = max(len(label) for _, label, _, _ in ROWS)
    print(f"  {'':<{width}}  {small['n']:>10,}  {big['n']:>10,}  {'ratio':>6}")
    for key, label, unit, fmt in ROWS:
        print(f"  {label:<{width}}  {fmt.format(small[key]):>10}  {fmt.format(big[key]):>10}"
              f"  {big[key] / small[key]:>6.2f}  {unit}")
    print()
    print(f"counts with {big['n']:,} pending: shown (estimate=True) against exact")
    exact = {q["queue"]: q for q in big["exact"]}
    for q in big["shown"]:
        for status in ("pending", "running", "done", "failed", "cancelled"):
            if q[status] or exact[q["queue"]][status]:
                mark = "~" if status in q["estimated"] else " "
                print(f"  {q['queue']:<10} {status:<9} shown {mark}{q[status]:>10,}  "
                      f"exact {exact[q['queue']][status]:>10,}")
    print()
    print(f"`liteqctl status` with {big['n']:,} pending:")
    print("\n".join("  " + line for line in big["liteqctl_text"].splitlines()))


if __name__ == "__main__":
    main()
