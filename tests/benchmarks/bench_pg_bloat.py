"""PostgreSQL under churn: does the tasks table level off when tasks flow through it
with retention on, or grow without end?

    .venv/bin/python tests/benchmarks/bench_pg_bloat.py [--tasks 1000000] [--round 10000]
                                                        [--batch 32] [--age 2] [--every 100000]
                                                        [--url URL]

Not collected by pytest (a benchmark prints figures; tests assert behaviour).
In a fresh schema of its own (dropped at the end) on the server (--url, else
LITEQ_TEST_POSTGRES, else the project's standard one), it pushes --tasks tasks
through the PostgreSQL backend in rounds, as an app and its daemon would:

  enqueue   --round tasks in one enqueue_many (the statement of .starmap())
  drain     batch() after batch(), each recording the outcomes of the tasks claimed
            in the one before (done) and claiming --batch more: the daemon's round
  retain    --retention purge (the default): purge(older_than=--age), as a schedule
            calling purge_tasks() would (on a server whose autovacuum is off, it
            vacuums the table afterwards); --retention prune: prune("done", --age,
            1,000) until a batch comes back short, as the daemons' own retention
            (--keep-done) does, a batch per turn of their loop

Every --every tasks it prints pg_total_relation_size('tasks') (the table with its
indexes and TOAST), the heap and the indexes alone, the live and dead rows and
the VACUUMs so far, by purge() and by autovacuum (from pg_stat_user_tables),
then the series and the
ratio of the last size to the size at 300,000 tasks (or the first figure when
the run is shorter): near 1 when the table levels off.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # run from a checkout without installing
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for its support package

from support import pg_helpers  # noqa: E402
from psycopg import sql  # noqa: E402
from support.pg_cluster import missing_tools, throwaway_cluster  # noqa: E402
from liteq import backends  # noqa: E402
from liteq.taskspec import NewTasks, TaskOptions  # noqa: E402
from liteqd.duties import PRUNE_BATCH  # noqa: E402

SIZES = ("SELECT pg_total_relation_size('tasks') AS total, pg_relation_size('tasks') AS heap, "
         "pg_indexes_size('tasks') AS indexes, n_live_tup AS live, n_dead_tup AS dead, "
         "vacuum_count AS vacuums, autovacuum_count AS autovacuums "
         "FROM pg_stat_user_tables WHERE relid = 'tasks'::regclass")
INDEX_SIZES = ("SELECT indexrelid::regclass::text AS name, pg_relation_size(indexrelid) AS size "
               "FROM pg_index WHERE indrelid = 'tasks'::regclass ORDER BY 1")
SETTINGS = ("SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum_naptime', "
            "'autovacuum_vacuum_cost_delay', 'autovacuum_vacuum_cost_limit', 'autovacuum')")
REL_OPTIONS = "SELECT reloptions FROM pg_class WHERE oid = 'tasks'::regclass"


def mb(n):
    """Bytes as megabytes (decimal), for the table."""
    return n / 1e6


def drain(store, batch, worker="bloat"):
    """Claim and record done, batch() after batch(), until nothing is due; returns
    how many tasks were recorded."""
    recorded = 0
    held = []
    while True:
        t = time.time()
        with store.batch():
            if held:
                recorded += len(store.record_outcomes(
                    worker, done=[(i, "null", t, t) for i in held]))
            held = [r["id"] for r in store.claim(worker, ["default"], batch)]
        if not held:
            return recorded


def run(url, args):
    """Push the tasks through and return the series [(tasks, sizes dict, elapsed s)]."""
    producer = backends.open_backend(url)
    daemon = backends.open_backend(url, daemon=True)
    series = []
    pushed = next_mark = 0
    next_mark = args.every
    t0 = time.monotonic()
    try:
        while pushed < args.tasks:
            k = min(args.round, args.tasks - pushed)
            producer.enqueue_many(NewTasks("noop", json.dumps([[]] * k), k, TaskOptions()))
            done = drain(daemon, args.batch)
            if done != k:
                raise RuntimeError(f"round of {k} tasks recorded {done}")
            pushed += k
            if args.retention == "purge":
                daemon.purge(args.age)
            else:
                while daemon.prune("done", args.age, PRUNE_BATCH) == PRUNE_BATCH:
                    pass
            if pushed >= next_mark or pushed == args.tasks:
                sizes = pg_helpers.rows(url, SIZES)[0]
                elapsed = time.monotonic() - t0
                series.append((pushed, sizes, elapsed))
                print(f"{pushed:>10,}  {mb(sizes['total']):>9.1f}  {mb(sizes['heap']):>8.1f}  "
                      f"{mb(sizes['indexes']):>8.1f}  {sizes['live']:>8,}  {sizes['dead']:>9,}  "
                      f"{sizes['vacuums']:>7}  {sizes['autovacuums']:>7}  {elapsed:>7.1f}", flush=True)
                while next_mark <= pushed:
                    next_mark += args.every
    finally:
        producer.close()
        daemon.close()
    return series


def main(argv=None):
    """Run the churn and print the series and the ratio."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=1_000_000, help="tasks pushed through")
    p.add_argument("--round", type=int, default=10_000, help="tasks enqueued per round")
    p.add_argument("--batch", type=int, default=32, help="tasks claimed per batch()")
    p.add_argument("--age", type=float, default=2.0,
                   help="purge finished tasks older than this many seconds after each round")
    p.add_argument("--every", type=int, default=100_000, help="print sizes every N tasks")
    p.add_argument("--retention", choices=("purge", "prune"), default="purge",
                   help="how finished tasks are deleted after each round (see above)")
    p.add_argument("--url", default=os.environ.get(pg_helpers.ENV, pg_helpers.DEFAULT_URL))
    p.add_argument("--cluster", action="store_true",
                   help="run on a throwaway cluster (tests/support/pg_cluster.py: autovacuum on, "
                        "its naptime 10 s) instead of --url")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a server setting of the --cluster, applied with ALTER SYSTEM and a "
                        "reload (repeatable; e.g. autovacuum_naptime=60)")
    args = p.parse_args(argv)
    for name in ("tasks", "round", "batch", "every"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.set and not args.cluster:
        p.error("--set applies to a --cluster")
    if not args.cluster:
        return churn(args.url, args)
    settings = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.replace("_", "").isalnum():
            p.error(f"--set takes NAME=VALUE; got {item!r}")
        settings[name] = value
    problem = missing_tools()
    if problem:
        p.error(f"--cluster: {problem}")
    with throwaway_cluster() as cluster:
        for name, value in settings.items():
            pg_helpers.rows(cluster.admin_url, sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(name), sql.Literal(value)))
        pg_helpers.rows(cluster.admin_url, "SELECT pg_reload_conf()")
        return churn(cluster.url, args)


