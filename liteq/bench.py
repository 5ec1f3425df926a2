"""`liteq bench`: measure LiteQ on this machine, like redis-benchmark or pgbench.

Against a temporary database, with a daemon it starts itself, it measures
enqueue throughput (single `.delay()` and bulk), the drain rate of no-op tasks,
and the latency from `.delay()` returning to the task's first line. Every
figure is the median of --repeat runs, and the machine's raw SQLite insert
rate is measured in the same command as a baseline, because shared machines
are noisy.
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

BENCH_APP = '''
import time
from liteq import task

@task
def noop():
    return None

@task
def stamp():
    return time.time()
'''


class Progress:
    """A one-line progress display on a terminal; plain lines otherwise."""

    def __init__(self, stream=sys.stderr, quiet=False):
        self.stream = stream
        self.tty = stream.isatty()
        self.quiet = quiet
        self.last = ""

    def show(self, text):
        """Replace the progress line with `text`."""
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif text != self.last and not text.endswith("%"):
            self.stream.write(text + "\n")
            self.stream.flush()
        self.last = text

    def done(self):
        """End the progress line."""
        if self.tty and not self.quiet:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _raw_insert_rates(path, n_single, n_bulk):
    """Baseline: plain sqlite3 inserts into a table shaped like tasks, same pragmas."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, payload TEXT, "
                 "queue TEXT, status TEXT, priority INTEGER, run_at REAL, created_at REAL)")
    conn.execute("CREATE INDEX t_claim ON t(status, queue, priority DESC, run_at, id)")
    row = ("noop", '{"args":[],"kwargs":{}}', "default", "pending", 0, 0.0, 0.0)
    sql = "INSERT INTO t (name, payload, queue, status, priority, run_at, created_at) " \
          "VALUES (?,?,?,?,?,?,?)"
    t0 = time.perf_counter()
    for _ in range(n_single):
        conn.execute(sql, row)
    single = n_single / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(sql, [row] * n_bulk)
    conn.execute("COMMIT")
    bulk = n_bulk / (time.perf_counter() - t0)
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
    return single, bulk


def _percentile(values, p):
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _fresh_db(workdir, name):
    from .backends import forget_backends
    path = os.path.join(workdir, name)
    os.environ["LITEQ_DB"] = path
    forget_backends()
    return path


def run_bench(tasks=20000, concurrency=2, repeat=3, samples=500, progress=None):
    """Run every measurement and return the figures as a dict."""
    progress = progress or Progress(quiet=True)
    workdir = tempfile.mkdtemp(prefix="liteq-bench-")
    saved_env = {k: os.environ.get(k) for k in ("LITEQ_DB", "LITEQ_SOCKET")}
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "ctl.sock")
    app_path = os.path.join(workdir, "liteq_bench_app.py")
    with open(app_path, "w") as f:
        f.write(BENCH_APP)
    sys.path.insert(0, workdir)
    try:
        import liteq_bench_app as app
        from .launcher import start_daemon
        from .backends import get_backend

        n_single = min(tasks, 10000)
        figures = {"tasks": tasks, "concurrency": concurrency, "repeat": repeat,
                   "samples": samples, "runs": {}}
        runs = figures["runs"]

        def record(key, value):
            runs.setdefault(key, []).append(value)

        for r in range(repeat):
            progress.show(f"[{r + 1}/{repeat}] baseline: raw SQLite inserts")
            single, bulk = _raw_insert_rates(os.path.join(workdir, f"raw{r}.db"),
                                             n_single, tasks)
            record("raw_insert_per_s", single)
            record("raw_executemany_per_s", bulk)

            progress.show(f"[{r + 1}/{repeat}] enqueue: {n_single} x .delay(), no daemon")
            _fresh_db(workdir, f"enq{r}.db")
            app.noop.delay()  # schema
            t0 = time.perf_counter()
            for _ in range(n_single):
                app.noop.delay()
            record("delay_per_s", n_single / (time.perf_counter() - t0))

            # The same enqueues due in an hour: compared below with a daemon running,
            # so the ratio measures the wake-ups and the daemon's reaction, not CPU
            # taken by tasks executing at the same time.
            t0 = time.perf_counter()
            for _ in range(n_single):
                app.noop.apply_async(countdown=3600)
            record("delay_later_per_s", n_single / (time.perf_counter() - t0))

            progress.show(f"[{r + 1}/{repeat}] enqueue: bulk .map() of {tasks}")
            t0 = time.perf_counter()
            app.noop.starmap([()] * tasks)
            record("bulk_per_s", tasks / (time.perf_counter() - t0))

            progress.show(f"[{r + 1}/{repeat}] drain: {tasks} queued no-op tasks, "
                          f"concurrency {concurrency}")
            db = _fresh_db(workdir, f"drain{r}.db")
            app.noop.starmap([()] * tasks)
            with start_daemon(app_path, db=db, concurrency=concurrency,
                              log_path=os.path.join(workdir, f"drain{r}.log")) as daemon:
                store = get_backend()
                deadline = time.monotonic() + max(60.0, tasks / 500)
                while True:
                    left = store.count_tasks(status="pending") + store.count_tasks(
                        status="running")
                    progress.show(f"[{r + 1}/{repeat}] drain: "
                                  f"{100 * (tasks - left) // tasks}%")
                    if left == 0 or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                rss = _rss(daemon.pid)
                first, last = store.finish_window()
                record("drain_per_s", tasks / max(last - first, 1e-9))
                record("supervisor_rss_mb", rss / 1e6)

                progress.show(f"[{r + 1}/{repeat}] enqueue: {n_single} x .delay(), "
                              f"daemon running")
                t0 = time.perf_counter()
                for _ in range(n_single):
                    app.noop.apply_async(countdown=3600)
                record("delay_daemon_per_s", n_single / (time.perf_counter() - t0))

                latencies = []
                for i in range(samples):
                    if i % 25 == 0:
                        progress.show(f"[{r + 1}/{repeat}] latency: {i}/{samples}")
                    task_id = app.stamp.delay()
                    t_enq = time.time()
                    started = _wait_result(store, task_id)
                    latencies.append((started - t_enq) * 1000)
                record("latency_p50_ms", _percentile(latencies, 50))
                record("latency_p95_ms", _percentile(latencies, 95))
                record("latency_p99_ms", _percentile(latencies, 99))
                record("latency_max_ms", max(latencies))
        progress.done()
        medians = {k: statistics.median(v) for k, v in runs.items()}
        medians["delay_vs_raw"] = medians["delay_per_s"] / medians["raw_insert_per_s"]
        medians["bulk_vs_raw"] = medians["bulk_per_s"] / medians["raw_executemany_per_s"]
        medians["delay_daemon_vs_none"] = (medians["delay_daemon_per_s"]
                                           / medians["delay_later_per_s"])
        figures["median"] = medians
        return figures
    finally:
        sys.path.remove(workdir)
        sys.modules.pop("liteq_bench_app", None)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        from .backends import forget_backends
        forget_backends()
        shutil.rmtree(workdir, ignore_errors=True)


