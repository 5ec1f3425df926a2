"""`liteq bench`: measure LiteQ on this machine, like redis-benchmark or pgbench.

Against a temporary queue (an SQLite file, or with --db postgresql://... a
fresh schema in that database, dropped afterwards), with a daemon it starts
itself, it measures enqueue throughput (single `.delay()` and bulk), the drain
rate of no-op tasks, and the latency from `.delay()` returning to the task's
first line. Every figure is the median of --repeat runs, and the raw insert
rate of the same database (plain sqlite3, or plain psycopg) is measured in the
same command as a baseline, because shared machines are noisy.

With --hosts N (on PostgreSQL), N daemons drain the queue together, each in
UTS, PID and mount namespaces of its own (`unshare`: a host name and a pid 1 of
its own, as on N machines), and the drain rate is theirs together.
"""

import argparse
import contextlib
import importlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from .backends import Backend
    from .launcher import DaemonHandle

BENCH_APP = '''
import asyncio
import time
from liteq import task

@task
async def nap():
    await asyncio.sleep(0.01)

@task
def noop():
    return None

@task
def stamp():
    return time.time()
'''


class Progress:
    """A one-line progress display on a terminal; plain lines otherwise."""

    def __init__(self, stream: TextIO = sys.stderr, quiet: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.quiet = quiet
        self.last = ""

    def show(self, text: str) -> None:
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

    def done(self) -> None:
        """End the progress line."""
        if self.tty and not self.quiet:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _raw_insert_rates(path: str, n_single: int, n_bulk: int) -> tuple[float, float]:
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


def _raw_postgres_rates(url: str, n_single: int, n_bulk: int) -> tuple[float, float]:
    """Baseline: plain psycopg into a table shaped like tasks (one prepared INSERT and
    its commit per row, then one executemany in a transaction)."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE raw_t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                     "name text, payload text, queue text, status text, priority int, "
                     "run_at timestamptz, created_at timestamptz)")
        conn.execute("CREATE INDEX raw_t_claim ON raw_t (queue, priority DESC, run_at, id) "
                     "WHERE status = 'pending'")
        sql = ("INSERT INTO raw_t (name, payload, queue, status, priority, run_at, created_at) "
               "VALUES (%s, %s, %s, %s, %s, now(), now()) RETURNING id")
        row = ("noop", '{"args":[],"kwargs":{}}', "default", "pending", 0)
        conn.execute(sql, row, prepare=True).fetchone()
        t0 = time.perf_counter()
        for _ in range(n_single):
            conn.execute(sql, row, prepare=True).fetchone()
        single = n_single / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(sql.replace(" RETURNING id", ""), [row] * n_bulk)
        bulk = n_bulk / (time.perf_counter() - t0)
        conn.execute("DROP TABLE raw_t")
    return single, bulk


class Scratch:
    """Temporary queues for the runs: SQLite files in a temp dir, or fresh schemas of
    the PostgreSQL database `--db` names (each dropped at the end)."""

    def __init__(self, workdir: str, db: str | None = None) -> None:
        from .backends import is_postgres
        self.workdir = workdir
        self.server = db if db and is_postgres(db) else None
        self.schemas: list[str] = []

    @property
    def kind(self) -> str:
        """'PostgreSQL' or 'SQLite', for the baseline's label."""
        return "PostgreSQL" if self.server else "SQLite"

    def queue(self, name: str) -> str:
        """A fresh, empty queue's target, exported as LITEQ_DB."""
        from .backends import forget_backends
        if self.server:
            schema = f"liteq_bench_{uuid.uuid4().hex[:10]}"
            self._sql(f"CREATE SCHEMA {schema}")
            self.schemas.append(schema)
            target = _with_query(self.server, options=f"-csearch_path={schema}")
        else:
            target = os.path.join(self.workdir, name + ".db")
        os.environ["LITEQ_DB"] = target
        forget_backends()
        return target

    def raw_rates(self, n_single: int, n_bulk: int) -> tuple[float, float]:
        """The baseline insert rates of this kind of database: (single, bulk) rows/s."""
        if self.server:
            return _raw_postgres_rates(self.queue("raw"), n_single, n_bulk)
        return _raw_insert_rates(os.path.join(self.workdir, "raw.db"), n_single, n_bulk)

    def close(self) -> None:
        """Drop the schemas made for the runs."""
        from .backends import forget_backends
        forget_backends()
        for schema in self.schemas:
            with contextlib.suppress(Exception):  # the figures matter more than the cleanup
                self._sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.schemas = []

    def _sql(self, statement: str) -> None:
        import psycopg
        assert self.server is not None  # (only used on PostgreSQL)
        with psycopg.connect(self.server, autocommit=True) as conn:
            # A str, not a LiteralString: the schema names in it are made by this module.
            conn.execute(statement)  # pyright: ignore[reportCallIssue, reportArgumentType]


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _percentile(values: Iterable[float], p: float) -> float | None:
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


@contextlib.contextmanager
def _daemons(app_path: str, queue: str, concurrency: int, workdir: str, run: int,
             hosts: int) -> "Generator[list[tuple[DaemonHandle, str]], None, None]":
    """The daemons of one run, stopped at the end: one as usual, or `hosts` daemons
    each in namespaces of its own (named liteq-bench-1, -2, ...) with its own control
    socket. Yields [(handle, control socket path)]."""
    from .launcher import start_daemon
    with contextlib.ExitStack() as stack:
        if hosts == 1:
            handle = start_daemon(app_path, db=queue, concurrency=concurrency,
                                  log_path=os.path.join(workdir, f"drain{run}.log"))
            stack.enter_context(handle)
            yield [(handle, os.environ["LITEQ_SOCKET"])]
            return
        started: list[tuple[DaemonHandle, str]] = []
        for n in range(1, hosts + 1):
            sock = os.path.join(workdir, f"host{n}.sock")
            handle = start_daemon(app_path, db=queue, concurrency=concurrency, socket=sock,
                                  hostname=f"liteq-bench-{n}",
                                  log_path=os.path.join(workdir, f"drain{run}-host{n}.log"))
            stack.enter_context(handle)
            started.append((handle, sock))
        yield started


def _drain_once(app_path: str, queue: str, concurrency: int, workdir: str, label: str,
                options: dict[str, Any], timeout: float) -> float:
    """Start one daemon on a queue already filled, wait until nothing is pending or
    running, stop it; returns tasks/s over the finish window (first to last finish)."""
    from .backends import get_backend
    from .launcher import start_daemon
    store = get_backend()
    total = store.count_tasks()
    with start_daemon(app_path, db=queue, concurrency=concurrency,
                      log_path=os.path.join(workdir, f"{label}.log"), **options):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if store.count_tasks(status="pending") + store.count_tasks(status="running") == 0:
                break
            time.sleep(0.1)
        first, last = store.finish_window()
    done = store.count_tasks(status="done")
    if done != total:
        raise RuntimeError(f"benchmark drain {label}: {done} of {total} tasks done "
                           f"within {timeout:g} s")
    assert first is not None and last is not None, "no task was done"
    return total / max(last - first, 1e-9)


def run_async_bench(tasks: int = 10000, concurrency: int = 2, async_concurrency: int = 100,
                    repeat: int = 3, progress: Progress | None = None,
                    db: str | None = None) -> dict[str, Any]:
    """The async-sleep workload: `tasks` coroutine tasks that each `await
    asyncio.sleep(0.01)`, drained by `concurrency` children, once with
    --async-concurrency 1 (one coroutine per child at a time, the baseline) and once
    with `async_concurrency`, `repeat` times each; returns the figures (medians)."""
    progress = progress or Progress(quiet=True)
    workdir = tempfile.mkdtemp(prefix="liteq-bench-")
    scratch = Scratch(workdir, db)
    saved_env = {k: os.environ.get(k) for k in ("LITEQ_DB", "LITEQ_SOCKET")}
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "ctl.sock")
    app_path = os.path.join(workdir, "liteq_bench_app.py")
    with open(app_path, "w") as f:
        f.write(BENCH_APP)
    sys.path.insert(0, workdir)
    try:
        app = importlib.import_module("liteq_bench_app")  # written above
        figures: dict[str, Any]
        figures = {"workload": "async-sleep", "tasks": tasks, "concurrency": concurrency,
                   "async_concurrency": async_concurrency, "repeat": repeat,
                   "backend": scratch.kind.lower(), "runs": {}}
        runs = figures["runs"]
        settings = [("baseline_per_s", 1), ("async_drain_per_s", async_concurrency)]
        for r in range(repeat):
            for key, n in settings:
                progress.show(f"[{r + 1}/{repeat}] drain: {tasks} x await asyncio.sleep(0.01), "
                              f"{concurrency} children, --async-concurrency {n}")
                queue = scratch.queue(f"async{r}n{n}")
                app.nap.starmap([()] * tasks)
                # A hang guard: a busy machine (or a PostgreSQL commit per task at N=1)
                # may take many times the ideal tasks * 10 ms / slots.
                timeout = max(120.0, 20 * tasks * 0.01 / (concurrency * n))
                runs.setdefault(key, []).append(_drain_once(
                    app_path, queue, concurrency, workdir, f"async{r}n{n}",
                    {"async_concurrency": n}, timeout))
        progress.done()
        med = {k: statistics.median(v) for k, v in runs.items()}
        med["speedup"] = med["async_drain_per_s"] / med["baseline_per_s"]
        figures["median"] = med
        figures["scratch_schemas"] = list(scratch.schemas)  # dropped on the way out
        return figures
    finally:
        sys.path.remove(workdir)
        sys.modules.pop("liteq_bench_app", None)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        scratch.close()
        shutil.rmtree(workdir, ignore_errors=True)