def churn(server, args):
    """Run the churn in a schema of its own on `server` and print the figures."""
    schema, url = pg_helpers.create_schema(server)
    try:
        backends.open_backend(url).close()   # the schema, so its settings can be shown
        settings = {r["name"]: r["setting"] for r in pg_helpers.rows(url, SETTINGS)}
        print(f"PostgreSQL, {backends.identity_of(server)}, schema {schema}: {args.tasks:,} "
              f"tasks in rounds of {args.round:,}, claimed {args.batch} per batch(), finished "
              f"tasks deleted after {args.age:g} s by {args.retention}()")
        print("server: " + ", ".join(f"{k} {v}" for k, v in sorted(settings.items())))
        print("tasks: " + ", ".join(pg_helpers.rows(url, REL_OPTIONS)[0]["reloptions"] or []))
        print()
        print(f"{'tasks':>10}  {'total MB':>9}  {'heap MB':>8}  {'index MB':>8}  {'live':>8}  "
              f"{'dead':>9}  {'VACUUM':>7}  {'autovac':>7}  {'time s':>7}")
        series = run(url, args)
        indexes = pg_helpers.rows(url, INDEX_SIZES)
    finally:
        backends.forget_backends()
        pg_helpers.drop_schema(server, schema)
    print()
    print("indexes at the end: " + ", ".join(f"{r['name']} {mb(r['size']):.1f} MB"
                                             for r in indexes))
    ref = next((s for s in series if s[0] >= 300_000), series[0])
    last = series[-1]
    late = next((s for s in series if s[0] >= 0.7 * last[0]), series[0])
    rate = last[0] / last[2]
    print(f"pg_total_relation_size('tasks'): {mb(last[1]['total']):.1f} MB after {last[0]:,} "
          f"tasks, {mb(ref[1]['total']):.1f} MB after {ref[0]:,}: ratio "
          f"{last[1]['total'] / ref[1]['total']:.2f} (indexes {mb(last[1]['indexes']):.1f} / "
          f"{mb(ref[1]['indexes']):.1f} MB: {last[1]['indexes'] / ref[1]['indexes']:.2f}); "
          f"{rate:,.0f} tasks/s through the table")
    # A table that grows without end grows over the last 30 % of the run as well; one
    # that levels off only once its first VACUUM came (late with a long naptime) does not.
    print(f"over the last {last[0] - late[0]:,} tasks: {mb(late[1]['total']):.1f} MB -> "
          f"{mb(last[1]['total']):.1f} MB, ratio {last[1]['total'] / late[1]['total']:.2f}")


if __name__ == "__main__":
    main()
