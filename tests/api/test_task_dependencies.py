"""Task dependencies: apply_async(depends_on=...), liteq.chain(),
current_task.parent_results(), and what a parent's end does to its dependents.
On each backend; real daemons where tasks must run.

The tasks of tests/apps/deps_app.py append "id start end" to a trace file; the
order checks read it.
"""

import asyncio
import os

import pytest

import liteq
from liteq import cancel_task, chain

from support import APPS
from support.daemon_helpers import load_app_module
from support.processes import read_lines
from support.task_table import (all_tasks, count_tasks, task_row, task_rows, wait_status,
                                wait_statuses)
from support.pg_helpers import rows as pg_rows

APP = os.path.join(APPS, "deps_app.py")


@pytest.fixture
def deps_app(daemons, monkeypatch):
    """(the app module, the trace path, a function that starts a daemon on queue deps)."""
    trace = daemons.path("trace.txt")
    monkeypatch.setenv("LITEQ_TEST_TRACE", trace)
    app = load_app_module(APP)

    def start(concurrency=4):
        return daemons.start("--concurrency", str(concurrency), "--queues", "deps", app=APP,
                             env={"LITEQ_TEST_TRACE": trace})
    return app, trace, start


def _runs(trace) -> dict:
    """{task id: [(start, end), ...]} from the trace file."""
    runs = {}
    for line in read_lines(trace):
        tid, start, end = line.split()
        runs.setdefault(int(tid), []).append((float(start), float(end)))
    return runs


def test_a_child_waits_until_every_parent_is_done(deps_app, daemons, db):
    app, trace, start = deps_app
    quick = app.step.delay("quick")
    later = app.step.apply_async(("later",), countdown=2.0)
    child = app.step.apply_async(("child",), depends_on=[quick, later])
    start()
    wait_status(quick, daemons=daemons)
    # One parent done, the other not due yet: the child is still pending.
    assert task_row(db, later)["status"] == "pending"
    assert task_row(db, child)["status"] == "pending"
    assert wait_status(child, daemons=daemons)["status"] == "done"
    runs = _runs(trace)
    assert runs[child][0][0] >= max(runs[quick][0][1], runs[later][0][1])


def test_a_failed_parent_cancels_its_dependents_transitively(deps_app, daemons, db):
    app, trace, start = deps_app
    bad = app.explode.delay()
    child = app.step.apply_async(depends_on=[bad])
    grandchild = app.step.apply_async(depends_on=[child])
    bystander = app.step.delay("unrelated")
    start()
    rows = wait_statuses(db, [bad, child, grandchild, bystander], dump=daemons.dump)
    assert rows[bad]["status"] == "failed"
    assert rows[bystander]["status"] == "done"
    for tid in (child, grandchild):
        assert rows[tid]["status"] == "cancelled"
        assert rows[tid]["error"] == f"cancelled: it depends on task {bad}, which failed"
    assert set(_runs(trace)) == {bad, bystander}  # the dependents never ran
    # Depending on a task that already failed: cancelled at once, nothing to wait for.
    late = app.step.apply_async(depends_on=[bystander, bad])
    row = task_row(db, late)
    assert row["status"] == "cancelled" and f"task {bad}, which failed" in row["error"]


def test_a_cancelled_parent_cancels_its_dependents_transitively(db, backend, clean_registry):
    @liteq.task
    def work(n):
        return n

    parent = work.apply_async((1,), countdown=3600)
    other = work.delay(2)
    children = [work.apply_async((3,), depends_on=[parent, other]),
                work.apply_async((4,), depends_on=[other, parent])]
    grandchild = work.apply_async((5,), depends_on=children)
    assert cancel_task(parent) is True
    rows = task_rows(db, children + [grandchild, other])
    for tid in children + [grandchild]:
        assert rows[tid]["status"] == "cancelled"
        assert rows[tid]["error"] == f"cancelled: it depends on task {parent}, which was cancelled"
    assert rows[other]["status"] == "pending" and rows[other]["error"] is None