def render_async(figures: dict[str, Any]) -> str:
    """The async-sleep workload's results as an aligned text table."""
    med = figures["median"]
    kind = "PostgreSQL" if figures.get("backend") == "postgresql" else "SQLite"
    n = figures["async_concurrency"]
    rows = [(f"drain, --async-concurrency {n}", f"{med['async_drain_per_s']:,.0f}", "tasks/s"),
            ("baseline: drain, --async-concurrency 1", f"{med['baseline_per_s']:,.0f}",
             "tasks/s"),
            (f"ratio {n} / 1", f"{med['speedup']:.1f}", "x")]
    width = max(len(label) for label, _, _ in rows)
    lines = [f"liteq bench ({kind}): async-sleep, {figures['tasks']} tasks that await "
             f"asyncio.sleep(0.01), {figures['concurrency']} children, median of "
             f"{figures['repeat']} runs", ""]
    lines += [f"  {label:<{width}}  {value:>10}  {unit}" for label, value, unit in rows]
    return "\n".join(lines)


def _drained_by_host(daemons: "list[tuple[DaemonHandle, str]]") -> list[dict[str, Any]]:
    """[{hostname, pid_in_namespace, tasks}]: what each daemon says it ran."""
    from . import control
    out: list[dict[str, Any]] = []
    for _, sock in daemons:
        st = control.status(include_queues=False, path=sock)
        out.append({"hostname": st["hostname"], "pid_in_namespace": st["pid"],
                    "tasks": st["tasks_done"]})
    return out


