"""What an unused limit costs a drain: a no-op drain (as in `liteq bench`) with the
bench's app, and with the same app plus one `@task(concurrency=1)` (or, with
`--limit rate`, one `@task(rate_limit="100/s")`) that is never enqueued, alternated
run by run (a shared machine drifts). Prints the median drain rates and their
ratio. Not collected by pytest; run it by hand:

    python tests/benchmarks/bench_limits.py [--db postgresql://...] [--tasks 20000] [--rounds 5]
                                            [--limit concurrency|rate] [--claims-only]

--claims-only measures the claims alone, without a daemon (one process claiming
batches of 16 until the queue is empty, no outcomes recorded): the part a limit
could cost, with less of a busy machine's noise.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from liteq import bench, core
from liteq.launcher import start_daemon

LIMITED = {"concurrency": '''
@task(concurrency=1)
def limited():
    return None
''', "rate": '''
@task(rate_limit="100/s")
def limited():
    return None
'''}


def drain(app_text, args, run):
    """The drain rate of `args.tasks` queued no-op tasks, the daemon running `app_text`."""
    workdir = tempfile.mkdtemp(prefix="liteq-bench-limits-")
    scratch = bench.Scratch(workdir, args.db)
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "ctl.sock")
    app_path = os.path.join(workdir, f"limits_app_{run}.py")
    with open(app_path, "w") as f:
        f.write(app_text)
    sys.path.insert(0, workdir)
    try:
        app = __import__(f"limits_app_{run}")
        from liteq.backends import get_backend
        queue = scratch.queue(f"drain{run}")
        app.noop.starmap([()] * args.tasks)
        with start_daemon(app_path, db=queue, concurrency=args.concurrency,
                          log_path=os.path.join(workdir, "d.log")):
            store = get_backend()
            deadline = time.monotonic() + 600
            while store.count_tasks(status="pending") + store.count_tasks(status="running"):
                if time.monotonic() > deadline:
                    raise SystemExit("the drain did not end within 600 s")
                time.sleep(0.1)
            first, last = store.finish_window()
        return args.tasks / max(last - first, 1e-9)
    finally:
        sys.path.remove(workdir)
        for name in [n for n, t in core.TASK_REGISTRY.items()
                     if t.fn.__module__ == f"limits_app_{run}"]:
            core.TASK_REGISTRY.pop(name)
        scratch.close()
        shutil.rmtree(workdir, ignore_errors=True)


def claim_rate(args, run, limits):
    """(claims a second, claims a CPU second of this process) of `args.tasks` queued
    tasks, 16 at a time, with an unused limit if `limits`. On SQLite the claim's work
    is all in this process, so the CPU figure is the one a busy machine disturbs
    least; on PostgreSQL most of it is the server's."""
    from liteq.backends import open_backend
    from liteq.backends.limits import Limits
    workdir = tempfile.mkdtemp(prefix="liteq-bench-claims-")
    scratch = bench.Scratch(workdir, args.db)
    try:
        target = scratch.queue(f"claims{run}")
        store = open_backend(target, daemon=True)
        chosen = {"concurrency": Limits(by_name={"limited": 1}),
               "rate": Limits(rate_by_name={"limited": 100.0})}[args.limit] if limits else None
        from liteq.taskspec import NewTasks, TaskOptions
        store.enqueue_many(NewTasks("noop", "[" + ",".join(["[]"] * args.tasks) + "]",
                                    args.tasks, TaskOptions.build()))
        start, cpu, claimed = time.perf_counter(), time.process_time(), 0
        while True:
            rows = store.claim("bench", ["default"], 16, limits=chosen)
            if not rows:
                break
            claimed += len(rows)
        rate = claimed / (time.perf_counter() - start)
        cpu_rate = claimed / max(time.process_time() - cpu, 1e-9)
        store.close()
        return rate, cpu_rate
    finally:
        scratch.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    """Alternate plain and limited drains; print the medians and the ratio."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", help="a PostgreSQL URL (default: SQLite temp files)")
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--limit", choices=sorted(LIMITED), default="concurrency",
                   help="the kind of limit the unused task has")
    p.add_argument("--claims-only", action="store_true",
                   help="measure the claims alone, without a daemon")
    args = p.parse_args()
    plain, limited, plain_cpu, limited_cpu = [], [], [], []
    for n in range(args.rounds):
        if args.claims_only:
            (a, a_cpu), (b, b_cpu) = claim_rate(args, f"p{n}", False), \
                claim_rate(args, f"l{n}", True)
            plain.append(a)
            limited.append(b)
            plain_cpu.append(a_cpu)
            limited_cpu.append(b_cpu)
            print(f"round {n + 1}: claims plain {a:.0f}/s ({a_cpu:.0f}/CPU s), with an "
                  f"unused {args.limit} limit {b:.0f}/s ({b_cpu:.0f}/CPU s)", flush=True)
            continue
        plain.append(drain(bench.BENCH_APP, args, f"p{n}"))
        limited.append(drain(bench.BENCH_APP + LIMITED[args.limit], args, f"l{n}"))
        print(f"round {n + 1}: plain {plain[-1]:.0f}/s, with an unused {args.limit} limit "
              f"{limited[-1]:.0f}/s", flush=True)
    a, b = statistics.median(plain), statistics.median(limited)
    what = "claims" if args.claims_only else "drain"
    print(f"median {what}: plain {a:.0f}/s, with an unused {args.limit} limit {b:.0f}/s, "
          f"ratio {b / a:.2f}")
    if args.claims_only:
        a, b = statistics.median(plain_cpu), statistics.median(limited_cpu)
        print(f"median claims per CPU second of this process: plain {a:.0f}, with an "
              f"unused {args.limit} limit {b:.0f}, ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
