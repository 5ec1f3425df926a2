"""Supervisor CPU per task during a no-op drain, this checkout against another (a
script; pytest does not collect it).

    .venv/bin/python tests/benchmarks/bench_supervisor_cpu.py [--against /work/main] [--tasks N]
                                                              [--repeat R] [--concurrency C]
                                                              [--profile DIR]

For each tree (this checkout, and --against), alternated R times: a fresh SQLite
file, a liteqd of that tree (PYTHONPATH) with C children, idle and ready; then one
.map() of N no-op tasks and a wait until all are done. The figure is the
supervisor's own CPU time (user + system, children excluded) from the enqueue to
the drained queue, divided by N, in microseconds per task; also the drain rate.
It prints medians per tree and the ratio. With --profile DIR, py-spy (pip install
py-spy) records this checkout's supervisor during one more drain and prints the
functions with the most samples of their own ("self") and in total.
"""

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

from liteq import backends  # noqa: E402
from liteq.db import init_db  # noqa: E402

APP = '''
from liteq import task


@task(name="bench_cpu_noop", max_retries=0)
def noop(i):
    return None
'''


def _daemon(tree, workdir, db, concurrency):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITEQ_")}
    env.update(LITEQ_DB=db, PYTHONPATH=tree)
    sock = os.path.join(workdir, "d.sock")
    log = os.path.join(workdir, "d.log")
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "liteqd.cli", "--app",
                             os.path.join(workdir, "cpu_app.py"), "--db", db, "--socket", sock,
                             "--log-format", "json", "--log-level", "warning",
                             "--concurrency", str(concurrency)],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=workdir, start_new_session=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"liteqd did not start:\n{open(log).read()[-3000:]}")
        time.sleep(0.02)
    time.sleep(1.0)   # children up, start-up claims done: idle
    return proc


def _stop(proc):
    try:
        ps = psutil.Process(proc.pid)
        kids = ps.children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    for p in [proc] + kids:
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    proc.wait(timeout=10)


def drain(tree, tasks, concurrency, profile=None):
    """(supervisor µs per task, tasks per second) of one drain with `tree`'s daemon."""
    workdir = tempfile.mkdtemp(prefix="lqcpu-", dir="/tmp")
    db = os.path.join(workdir, "q.db")
    with open(os.path.join(workdir, "cpu_app.py"), "w") as f:
        f.write(APP)
    os.environ["LITEQ_DB"] = db
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "d.sock")
    backends.forget_backends()
    init_db()
    sys.path.insert(0, workdir)
    if "cpu_app" not in sys.modules:   # registered once per process
        import cpu_app  # noqa: F401
    cpu_app = sys.modules["cpu_app"]
    proc = _daemon(tree, workdir, db, concurrency)
    spy = None
    try:
        sup = psutil.Process(proc.pid)
        if profile:
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--format",
                                    "raw", "--output", profile, "--rate", "500", "--gil",
                                    "--nonblocking"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        store = backends.get_backend()
        c0 = sum(sup.cpu_times()[:2])
        t0 = time.perf_counter()
        cpu_app.noop.map(range(tasks))
        while store.count_tasks(status="done") < tasks:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        c1 = sum(sup.cpu_times()[:2])
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=30)
        _stop(proc)
        sys.path.remove(workdir)
        backends.forget_backends()
        shutil.rmtree(workdir, ignore_errors=True)
    return (c1 - c0) / tasks * 1e6, tasks / elapsed


def top_entries(raw_path, n=15):
    """[(self samples, total samples, function)] from py-spy's raw (collapsed) output."""
    own, total = collections.Counter(), collections.Counter()
    for line in open(raw_path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        frames = stack.split(";")
        count = int(count)
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return [(own[f], total[f], f) for f, _ in own.most_common(n)], sum(own.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", default="/work/main")
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--profile", help="a directory for py-spy's output")
    args = p.parse_args(argv)
    trees = {"this": REPO, "against": os.path.abspath(args.against)}
    runs = {k: [] for k in trees}
    for r in range(args.repeat):
        for name in (("this", "against") if r % 2 == 0 else ("against", "this")):
            runs[name].append(drain(trees[name], args.tasks, args.concurrency))
    print(f"no-op drain of {args.tasks} tasks, concurrency {args.concurrency}, "
          f"median of {args.repeat}")
    med = {}
    for name, tree in trees.items():
        us = statistics.median(r[0] for r in runs[name])
        rate = statistics.median(r[1] for r in runs[name])
        med[name] = us
        print(f"  {name:<8} {tree:<28} supervisor {us:6.1f} µs/task   drain {rate:8,.0f} "
              f"tasks/s   runs " + ", ".join(f"{r[0]:.1f}" for r in runs[name]))
    print(f"  ratio this/against: {med['this'] / med['against']:.2f}")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        for name, tree in trees.items():
            path = os.path.join(args.profile, f"{name}.txt")
            drain(tree, args.tasks, args.concurrency, profile=path)
            entries, samples = top_entries(path)
            print(f"\npy-spy, {name} ({tree}): {samples} samples; self%  total%  function")
            for own, total, fn in entries:
                print(f"  {100 * own / samples:5.1f}  {100 * total / samples:6.1f}  {fn}")


if __name__ == "__main__":
    main()
