"""Claim latency and `liteqctl status` time with 1,000 versus 1,000,000 queued tasks.

Run:  .venv/bin/python tests/benchmarks/bench_scale.py [--big 1000000] [--small 1000] [--repeat 21]

Not collected by pytest (a benchmark prints figures; tests assert behaviour).
Prints medians and the ratio big/small measured in the same command.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

# tests/, for its support package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support.task_table import put_tasks  # noqa: E402


def build(db, n):
    """A database with n pending tasks (plus a few of every other status)."""
    os.environ["LITEQ_DB"] = db
    from liteq import backends
    backends.forget_backends()
    store = backends.get_backend()
    chunk = 200_000
    left = n
    while left:
        k = min(chunk, left)
        put_tasks(store, "noop", "[" + ",".join(["[]"] * k) + "]", k)
        left -= k
    return store


def time_claims(store, repeat):
    """Median ms of one claim of 4 tasks plus recording their outcome (the daemon's round)."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = store.claim("bench-worker", ["default"], 4)
        store.record_outcomes("bench-worker", done=[(r["id"], "null", time.time(), time.time())
                                                    for r in rows])
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def time_status(db, sock, repeat):
    """Median ms of a whole `liteqctl status --json` process against a live daemon."""
    env = dict(os.environ, LITEQ_DB=db, LITEQ_SOCKET=sock)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "liteqd.ctl", "status", "--json"], env=env,
                       check=True, capture_output=True)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--big", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=1_000)
    p.add_argument("--repeat", type=int, default=21)
    args = p.parse_args()
    from liteq.launcher import start_daemon
    work = tempfile.mkdtemp(prefix="liteq-scale-", dir="/tmp")
    app = os.path.join(work, "scale_app.py")
    with open(app, "w") as f:
        f.write("from liteq import task\n@task\ndef noop():\n    pass\n")
    results = {}
    for label, n in (("small", args.small), ("big", args.big)):
        db = os.path.join(work, f"{label}.db")
        t0 = time.perf_counter()
        store = build(db, n)
        print(f"built {n:,} pending tasks in {time.perf_counter() - t0:.1f} s", flush=True)
        claim_ms = time_claims(store, args.repeat)
        sock = os.path.join(work, f"{label}.sock")
        os.environ["LITEQ_SOCKET"] = sock
        # A paused daemon: its status is what we time, not its draining.
        with start_daemon(app, db=db, concurrency=2, socket=sock, queues="idle") as _:
            status_ms = time_status(db, sock, max(5, args.repeat // 3))
        results[label] = (n, claim_ms, status_ms)
    print()
    print(f"{'tasks queued':>14}  {'claim+record (ms)':>18}  {'liteqctl status (ms)':>21}")
    for label in ("small", "big"):
        n, c, s = results[label]
        print(f"{n:>14,}  {c:>18.3f}  {s:>21.1f}")
    (n1, c1, s1), (n2, c2, s2) = results["small"], results["big"]
    print(f"{'ratio big/small':>14}  {c2 / c1:>18.2f}  {s2 / s1:>21.2f}")


if __name__ == "__main__":
    main()
