"""The cost of counting outcomes (task_stats) on the drain rate: `liteq bench`'s drain
of no-op tasks with this tree's code and with a baseline tree's (one without the
statistics), alternated in one command so both see the same machine.

Run:  .venv/bin/python tests/benchmarks/bench_metrics.py --base /tmp/base [--rounds 7]
          [--tasks 5000] [--db postgresql://...] [--what drain|record]
      (make the baseline with: git archive main | tar -x -C /tmp/base)

--what record times backend.record_outcomes() alone, in-process (batches of
--batch done outcomes of already claimed tasks), which is where the statistics
are written: far less noisy than a whole drain on a shared machine.

Not collected by pytest (a benchmark prints figures; tests assert behaviour).
Prints each run, the medians and the ratio this/base.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def drain_rate(tree: str, tasks: int, db: str | None) -> float:
    """One `liteq bench` run's drain rate (tasks/s) with the code of `tree`."""
    env = dict(os.environ, PYTHONPATH=tree)
    argv = [sys.executable, "-c", "import sys; from liteq.cli import main; sys.exit(main())",
            "bench", "--json", "--tasks", str(tasks), "--repeat", "1", "--samples", "10"]
    if db:
        argv += ["--db", db]
    with tempfile.TemporaryDirectory() as cwd:   # no tree of the other side on sys.path
        out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                             timeout=600, check=True).stdout
    return float(json.loads(out)["runs"]["drain_per_s"][0])


# The child of --what record: prints the seconds record_outcomes() took per task.
RECORD_CHILD = r"""
import json, os, sys, tempfile, time, uuid
from urllib.parse import quote
from liteq.backends import open_backend
from liteq.taskspec import NewTasks, TaskOptions
tasks, batch, db = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
schema = None
if db:
    import psycopg
    schema = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(db, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    target = db + ("&" if "?" in db else "?") + "options=" + quote(f"-csearch_path={schema}")
else:
    target = os.path.join(tempfile.mkdtemp(), "q.db")
b = open_backend(target)
try:
    b.enqueue_many(NewTasks("noop", json.dumps([[]] * tasks), tasks, TaskOptions.build()))
    spent = 0.0
    while True:
        rows = b.claim("w1", ["default"], batch)
        if not rows:
            break
        t = time.time()
        outcomes = [(r["id"], "null", t, t) for r in rows]
        t0 = time.perf_counter()
        with b.batch():
            b.record_outcomes("w1", done=outcomes)
        spent += time.perf_counter() - t0
    print(spent / tasks)
finally:
    b.close()
    if schema:
        with psycopg.connect(db, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {schema} CASCADE")
"""


def record_cost(tree: str, tasks: int, batch: int, db: str | None) -> float:
    """Microseconds record_outcomes() takes per task with the code of `tree`."""
    env = dict(os.environ, PYTHONPATH=tree)
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", RECORD_CHILD, str(tasks), str(batch),
                              db or ""], env=env, cwd=cwd, capture_output=True, text=True,
                             timeout=600, check=True).stdout
    return float(out.strip()) * 1e6


def main() -> int:
    """Alternate baseline and this tree; print the medians and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="a checkout of the baseline code")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--db", default=None, help="a PostgreSQL URL (default: SQLite)")
    p.add_argument("--what", choices=("drain", "record"), default="drain")
    p.add_argument("--batch", type=int, default=20, help="outcomes per batch (record)")
    args = p.parse_args()
    if args.what == "record":
        return _compare_record(args)
    rates: dict[str, list[float]] = {"base": [], "this": []}
    for r in range(args.rounds):
        # Alternate which side goes first, so neither always meets a warmer machine.
        order = ("base", "this") if r % 2 == 0 else ("this", "base")
        for side in order:
            rate = drain_rate(args.base if side == "base" else HERE, args.tasks, args.db)
            rates[side].append(rate)
            print(f"round {r + 1} {side:4s} drain {rate:8.0f} tasks/s", flush=True)
    base, this = statistics.median(rates["base"]), statistics.median(rates["this"])
    print(f"median drain  base {base:.0f}/s  this {this:.0f}/s  ratio this/base "
          f"{this / base:.3f}  ({args.rounds} rounds, {args.tasks} tasks, "
          f"{'PostgreSQL' if args.db else 'SQLite'})")
    return 0


def _compare_record(args: argparse.Namespace) -> int:
    costs: dict[str, list[float]] = {"base": [], "this": []}
    for r in range(args.rounds):
        order = ("base", "this") if r % 2 == 0 else ("this", "base")
        for side in order:
            cost = record_cost(args.base if side == "base" else HERE, args.tasks, args.batch,
                               args.db)
            costs[side].append(cost)
            print(f"round {r + 1} {side:4s} record_outcomes {cost:7.1f} us/task", flush=True)
    base, this = statistics.median(costs["base"]), statistics.median(costs["this"])
    print(f"median record_outcomes  base {base:.1f} us/task  this {this:.1f} us/task  "
          f"ratio this/base {this / base:.3f}  (rate ratio {base / this:.3f}; "
          f"{args.rounds} rounds, {args.tasks} tasks, batches of {args.batch}, "
          f"{'PostgreSQL' if args.db else 'SQLite'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
