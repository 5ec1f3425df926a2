"""Unique tasks: apply_async(unique_key=...) and @task(unique=True).

While a task with a key is pending or running, enqueueing the key again writes
nothing and returns that task's id; once it is done, failed or cancelled the key
is free. The database enforces it, so it holds across processes: on each backend.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from liteq import cancel_task, retry_task, task

from support.daemon_helpers import PYTHON
from support.processes import kill_tree
from support.task_table import all_tasks, count_tasks, task_row


def _finish(backend, task_id, outcome):
    """Claim pending tasks until `task_id` is running, then record `outcome` for it."""
    claimed = [r["id"] for r in backend.claim("w-test", ["default"], 100)]
    assert task_id in claimed, (task_id, claimed)
    t = time.time()
    others = [tid for tid in claimed if tid != task_id]
    if others:  # give back the rest untouched
        backend.release("w-test", others)
    recorded = backend.record_outcomes("w-test", **{outcome: [(task_id, "null", t, t)]})
    assert recorded == [task_id]


@pytest.fixture
def invoice(clean_registry):
    @task
    def send_invoice(n):
        return n
    return send_invoice


@pytest.fixture
def report(clean_registry):
    @task(unique=True)
    def build_report(day, fmt="pdf"):
        return day
    return build_report


def test_same_key_twice_is_one_task(db, backend, invoice):
    first = invoice.apply_async((1,), unique_key="invoice-42")
    again = invoice.apply_async((2,), unique_key="invoice-42")
    other = invoice.apply_async((1,), unique_key="invoice-43")
    assert again == first and other != first
    rows = all_tasks(db)
    assert [(r["id"], r["unique_key"]) for r in rows] == [(first, "invoice-42"),
                                                          (other, "invoice-43")]
    # The second call wrote nothing: its arguments are not stored anywhere.
    assert json.loads(rows[0]["payload"])["args"] == [1]


def test_a_running_task_still_holds_its_key(db, backend, invoice):
    first = invoice.apply_async((1,), unique_key="k")
    assert [r["id"] for r in backend.claim("w-test", ["default"], 10)] == [first]
    assert invoice.apply_async((1,), unique_key="k") == first
    assert count_tasks(db) == 1


@pytest.mark.parametrize("outcome", ["done", "failed", "cancelled"])
def test_a_finished_task_frees_its_key(db, backend, invoice, outcome):
    first = invoice.apply_async((1,), unique_key="invoice-42")
    if outcome == "cancelled":
        assert cancel_task(first)
    else:
        _finish(backend, first, outcome)
    assert task_row(db, first)["status"] == outcome
    second = invoice.apply_async((1,), unique_key="invoice-42")
    assert second != first
    assert task_row(db, second)["status"] == "pending"
    # ... and the new one holds the key again.
    assert invoice.apply_async((1,), unique_key="invoice-42") == second
    assert count_tasks(db) == 2


def test_unique_task_derives_its_key_from_name_and_arguments(db, backend, report):
    a = report.delay("2024-05-01")
    assert report.delay("2024-05-01") == a
    assert report.apply_async(("2024-05-01",)) == a
    assert report.delay("2024-05-01", fmt="pdf") != a      # other arguments: another key
    b = report.delay("2024-05-02")
    assert b != a
    c = report.delay("2024-05-03", fmt="csv")
    # Keyword order does not change the key.
    d = report.apply_async(kwargs={"fmt": "html", "day": "x"})
    assert report.apply_async(kwargs={"day": "x", "fmt": "html"}) == d
    assert len({a, b, c, d}) == 4
    assert report.schedule(3600, "2024-05-02") == b          # a scheduled call too
    key = task_row(db, a)["unique_key"]
    assert key.startswith("build_report:") and len(key) == len("build_report:") + 64
    # An explicit key wins over the derived one.
    e = report.apply_async(("2024-05-01",), unique_key="mine")
    assert e != a and task_row(db, e)["unique_key"] == "mine"
    _finish(backend, a, "done")
    assert report.delay("2024-05-01") not in (a, b, c, d, e)


def test_plain_tasks_have_no_key(db, invoice):
    a, b = invoice.delay(1), invoice.delay(1)
    assert a != b
    assert task_row(db, a)["unique_key"] is None


@pytest.mark.parametrize("key, error, message", [
    ("", ValueError, "non-empty string"),
    ("   ", ValueError, "non-empty string"),
    (42, TypeError, "must be a string, not int"),
    (b"invoice", TypeError, "must be a string, not bytes"),
    (["a"], TypeError, "must be a string, not list"),
    ("x" * 513, ValueError, "over the limit of 512"),
])
def test_bad_keys_are_refused_at_the_call(db, invoice, key, error, message):
    with pytest.raises(error, match=message):
        invoice.apply_async((1,), unique_key=key)
    assert count_tasks(db) == 0


def test_bad_unique_flag_and_map_of_a_unique_task(db, clean_registry, report):
    with pytest.raises(TypeError, match="unique must be True or False"):
        @task(unique="yes")
        def f():
            pass
    with pytest.raises(TypeError, match="unique; map\\(\\) and starmap\\(\\)"):
        report.map(["2024-05-01"])
    assert count_tasks(db) == 0


def test_retrying_a_failed_unique_task_never_duplicates_its_key(db, backend, invoice):
    first = invoice.apply_async((1,), unique_key="k")
    _finish(backend, first, "failed")
    second = invoice.apply_async((2,), unique_key="k")   # the key was free again
    # `second` holds the key: retrying `first` would make two; it stays failed.
    assert retry_task(first) is False
    assert task_row(db, first)["status"] == "failed"
    _finish(backend, second, "failed")
    # Both failed: a bulk retry puts back the newest only.
    assert backend.retry_failed() == 1
    assert (task_row(db, first)["status"], task_row(db, second)["status"]) == ("failed",
                                                                               "pending")
    assert invoice.apply_async((3,), unique_key="k") == second


_PRODUCER = textwrap.dedent("""
    import json, os, sys, time
    from liteq import task
    from liteq.backends import get_backend

    @task
    def job(n):
        return n

    keys = [f"key-{i}" for i in range(int(sys.argv[1]))]
    if int(sys.argv[2]) % 2:
        keys.reverse()   # half the producers meet the others head on
    get_backend()        # connected (and migrated) before the start line
    open(sys.argv[3] + ".ready", "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(sys.argv[4]):
        if time.monotonic() > deadline:
            sys.exit("no start signal")
        time.sleep(0.005)
    ids = {key: job.apply_async((key,), unique_key=key) for key in keys}
    with open(sys.argv[3], "w") as out:
        json.dump(ids, out)
""")


def test_eight_processes_enqueueing_the_same_keys_make_one_task_each(db, workdir):
    keys, producers = 1000, 8
    script = os.path.join(workdir, "producer.py")
    with open(script, "w") as f:
        f.write(_PRODUCER)
    go = os.path.join(workdir, "go")
    outs = [os.path.join(workdir, f"ids-{i}.json") for i in range(producers)]
    procs = []
    try:
        for i, out in enumerate(outs):
            procs.append(subprocess.Popen([PYTHON, script, str(keys), str(i), out, go],
                                          env=os.environ.copy(), stderr=subprocess.PIPE,
                                          start_new_session=True))
        deadline = time.monotonic() + 30
        while not all(os.path.exists(o + ".ready") for o in outs):
            assert time.monotonic() < deadline, "producers did not start"
            assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
            time.sleep(0.01)
        open(go, "w").close()
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
    finally:
        for p in procs:
            if p.poll() is None:
                kill_tree(p)
    rows = all_tasks(db)
    assert len(rows) == keys
    assert sorted(r["unique_key"] for r in rows) == sorted(f"key-{i}" for i in range(keys))
    by_key = {r["unique_key"]: r["id"] for r in rows}
    for out in outs:
        with open(out) as f:
            assert json.load(f) == by_key   # every producer got the one task's id


def test_a_version_1_sqlite_file_gains_unique_keys(db_path, clean_registry):
    import sqlite3
    from liteq.backends.sqlite import schema
    raw = sqlite3.connect(db_path)
    schema._migrate_v0_to_v1(raw)          # the tables as version 1 made them
    raw.execute("PRAGMA user_version = 1")
    raw.execute("INSERT INTO tasks (name, payload, run_at, created_at) "
                "VALUES ('job', '{\"args\":[],\"kwargs\":{}}', 0, 0)")
    raw.commit()
    raw.close()

    @task
    def job():
        pass
    assert job.apply_async(unique_key="k") == job.apply_async(unique_key="k") == 2
    assert [r["unique_key"] for r in all_tasks(db_path)] == [None, "k"]
    raw = sqlite3.connect(db_path)
    try:
        # Migrated on through the later versions too (3: dependencies).
        assert raw.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    finally:
        raw.close()


def test_a_version_1_postgres_schema_gains_unique_keys(clean_registry, workdir, monkeypatch):
    from support import pg_helpers
    from liteq import backends
    from liteq.backends.postgres import schema
    server = pg_helpers.server_url()
    name, url = pg_helpers.create_schema(server)
    try:
        for ddl in ("CREATE TABLE liteq_migrations (version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())",
                    *schema._MIGRATIONS[1],
                    "INSERT INTO liteq_migrations (version) VALUES (1)",
                    "INSERT INTO tasks (name, payload) VALUES ('job', '{}')"):
            pg_helpers.rows(url, ddl)
        monkeypatch.setenv("LITEQ_DB", url)
        backends.forget_backends()

        @task
        def job():
            pass
        first = job.apply_async(unique_key="k")
        assert job.apply_async(unique_key="k") == first
        assert [r["unique_key"] for r in all_tasks(url)] == [None, "k"]
        from liteq.backends.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
        versions = pg_helpers.rows(url, "SELECT version FROM liteq_migrations ORDER BY 1")
        # 3: dependencies, 4: counts of big queues (and any later one)
        assert [v["version"] for v in versions] == list(range(1, PG_SCHEMA_VERSION + 1))
    finally:
        backends.forget_backends()
        pg_helpers.drop_schema(server, name)