def _rss(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _wait_result(store, task_id, timeout=10.0):
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while True:
        row = store.get_task(task_id)
        if row["status"] == "done":
            return json.loads(row["result"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark task {task_id} did not finish in {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.002)


ROWS = [
    ("delay_per_s", ".delay(), one producer", "tasks/s", "{:,.0f}"),
    ("delay_later_per_s", "enqueue due later, no daemon", "tasks/s", "{:,.0f}"),
    ("delay_daemon_per_s", "enqueue due later, daemon running", "tasks/s", "{:,.0f}"),
    ("bulk_per_s", "bulk enqueue (.map)", "tasks/s", "{:,.0f}"),
    ("drain_per_s", "drain no-op tasks", "tasks/s", "{:,.0f}"),
    ("latency_p50_ms", "latency .delay() -> start, p50", "ms", "{:.2f}"),
    ("latency_p95_ms", "latency p95", "ms", "{:.2f}"),
    ("latency_p99_ms", "latency p99", "ms", "{:.2f}"),
    ("supervisor_rss_mb", "supervisor RSS", "MB", "{:.1f}"),
    ("raw_insert_per_s", "baseline: raw SQLite INSERT+commit", "rows/s", "{:,.0f}"),
    ("raw_executemany_per_s", "baseline: raw SQLite executemany", "rows/s", "{:,.0f}"),
    ("delay_vs_raw", "ratio .delay() / raw INSERT", "x", "{:.2f}"),
    ("bulk_vs_raw", "ratio bulk / raw executemany", "x", "{:.2f}"),
    ("delay_daemon_vs_none", "ratio enqueue with daemon / without", "x", "{:.2f}"),
]


def render(figures):
    """The results as an aligned text table."""
    med = figures["median"]
    head = (f"liteq bench: {figures['tasks']} tasks, concurrency {figures['concurrency']}, "
            f"median of {figures['repeat']} runs, {figures['samples']} latency samples")
    width = max(len(label) for _, label, _, _ in ROWS)
    lines = [head, ""]
    for key, label, unit, fmt in ROWS:
        if key in med:
            lines.append(f"  {label:<{width}}  {fmt.format(med[key]):>10}  {unit}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Entry point of `liteq bench`."""
    p = argparse.ArgumentParser(prog="liteq bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=20000, help="tasks per drain/bulk run")
    p.add_argument("--concurrency", type=int, default=2, help="daemon children")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (medians)")
    p.add_argument("--samples", type=int, default=500, help="latency samples per run")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    for name in ("tasks", "concurrency", "repeat", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    figures = run_bench(args.tasks, args.concurrency, args.repeat, args.samples,
                        progress=Progress(quiet=args.json and not sys.stderr.isatty()))
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    return 0