def test_a_parent_that_does_not_exist_is_refused_and_nothing_is_written(db, backend,
                                                                       clean_registry):
    @liteq.task
    def work(n):
        return n

    parent = work.delay(1)
    before = all_tasks(db)
    with pytest.raises(ValueError, match=r"depends_on: no task with id 999999\b.*nothing"):
        work.apply_async((2,), depends_on=[parent, 999999])
    with pytest.raises(TypeError, match="depends_on holds task ids"):
        work.apply_async((2,), depends_on=["1"])
    with pytest.raises(TypeError, match="depends_on must be a list"):
        work.apply_async((2,), depends_on=parent)
    assert all_tasks(db) == before
    # No edge was left behind either: a new child of the parent has exactly one.
    child = work.apply_async((3,), depends_on=[parent])
    assert backend.parent_results(child) == [None]


def test_chain_runs_the_steps_in_order_and_passes_results(deps_app, daemons, db):
    app, trace, start = deps_app
    ids = chain(app.step.s("one"), app.step.s("two"), app.gather.s())
    assert ids == sorted(ids) and len(set(ids)) == 3
    start()
    rows = wait_statuses(db, ids, dump=daemons.dump)
    assert [rows[i]["status"] for i in ids] == ["done"] * 3
    runs = _runs(trace)
    assert runs[ids[0]][0][1] <= runs[ids[1]][0][0]
    assert runs[ids[1]][0][1] <= runs[ids[2]][0][0]
    # The last step read the result of the one before it.
    assert wait_status(ids[2])["result"] == ["two"]


def test_chain_is_one_transaction(db, backend, clean_registry):
    @liteq.task
    def work(n):
        return n

    before = count_tasks(db)
    # The third step is refused (its extra parent does not exist): none is written.
    with pytest.raises(ValueError, match="no task with id 999999"):
        chain(work.s(1), work.s(2), work.s(3).set(depends_on=[999999]))
    assert count_tasks(db) == before
    with pytest.raises(TypeError, match="chain\\(\\) takes signatures"):
        chain(work.s(1), 2)


def test_parent_results_come_in_depends_on_order(deps_app, daemons, db):
    app, trace, start = deps_app
    first = app.step.delay({"n": 1})
    second = app.step.delay([1, 2])
    child = app.gather.apply_async(depends_on=[second, first])
    start()
    st = wait_status(child, daemons=daemons)
    assert st["status"] == "done", st
    assert st["result"] == [[1, 2], {"n": 1}]


def test_current_task_parent_results_outside_a_task_is_a_clear_error():
    with pytest.raises(liteq.LiteQError, match="no task is running here"):
        liteq.current_task.parent_results()


def test_a_diamond_of_1000_tasks_runs_each_after_its_parents_exactly_once(deps_app, daemons,
                                                                           db):
    """Layers 1 -> 499 -> 499 -> 1: the middle layers cross (each task of the third
    depends on two of the second), the last one on all of the third."""
    app, trace, start = deps_app
    parents = {}
    root = app.step.delay()
    parents[root] = []
    second = []
    for _ in range(499):
        tid = app.step.apply_async(depends_on=[root])
        parents[tid] = [root]
        second.append(tid)
    third = []
    for i in range(499):
        pair = [second[i], second[(i + 1) % 499]]
        tid = app.step.apply_async(depends_on=pair)
        parents[tid] = pair
        third.append(tid)
    sink = app.step.apply_async(depends_on=third)
    parents[sink] = third
    assert len(parents) == 1000
    start(concurrency=8)
    wait_statuses(db, [sink], timeout=60, dump=daemons.dump)
    rows = task_rows(db, parents)
    assert {r["status"] for r in rows.values()} == {"done"}
    runs = _runs(trace)
    assert set(runs) == set(parents)
    twice = {tid: r for tid, r in runs.items() if len(r) != 1}
    assert not twice, twice
    for tid, of in parents.items():
        started = runs[tid][0][0]
        late = [p for p in of if runs[p][0][1] > started]
        assert not late, (tid, late)