def run_bench(tasks: int = 20000, concurrency: int = 2, repeat: int = 3, samples: int = 500,
              progress: Progress | None = None, db: str | None = None,
              hosts: int = 1) -> dict[str, Any]:
    """Run every measurement and return the figures as a dict. db: a PostgreSQL URL to
    measure on (default: SQLite files in a temp dir); hosts: daemons that drain together,
    each in namespaces of its own (PostgreSQL; 1 when namespaces are unavailable, with
    the reason in figures["hosts_note"])."""
    progress = progress or Progress(quiet=True)
    note = None
    if hosts > 1:
        from .launcher import namespaces_unavailable
        note = namespaces_unavailable()
        if note:
            hosts = 1
    workdir = tempfile.mkdtemp(prefix="liteq-bench-")
    scratch = Scratch(workdir, db)
    saved_env = {k: os.environ.get(k) for k in ("LITEQ_DB", "LITEQ_SOCKET")}
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "ctl.sock")
    app_path = os.path.join(workdir, "liteq_bench_app.py")
    with open(app_path, "w") as f:
        f.write(BENCH_APP)
    sys.path.insert(0, workdir)
    try:
        app = importlib.import_module("liteq_bench_app")  # written above
        from .backends import get_backend

        n_single = min(tasks, 10000)
        figures: dict[str, Any] = {"tasks": tasks, "concurrency": concurrency, "repeat": repeat,
                   "samples": samples, "backend": scratch.kind.lower(), "hosts": hosts,
                   "runs": {}}
        if note:
            figures["hosts_note"] = note
        runs: dict[str, list[Any]] = figures["runs"]  # numbers (None: no latency sample)

        def record(key: str, value: float | None) -> None:
            runs.setdefault(key, []).append(value)

        for r in range(repeat):
            progress.show(f"[{r + 1}/{repeat}] baseline: raw {scratch.kind} inserts")
            single, bulk = scratch.raw_rates(n_single, tasks)
            record("raw_insert_per_s", single)
            record("raw_executemany_per_s", bulk)

            progress.show(f"[{r + 1}/{repeat}] enqueue: {n_single} x .delay(), no daemon")
            scratch.queue(f"enq{r}")
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
                          f"concurrency {concurrency}"
                          + (f", {hosts} hosts" if hosts > 1 else ""))
            queue = scratch.queue(f"drain{r}")
            if hosts == 1:
                app.noop.starmap([()] * tasks)
            with _daemons(app_path, queue, concurrency, workdir, r, hosts) as daemons:
                if hosts > 1:
                    # Every host is up before the tasks arrive (they start one after
                    # another), so the drain is theirs together from its first task.
                    app.noop.starmap([()] * tasks)
                daemon = daemons[0][0]
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
                assert first is not None and last is not None, "no task was done"
                record("drain_per_s", tasks / max(last - first, 1e-9))
                record("supervisor_rss_mb", rss / 1e6)
                if hosts > 1:
                    figures["drain_by_host"] = _drained_by_host(daemons)

                progress.show(f"[{r + 1}/{repeat}] enqueue: {n_single} x .delay(), "
                              f"daemon running")
                t0 = time.perf_counter()
                for _ in range(n_single):
                    app.noop.apply_async(countdown=3600)
                record("delay_daemon_per_s", n_single / (time.perf_counter() - t0))

                latencies: list[float] = []
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
        figures["scratch_schemas"] = list(scratch.schemas)  # dropped on the way out
        return figures
    finally:
        sys.path.remove(workdir)
        sys.modules.pop("liteq_bench_app", None)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        scratch.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _wait_result(store: "Backend", task_id: int, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while True:
        row = store.get_task(task_id)
        if row is not None and row["status"] == "done":
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
    ("raw_insert_per_s", "baseline: raw {kind} INSERT+commit", "rows/s", "{:,.0f}"),
    ("raw_executemany_per_s", "baseline: raw {kind} executemany", "rows/s", "{:,.0f}"),
    ("delay_vs_raw", "ratio .delay() / raw INSERT", "x", "{:.2f}"),
    ("bulk_vs_raw", "ratio bulk / raw executemany", "x", "{:.2f}"),
    ("delay_daemon_vs_none", "ratio enqueue with daemon / without", "x", "{:.2f}"),
]


