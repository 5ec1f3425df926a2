"""Wake-up latency and the cost of wake-ups on enqueue (a script; pytest does not collect it).

    .venv/bin/python tests/benchmarks/bench_latency.py [--samples 500] [--calls 5000] [--repeat 5]
                                                       [--json]

1. Latency. A real liteqd (concurrency 2, default settings) on a temp database,
   idle, with a task whose first line is `return time.time()`. For each sample:
   `.delay()`, t0 = time.time() right after it returns, wait for the task to
   finish, and take start = the task's result. Prints p50/p95/p99/max/min of
   start - t0 in ms (it can be below zero: the wake-up is sent before .delay()
   returns, so a task can start first).

2. Enqueue throughput: --repeat runs of --calls `.delay()` calls (medians), in
   a fresh temp database each time
     none     no daemon at all (the wake-up finds nobody: the cheap path)
     daemon   a daemon running and executing the tasks as they come
     paused   a daemon running with the queue paused: every call still sends a
              wake-up the daemon reads, but nothing competes for the database
   and the ratios daemon/none and paused/none.
"""

import argparse
import contextlib
import json
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
sys.path.insert(0, REPO)  # run from a checkout without installing
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for its support package

from liteq import backends  # noqa: E402

from support.control_client import Client  # noqa: E402
from support.processes import kill_tree  # noqa: E402

APP = '''
import time
from liteq import task


@task(name="bench_latency_stamp", max_retries=0)
def stamp():
    return time.time()


@task(name="bench_latency_noop", max_retries=0)
def noop(i):
    return None
'''


