"""The panel's task search at a million tasks, on SQLite and PostgreSQL.

    .venv/bin/python tests/benchmarks/bench_panel_search.py [--n 1000000] [--repeat 5]
        [--backends sqlite,postgresql] [--url URL]

Not collected by pytest (a benchmark prints figures; tests assert behaviour).
For each backend it fills a fresh database (an SQLite file in a temp dir; a schema
of its own on the server from --url, else LITEQ_TEST_POSTGRES, else the project's
standard one, dropped at the end) with --n tasks: 40 task names, 5 queues, 80 %
done, 10 % failed (each with a traceback naming its order), 10 % pending, each with
an e-mail address and an order number in its arguments. The rows are written with
plain SQL (setup only: the fastest way to a million rows).

Then it times, as the panel's /tasks?q= page reads them (liteq.web.search.search,
one page of 50), the median of --repeat runs of:

  id            "#333333": the task by id alone (a primary-key lookup)
  number        "333333": that task by id, then the tasks whose text has the number
  common        a name part that most tasks match: the first slice fills the page
  argument      one old task's e-mail address: slices until the time budget
  error         one failed task's order number in its traceback: likewise
  nothing       text no task has: slices until the budget
  + queue       "nothing" with status=failed and queue=q1

and, as the baseline in the same command, the same "nothing" and "argument"
searches with one unbounded query (find_tasks(search=...) over the whole table):
what a search costs without the slices, and what the slices bound. A search that
stops at the budget says how far down it read (the page's "Search older" goes on).
"""

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # run from a checkout without installing
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for its support package

from liteq import backends  # noqa: E402
from liteq.web import search  # noqa: E402

NAMES = 40
ERROR = ("PaymentDeclined: order {i} declined by the bank\nTraceback (most recent call "
         "last):\n  File \"shop/payments.py\", line 88, in charge\n    raise PaymentDeclined()\n")


def status_of(i):
    return "failed" if i % 10 == 0 else "pending" if i % 10 == 1 else "done"


def build_sqlite(path, n):
    """n tasks in a fresh SQLite database at path (schema made by the backend)."""
    backends.open_backend(path).close()
    t = time.time()
    conn = sqlite3.connect(path)

    def rows():
        for i in range(1, n + 1):
            st = status_of(i)
            fin = None if st == "pending" else t - (n - i) * 0.01
            yield (f"shop.tasks.job_{i % NAMES}",
                   f'{{"args":["customer{i}@example.com",{i}],"kwargs":{{"note":"order {i}"}}}}',
                   f"q{i % 5}", st, t, t, None if fin is None else fin - 0.2, fin,
                   ERROR.format(i=i) if st == "failed" else None, 1 if fin else 0)
    conn.executemany("INSERT INTO tasks (name, payload, queue, status, run_at, created_at, "
                     "started_at, finished_at, error, attempts) VALUES (?,?,?,?,?,?,?,?,?,?)",
                     rows())
    conn.commit()
    conn.close()


def build_postgres(url, n):
    """n tasks in the schema url names (schema made by the backend)."""
    import psycopg
    backends.open_backend(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (name, payload, queue, status, started_at, finished_at, error, "
            "attempts) SELECT 'shop.tasks.job_' || (i %% %(names)s), "
            "'{\"args\":[\"customer' || i || '@example.com\",' || i || '],\"kwargs\":"
            "{\"note\":\"order ' || i || '\"}}', 'q' || (i %% 5), "
            "CASE WHEN i %% 10 = 0 THEN 'failed' WHEN i %% 10 = 1 THEN 'pending' ELSE 'done' END, "
            "CASE WHEN i %% 10 = 1 THEN NULL ELSE now() - interval '1 second' END, "
            "CASE WHEN i %% 10 = 1 THEN NULL ELSE now() END, "
            "CASE WHEN i %% 10 = 0 THEN replace(%(error)s, '{i}', i::text) END, "
            "CASE WHEN i %% 10 = 1 THEN 0 ELSE 1 END "
            "FROM generate_series(1, %(n)s) AS i", {"names": NAMES, "n": n, "error": ERROR})
        conn.execute("ANALYZE tasks")


def timed(fn, repeat):
    """(median ms, last result) of `repeat` calls after one unmeasured call."""
    result = fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out), result


def page(store, q, **filters):
    """The search of the panel's /tasks?q= page (liteq.web.search.search, as
    views.task_list calls it; the page's queue list is timed on its own)."""
    f = {"status": None, "queue": None, "name": None, "q": q, "before": None, "page": 1,
         "limit": 50, **filters}
    return lambda: search.search(store, f, 50)


def measure(target, n, repeat, label):
    store = backends.open_backend(target)
    old = n // 20 * 10 + 3          # a done task half way down the table
    failed = n // 10 * 2            # a failed task near the bottom
    cases = [("id", page(store, f"#{n // 3}")),
             ("number", page(store, f"{n // 3}")),
             ("common", page(store, "job_1")),
             ("argument", page(store, f"customer{old}@example.com")),
             ("error", page(store, f"order {failed} declined")),
             ("nothing", page(store, "no-such-text-at-all")),
             ("+ queue", page(store, "no-such-text-at-all", status="failed", queue="q1"))]
    print(f"{label}: {n:,} tasks; page of 50, slices of {search.SLICE:,} ids, "
          f"budget {search.BUDGET} s", flush=True)
    figures = {}
    ms, _ = timed(store.list_queues, repeat)
    print(f"  (the page's queue list, list_queues(), on every /tasks page: {ms:.1f} ms)")
    for name, fn in cases:
        ms, got = timed(fn, repeat)
        figures[name] = ms
        shown = len(got["rows"]) + (1 if got["pinned"] else 0)
        reach = ("every task read" if got["next_before"] is None
                 else f"read ids {got['next_before']:,}..{n:,}")
        print(f"  {name:<10} {ms:8.1f} ms  {shown:>3} shown, {reach}", flush=True)
    for name, text in (("nothing", "no-such-text-at-all"),
                       ("argument", f"customer{old}@example.com")):
        ms, got = timed(lambda: store.find_tasks(search=text, limit=51), repeat)
        print(f"  baseline {name:<10} one unbounded query: {ms:8.1f} ms ({len(got)} found); "
              f"the sliced search took {figures[name] / ms:.2f}x of it", flush=True)
    store.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--url", default=None)
    args = p.parse_args()
    kinds = args.backends.split(",")
    if "sqlite" in kinds:
        with tempfile.TemporaryDirectory(prefix="liteq-bench-search-") as work:
            path = os.path.join(work, "search.db")
            t0 = time.perf_counter()
            build_sqlite(path, args.n)
            print(f"sqlite: built in {time.perf_counter() - t0:.1f} s", flush=True)
            measure(path, args.n, args.repeat, "sqlite")
    if "postgresql" in kinds:
        from support import pg_helpers
        server = args.url or pg_helpers.server_url()
        schema, url = pg_helpers.create_schema(server)
        try:
            t0 = time.perf_counter()
            build_postgres(url, args.n)
            print(f"postgresql: built in {time.perf_counter() - t0:.1f} s", flush=True)
            measure(url, args.n, args.repeat, "postgresql")
        finally:
            backends.forget_backends()
            pg_helpers.drop_schema(server, schema)


if __name__ == "__main__":
    main()