def render(figures: dict[str, Any]) -> str:
    """The results as an aligned text table."""
    med = figures["median"]
    kind = "PostgreSQL" if figures.get("backend") == "postgresql" else "SQLite"
    hosts = figures.get("hosts", 1)
    head = (f"liteq bench ({kind}): {figures['tasks']} tasks, concurrency "
            f"{figures['concurrency']}" + (f" on each of {hosts} hosts" if hosts > 1 else "")
            + f", median of {figures['repeat']} runs, {figures['samples']} latency samples")
    rows = [(key, label.format(kind=kind), unit, fmt) for key, label, unit, fmt in ROWS]
    if hosts > 1:
        rows = [(k, f"{label}, {hosts} hosts together" if k == "drain_per_s" else label, u, f)
                for k, label, u, f in rows]
    width = max(len(label) for _, label, _, _ in rows)
    lines = [head, ""]
    for key, label, unit, fmt in rows:
        if key in med:
            lines.append(f"  {label:<{width}}  {fmt.format(med[key]):>10}  {unit}")
    if figures.get("drain_by_host"):
        lines.append("  tasks drained per host (last run): " + ", ".join(
            f"{h['hostname']} {h['tasks']}" for h in figures["drain_by_host"]))
    if figures.get("hosts_note"):
        lines.append(f"  one daemon only: {figures['hosts_note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `liteq bench`."""
    p = argparse.ArgumentParser(prog="liteq bench", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=None,
                   help="tasks per drain/bulk run (default 20000; async-sleep: 10000)")
    p.add_argument("--concurrency", type=int, default=2, help="daemon children")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (medians)")
    p.add_argument("--samples", type=int, default=500, help="latency samples per run")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--workload", choices=("noop", "async-sleep"), default="noop",
                   help="noop: the enqueue, drain and latency figures (default); "
                        "async-sleep: coroutine tasks that await asyncio.sleep(0.01), "
                        "drained with --async-concurrency 1 and N (default --tasks 10000)")
    p.add_argument("--async-concurrency", type=int, default=100,
                   help="N for the async-sleep workload (default 100)")
    p.add_argument("--db", help="measure on this PostgreSQL database (a URL; each run gets a "
                                "schema of its own, dropped afterwards); default: SQLite "
                                "files in a temp dir")
    p.add_argument("--hosts", type=int, default=1,
                   help="daemons that drain the queue together, each in namespaces of its "
                        "own as on a host of its own (needs --db postgresql://... and root; "
                        "default 1)")
    args = p.parse_args(argv)
    if args.tasks is None:
        args.tasks = 10000 if args.workload == "async-sleep" else 20000
    for name in ("tasks", "concurrency", "repeat", "samples", "hosts", "async_concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.hosts > 1 and not args.db:
        p.error("--hosts needs --db postgresql://...: an SQLite queue serves one host")
    if args.db:
        from .backends import identity_of, is_postgres
        from .errors import ConfigError
        if not is_postgres(args.db):
            p.error("--db takes a PostgreSQL URL; SQLite runs use temp files by default")
        try:
            identity_of(args.db)
        except ConfigError as exc:
            p.error(str(exc))
    if args.workload == "async-sleep":
        if args.hosts > 1:
            p.error("--hosts is for the noop workload")
        figures = run_async_bench(args.tasks, args.concurrency, args.async_concurrency,
                                  args.repeat, db=args.db, progress=Progress(
                                      quiet=args.json and not sys.stderr.isatty()))
        print(json.dumps(figures, indent=2) if args.json else render_async(figures))
        return 0
    figures = run_bench(args.tasks, args.concurrency, args.repeat, args.samples,
                        progress=Progress(quiet=args.json and not sys.stderr.isatty()),
                        db=args.db, hosts=args.hosts)
    if figures.get("hosts_note"):
        print(f"liteq bench: --hosts {args.hosts}: {figures['hosts_note']}; ran one daemon",
              file=sys.stderr)
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    return 0