def percentile(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Daemon:
    """A liteqd subprocess in its own session; kill() takes its whole group down."""

    def __init__(self, workdir, app_path, db, sock, concurrency):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LITEQ_")}
        env.update(LITEQ_DB=db, LITEQ_SOCKET=sock,
                   PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
        self.log = os.path.join(workdir, f"liteqd-{os.path.basename(db)}.log")
        self.sock = sock
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "liteqd.cli", "--app", app_path, "--db", db,
                 "--socket", sock, "--log-format", "json", "--concurrency", str(concurrency)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            with open(self.log, "rb") as f:
                if b'"daemon.ready"' in f.read():
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                with open(self.log, errors="replace") as f:
                    raise SystemExit(f"liteqd did not start:\n{f.read()[-3000:]}")
            time.sleep(0.02)

    def request(self, op, **args):
        with Client(self.sock, timeout=10) as c:
            reply = c.request(op, **args)
        if not reply.get("ok"):
            raise RuntimeError(f"liteqd refused {op}: {reply}")
        return reply

    def kill(self):
        ps = None
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                ps = psutil.Process(self.proc.pid)
        kill_tree(self.proc, ps)


def use_db(path, sock):
    os.environ["LITEQ_DB"] = path
    os.environ["LITEQ_SOCKET"] = sock
    backends.forget_backends()
    return backends.get_backend()


def wait_done(store, task_id, timeout=10.0):
    """The finished task row (polls with short sleeps: the wait is not what is measured)."""
    deadline = time.monotonic() + timeout
    pause = 0.0002
    while True:
        row = store.get_task(task_id)
        if row["status"] in ("done", "failed"):
            if row["status"] != "done":
                raise RuntimeError(f"task {task_id} failed: {row['error']}")
            return row
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} still {row['status']} after {timeout:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.002)


def wait_idle(store, timeout=120.0):
    deadline = time.monotonic() + timeout
    while store.count_tasks(status="pending") + store.count_tasks(status="running"):
        if time.monotonic() > deadline:
            raise TimeoutError("the daemon did not drain the queue")
        time.sleep(0.05)


def enqueue_rate(app, calls):
    app.noop.delay(-1)  # warm-up: connection, statement cache, waker
    t0 = time.perf_counter()
    for i in range(calls):
        app.noop.delay(i)
    return calls / (time.perf_counter() - t0)


def run(samples, calls, repeat, concurrency):
    workdir = tempfile.mkdtemp(prefix="lqbench-", dir="/tmp")
    app_path = os.path.join(workdir, "bench_latency_app.py")
    with open(app_path, "w") as f:
        f.write(APP)
    sys.path.insert(0, workdir)
    import bench_latency_app as app

    daemons = []
    fig = {"samples": samples, "calls": calls, "repeat": repeat, "concurrency": concurrency,
           "python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        # --- enqueue throughput, no daemon at all --------------------------------
        none = []
        for r in range(repeat):
            use_db(os.path.join(workdir, f"none{r}.db"), os.path.join(workdir, f"n{r}.sock"))
            none.append(enqueue_rate(app, calls))

        # --- latency: an idle daemon ----------------------------------------------
        sock = os.path.join(workdir, "lat.sock")
        db = os.path.join(workdir, "latency.db")
        store = use_db(db, sock)
        d = Daemon(workdir, app_path, db, sock, concurrency)
        daemons.append(d)
        time.sleep(0.5)  # past the start-up claims: idle
        lat = []
        for _ in range(samples):
            task_id = app.stamp.delay()
            t0 = time.time()
            row = wait_done(store, task_id)
            lat.append((json.loads(row["result"]) - t0) * 1000)
        d.kill()

        # --- enqueue throughput with a daemon: executing, and with the queue paused
        with_daemon, paused = [], []
        for r in range(repeat):
            for mode, out in (("daemon", with_daemon), ("paused", paused)):
                sock = os.path.join(workdir, f"{mode[0]}{r}.sock")
                db = os.path.join(workdir, f"{mode}{r}.db")
                store = use_db(db, sock)
                d = Daemon(workdir, app_path, db, sock, concurrency)
                daemons.append(d)
                if mode == "paused":
                    d.request("pause", queue="default")
                time.sleep(0.3)
                out.append(enqueue_rate(app, calls))
                if mode == "daemon":
                    wait_idle(store)
                d.kill()

        fig["latency_ms"] = {"p50": percentile(lat, 50), "p95": percentile(lat, 95),
                             "p99": percentile(lat, 99), "max": max(lat), "min": min(lat),
                             "mean": statistics.mean(lat)}
        fig["enqueue_per_s"] = {
            "none": {"median": statistics.median(none), "runs": none},
            "daemon": {"median": statistics.median(with_daemon), "runs": with_daemon},
            "paused": {"median": statistics.median(paused), "runs": paused},
        }
        med = {k: v["median"] for k, v in fig["enqueue_per_s"].items()}
        fig["ratio"] = {"daemon_vs_none": med["daemon"] / med["none"],
                        "paused_vs_none": med["paused"] / med["none"]}
        return fig
    finally:
        for d in daemons:
            d.kill()
        sys.path.remove(workdir)
        sys.modules.pop("bench_latency_app", None)
        backends.forget_backends()
        shutil.rmtree(workdir, ignore_errors=True)


def render(fig):
    lat, enq, ratio = fig["latency_ms"], fig["enqueue_per_s"], fig["ratio"]
    rows = [
        (f"latency .delay() -> first line, {fig['samples']} samples", None, None),
        ("  p50", f"{lat['p50']:.3f}", "ms"),
        ("  p95", f"{lat['p95']:.3f}", "ms"),
        ("  p99", f"{lat['p99']:.3f}", "ms"),
        ("  max", f"{lat['max']:.3f}", "ms"),
        ("  min", f"{lat['min']:.3f}", "ms"),
        (f"enqueue, {fig['calls']} x .delay(), median of {fig['repeat']}", None, None),
        ("  no daemon", f"{enq['none']['median']:,.0f}", "tasks/s"),
        ("  daemon running (executing them)", f"{enq['daemon']['median']:,.0f}", "tasks/s"),
        ("  daemon running, queue paused", f"{enq['paused']['median']:,.0f}", "tasks/s"),
        ("  ratio daemon / none", f"{ratio['daemon_vs_none']:.2f}", "x"),
        ("  ratio paused / none", f"{ratio['paused_vs_none']:.2f}", "x"),
    ]
    width = max(len(r[0]) for r in rows if r[1] is not None)
    vwidth = max(len(r[1]) for r in rows if r[1] is not None)
    out = [f"bench_latency: liteqd concurrency {fig['concurrency']}, Python {fig['python']}, "
           f"{fig['cpus']} CPUs"]
    for label, value, unit in rows:
        out.append(label if value is None else f"{label:<{width}}  {value:>{vwidth}}  {unit}")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=500, help="latency samples")
    p.add_argument("--calls", type=int, default=5000, help=".delay() calls per throughput run")
    p.add_argument("--repeat", type=int, default=5, help="throughput runs per mode (medians)")
    p.add_argument("--concurrency", type=int, default=2, help="daemon children")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    fig = run(args.samples, args.calls, args.repeat, args.concurrency)
    print(json.dumps(fig, indent=2) if args.json else render(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