def _depend_on_the_old_task(db, old, work):
    """A task of the version-2 database is claimable as it was, and a parent."""
    from support.task_table import fresh_backend
    child = work.apply_async((2,), depends_on=[old])
    with fresh_backend(db) as backend:
        claimed = [r["id"] for r in backend.claim("w-test", ["default"], 10)]
        assert claimed == [old]   # the child waits for it
        backend.heartbeat("w-test", "h", "default", 1, os.getpid(), 0.0)
        backend.record_outcomes("w-test", done=[(old, "1", 0.0, 0.0)])
        assert [r["id"] for r in backend.claim("w-test", ["default"], 10)] == [child]
    assert task_row(db, child)["status"] == "running"


def test_a_version_2_sqlite_file_gains_dependencies(db_path, clean_registry):
    import sqlite3
    from liteq.backends.sqlite import schema
    raw = sqlite3.connect(db_path)
    schema._migrate_v0_to_v1(raw)          # the tables as version 2 made them
    schema._migrate_v1_to_v2(raw)
    raw.execute("CREATE INDEX idx_tasks_claim ON tasks(status, queue, priority DESC, run_at, id)")
    raw.execute("PRAGMA user_version = 2")
    raw.execute("INSERT INTO tasks (name, payload, run_at, created_at) "
                "VALUES ('work', '{\"args\":[1],\"kwargs\":{}}', 0, 0)")
    raw.commit()
    raw.close()

    @liteq.task
    def work(n):
        return n
    _depend_on_the_old_task(db_path, 1, work)
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        claim_cols = [r[2] for r in raw.execute("PRAGMA index_info(idx_tasks_claim)")]
        assert claim_cols[:3] == ["status", "waiting_on", "queue"]
    finally:
        raw.close()


def test_a_version_2_postgres_schema_gains_dependencies(clean_registry, workdir, monkeypatch):
    from support import pg_helpers
    from liteq import backends
    from liteq.backends.postgres import schema
    server = pg_helpers.server_url()
    name, url = pg_helpers.create_schema(server)
    try:
        for ddl in ("CREATE TABLE liteq_migrations (version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())",
                    *schema._MIGRATIONS[1], *schema._MIGRATIONS[2],
                    "INSERT INTO liteq_migrations (version) VALUES (1), (2)",
                    "INSERT INTO tasks (name, payload) VALUES "
                    "('work', '{\"args\":[1],\"kwargs\":{}}')"):
            pg_helpers.rows(url, ddl)
        monkeypatch.setenv("LITEQ_DB", url)
        backends.forget_backends()

        @liteq.task
        def work(n):
            return n
        old = pg_helpers.rows(url, "SELECT id FROM tasks")[0]["id"]
        _depend_on_the_old_task(url, old, work)
        from liteq.backends.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
        versions = pg_helpers.rows(url, "SELECT version FROM liteq_migrations ORDER BY 1")
        assert [v["version"] for v in versions] == list(range(1, PG_SCHEMA_VERSION + 1))
        index = pg_helpers.rows(url, "SELECT pg_get_indexdef('tasks_claim'::regclass) AS d")
        assert "WHERE ((status = 'pending'::text) AND (waiting_on = 0))" in index[0]["d"]
    finally:
        backends.forget_backends()
        pg_helpers.drop_schema(server, name)


