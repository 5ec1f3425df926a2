"""The cost of counting outcomes (task_stats) on the drain rate: `liteq bench`'s drain
of no-op tasks with this tree's code and with a baseline tree's (one without the
statistics), alternated in one command so both see the same machine.

Run:  .venv/bin/python tests/bench_metrics.py --base /tmp/base [--rounds 7]
          [--tasks 5000] [--db postgresql://...]
      (make the baseline with: git archive main | tar -x -C /tmp/base)

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

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def main() -> int:
    """Alternate baseline and this tree; print the medians and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="a checkout of the baseline code")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--db", default=None, help="a PostgreSQL URL (default: SQLite)")
    args = p.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