def test_prune_keeps_a_done_task_that_a_pending_task_depends_on(db, backend, clean_registry):
    @liteq.task
    def work(n):
        return n

    done, waiting = work.delay(1), work.apply_async((2,), countdown=3600)
    child = work.apply_async((3,), depends_on=[done, waiting])
    backend.heartbeat("w-test", "h", "default", 1, os.getpid(), 0.0)
    assert [r["id"] for r in backend.claim("w-test", ["default"], 10)] == [done]
    assert backend.record_outcomes("w-test", done=[(done, "1", 0.0, 0.0)]) == [done]
    assert backend.prune("done", -60, 1000) == 0      # the child still needs it
    assert task_row(db, done)["status"] == "done"
    assert cancel_task(child) is True
    assert backend.prune("done", -60, 1000) == 1      # nothing pending needs it now
    assert task_row(db, done) is None
    assert backend.parent_results(child) == [None]    # the waiting parent's edge is left
    assert backend.prune("cancelled", -60, 1000) == 1
    assert backend.parent_results(child) == []        # the child's edges went with it


def test_aapply_async_with_depends_on_waits_too(db, backend, clean_registry):
    @liteq.task
    def work(n):
        return n

    parent = work.apply_async((1,), countdown=3600)
    child = asyncio.run(work.aapply_async((2,), depends_on=[parent]))
    assert backend.claim("w-test", ["default"], 10) == []
    assert backend.parent_results(child) == [None]
    with pytest.raises(ValueError, match="no task with id 999999"):
        asyncio.run(work.aapply_async((2,), depends_on=[999999]))


def test_chain_refuses_unique_steps(db, backend, clean_registry):
    @liteq.task(unique=True)
    def once(n):
        return n

    with pytest.raises(ValueError, match="chain\\(\\) steps cannot be unique tasks"):
        chain(once.s(1), once.s(2))
    with pytest.raises(ValueError, match="depends_on and unique tasks cannot be combined"):
        once.apply_async((1,), depends_on=[1])
    assert count_tasks(db) == 0


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_a_postgres_enqueue_never_holds_one_parent_while_waiting_for_another(db, backend,
                                                                             clean_registry):
    """An outcome batch updates its rows in no set order. If the enqueue waited for
    parent B while holding parent A's lock, a batch holding B and then asking for A
    would deadlock with it: the enqueue asks without waiting, and holds nothing while
    B is taken."""
    import threading

    import psycopg

    @liteq.task
    def work(n):
        return n

    a, b = work.delay(1), work.delay(2)
    result = {}
    with psycopg.connect(db) as other:          # plays a daemon's outcome batch
        other.execute("SET lock_timeout = '5s'")
        other.execute("SELECT id FROM tasks WHERE id = %s FOR NO KEY UPDATE", (b,))

        def enqueue():
            try:
                result["id"] = work.apply_async((3,), depends_on=[a, b])
            except Exception as exc:  # reported by the asserts below
                result["error"] = exc
        producer = threading.Thread(target=enqueue)
        producer.start()
        try:
            other.execute("SELECT pg_sleep(0.2)")
            # The producer is trying meanwhile; it must not hold A.
            other.execute("UPDATE tasks SET status = 'done' WHERE id IN (%s, %s)", (a, b))
            other.commit()
        finally:
            producer.join(30)
    assert not producer.is_alive() and "error" not in result, result
    row = task_row(db, result["id"])
    assert row["status"] == "pending"
    waiting = pg_rows(db, "SELECT waiting_on FROM tasks WHERE id = %s", (result["id"],))
    assert waiting == [{"waiting_on": 0}]   # both parents were done when it counted


def test_a_parent_reclaimed_out_of_retries_cancels_its_dependents(db, backend,
                                                                  clean_registry):
    @liteq.task(max_retries=0)
    def work(n):
        return n

    parent = work.delay(1)
    child = work.apply_async((2,), depends_on=[parent])
    grandchild = work.apply_async((3,), depends_on=[child])
    assert [r["id"] for r in backend.claim("w-dead", ["default"], 10)] == [parent]
    assert backend.reclaim(dead_worker_ids=["w-dead"]) == [(parent, "failed")]
    rows = task_rows(db, [child, grandchild])
    for tid in (child, grandchild):
        assert rows[tid]["status"] == "cancelled"
        assert rows[tid]["error"] == f"cancelled: it depends on task {parent}, which failed"
