"""Counts by queue and status: exact by default; with estimate=True, groups over the
backend's limit are estimated on PostgreSQL (liteq/backends/postgres/counts.py),
the rest stay exact, and liteqctl status and the panel mark the estimates.

The limit is lowered on the backend (or its class, for the panel's own backend)
so that a few hundred rows cross it; the statistics are made current as
autovacuum would (ANALYZE), after the producer's session has ended (a session
reports its inserts to the statistics when it ends, at the latest).
"""

import json

import pytest
from starlette.testclient import TestClient

from liteq import backends, control, monitoring
from liteq.backends.postgres import PostgresBackend, counts
from liteq.taskspec import NewTask, TaskOptions
from liteq.web import create_app
from liteqd.ctl import ESTIMATE_NOTE, render_status

from support import pg_helpers
from support.processes import wait_for
from support.task_table import put_tasks

ON_PG = pytest.mark.parametrize("db", ["postgresql"], indirect=True)
LIMIT = 50
PAYLOAD = '{"args":[],"kwargs":{}}'


def _fill(db):
    """big: 280 pending, 120 done; small: 7 pending, 2 failed (407 rows); through a
    session of its own, ended before returning."""
    store = backends.open_backend(db)
    try:
        put_tasks(store, "t", json.dumps([[]] * 400), 400, queue="big")
        put_tasks(store, "t", json.dumps([[]] * 9), 9, queue="small", max_retries=0)
        done = store.claim("w", ["big"], 120)
        failed = store.claim("w", ["small"], 2)
        store.record_outcomes("w", done=[(r["id"], "null", 1.0, 2.0) for r in done],
                              failed=[(r["id"], "boom", 1.0, 2.0) for r in failed])
    finally:
        store.close()
    wait_for(lambda: pg_helpers.rows(db, counts.LIVE_ROWS)[0]["n"] == 409, 15,
             "the statistics never counted the 409 rows")
    pg_helpers.rows(db, "ANALYZE tasks")


def _by_group(rows):
    return {(r["queue"], r["status"]): r for r in rows}


def _waiting(backend, parent, count, queue):
    """`count` tasks of `queue` that wait for task `parent` (pending, not claimable)."""
    for _ in range(count):
        backend.enqueue(NewTask("t", PAYLOAD, TaskOptions.build(queue=queue),
                                depends_on=(parent,)))


def test_estimated_counts_of_small_groups_are_the_exact_ones(backend):
    put_tasks(backend, "t", json.dumps([[]] * 5), 5, queue="a")
    (b_first, *_) = put_tasks(backend, "t", json.dumps([[]] * 3), 3, queue="b")
    _waiting(backend, b_first, 2, "b")          # pending too, though not claimable yet
    claimed = backend.claim("w", ["a"], 2)
    backend.record_outcomes("w", done=[(claimed[0]["id"], "null", 1.0, 2.0)])
    exact = backend.queue_stats()
    estimated = backend.queue_stats(estimate=True)
    assert [r["estimated"] for r in estimated] == [False] * 4
    assert [{k: r[k] for k in ("queue", "status", "count")} for r in estimated] == exact
    assert [(r["queue"], r["status"], r["count"]) for r in exact] == [
        ("a", "done", 1), ("a", "pending", 3), ("a", "running", 1), ("b", "pending", 5)]


@ON_PG
def test_groups_over_the_limit_are_estimated_and_the_others_stay_exact(db):
    _fill(db)
    store = backends.get_backend(db)
    store.exact_count_limit = LIMIT
    rows = _by_group(store.queue_stats(estimate=True))
    # Under the limit: exact, even next to big groups.
    assert (rows["small", "pending"]["count"], rows["small", "pending"]["estimated"]) == (7, False)
    assert (rows["small", "failed"]["count"], rows["small", "failed"]["estimated"]) == (2, False)
    # Over it: estimated, near the truth, and never below what the scan saw.
    assert rows["big", "pending"]["estimated"] and rows["big", "done"]["estimated"]
    assert 0.85 * 280 <= rows["big", "pending"]["count"] <= 1.15 * 280, rows
    assert 0.85 * 120 <= rows["big", "done"]["count"] <= 1.15 * 120, rows
    assert min(rows["big", "pending"]["count"], rows["big", "done"]["count"]) > LIMIT
    # liteq 0.2's API and the default stay exact.
    exact = {(r["queue"], r["status"]): r["count"] for r in monitoring.get_queue_stats()}
    assert exact == {("big", "pending"): 280, ("big", "done"): 120,
                     ("small", "pending"): 7, ("small", "failed"): 2}
    assert "estimated" not in store.queue_stats()[0]


@ON_PG
def test_one_big_group_gets_the_rest_of_the_table(db):
    store = backends.open_backend(db)
    try:
        put_tasks(store, "t", json.dumps([[]] * 300), 300, queue="big")
        put_tasks(store, "t", json.dumps([[]] * 4), 4, queue="small")
    finally:
        store.close()
    wait_for(lambda: pg_helpers.rows(db, counts.LIVE_ROWS)[0]["n"] == 304, 15,
             "the statistics never counted the 304 rows")
    # No ANALYZE: with one group over the limit, the live-row count alone is enough.
    store = backends.get_backend(db)
    store.exact_count_limit = LIMIT
    rows = _by_group(store.queue_stats(estimate=True))
    assert (rows["big", "pending"]["count"], rows["big", "pending"]["estimated"]) == (300, True)
    assert (rows["small", "pending"]["count"], rows["small", "pending"]["estimated"]) == (4, False)


@ON_PG
def test_tasks_waiting_for_parents_count_as_pending_estimated_too(db):
    store = backends.open_backend(db)
    try:
        (parent,) = put_tasks(store, "t", "[[]]", 1, queue="p")
        _waiting(store, parent, 120, "w")
        put_tasks(store, "t", json.dumps([[]] * 3), 3, queue="w")
    finally:
        store.close()
    wait_for(lambda: pg_helpers.rows(db, counts.LIVE_ROWS)[0]["n"] == 124, 15,
             "the statistics never counted the 124 rows")
    store = backends.get_backend(db)
    store.exact_count_limit = LIMIT
    rows = _by_group(store.queue_stats(estimate=True))
    assert (rows["w", "pending"]["count"], rows["w", "pending"]["estimated"]) == (123, True)
    assert (rows["p", "pending"]["count"], rows["p", "pending"]["estimated"]) == (1, False)
    store.exact_count_limit = 200
    rows = _by_group(store.queue_stats(estimate=True))
    assert (rows["w", "pending"]["count"], rows["w", "pending"]["estimated"]) == (123, False)


@ON_PG
def test_liteqctl_and_queue_counts_mark_the_estimates(db):
    _fill(db)
    backends.get_backend(db).exact_count_limit = LIMIT
    queues = {q["queue"]: q for q in control.queue_counts(db, estimate=True)}
    assert queues["big"]["estimated"] == ["pending", "done"]
    assert queues["small"]["estimated"] == [] and queues["small"]["pending"] == 7
    assert "estimated" not in control.queue_counts(db)[0]
    shown = render_status({"pid": 1, "uptime_s": 1.0, "state": "running", "db": db,
                           "pools": [], "queues": list(queues.values())})
    big = next(line for line in shown.splitlines() if line.startswith("big"))
    small = next(line for line in shown.splitlines() if line.startswith("small"))
    assert big.split()[1].startswith("~") and big.split()[5].startswith("~"), shown
    assert small.split()[1:] == ["7", "0", "0", "2", "0"], shown
    assert ESTIMATE_NOTE in shown


def test_liteqctl_shows_no_note_when_every_count_is_exact():
    shown = render_status({"pid": 1, "uptime_s": 1.0, "state": "running", "db": "x",
                           "pools": [], "queues": [
                               {"queue": "q", "pending": 3, "running": 0, "done": 1,
                                "failed": 0, "cancelled": 0, "estimated": []}]})
    assert "~" not in shown and ESTIMATE_NOTE not in shown


@ON_PG
def test_the_panel_marks_estimated_counts(db, monkeypatch):
    _fill(db)
    monkeypatch.setattr(PostgresBackend, "exact_count_limit", LIMIT)
    with TestClient(create_app(), base_url="http://127.0.0.1") as c:
        page = c.get("/").text
        api = c.get("/api/overview").json()
        seed_list = c.get("/api/queues").json()
    assert 'id="estimate-note"' in page
    assert 'title="estimated">~' in page
    rows = {q["queue"]: q for q in api["counts"]["queues"]}
    assert rows["big"]["estimated"] == ["pending", "done"]
    assert rows["small"]["estimated"] == [] and rows["small"]["counts"]["pending"] == 7
    assert api["counts"]["estimated"] == ["pending", "done"]
    # liteq 0.2's JSON list (get_queue_stats) stays exact.
    assert {(r["queue"], r["status"]): r["count"] for r in seed_list} == {
        ("big", "pending"): 280, ("big", "done"): 120, ("small", "pending"): 7,
        ("small", "failed"): 2}


def test_the_panel_shows_no_estimate_note_for_exact_counts(db):
    put_tasks(backends.get_backend(db), "t", json.dumps([[]] * 3), 3, queue="q")
    with TestClient(create_app(), base_url="http://127.0.0.1") as c:
        page = c.get("/").text
        api = c.get("/api/overview").json()
    assert 'id="estimate-note"' not in page and "~" not in page
    assert api["counts"]["estimated"] == [] and api["counts"]["totals"]["pending"] == 3


# ---- the arithmetic of the estimates (counts.spread), without a database -------------

def test_one_group_over_the_limit_gets_the_table_minus_the_exact_groups():
    seen = {("a", "pending"): 51, ("b", "pending"): 7, ("a", "done"): 3}
    assert counts.spread(seen, {("a", "pending")}, 1000, {}) == {("a", "pending"): 990}


def test_several_groups_share_the_rest_by_the_planners_figures():
    seen = {("a", "pending"): 51, ("a", "done"): 51, ("b", "pending"): 10}
    over = {("a", "pending"), ("a", "done")}
    shares = counts.spread(seen, over, 1010, {("a", "pending"): 750, ("a", "done"): 250})
    assert shares == {("a", "pending"): 750, ("a", "done"): 250}


def test_an_estimate_is_never_below_what_was_seen():
    seen = {("a", "pending"): 51, ("a", "done"): 51}
    over = {("a", "pending"), ("a", "done")}
    # Statistics that lag (the table looks empty): the rows seen are the floor.
    assert counts.spread(seen, over, 0, {}) == {("a", "pending"): 51, ("a", "done"): 51}
    assert counts.spread(seen, {("a", "pending")}, 10, {}) == {("a", "pending"): 51}


def test_a_status_over_the_limit_makes_every_queue_of_it_a_lower_bound():
    rows = [{"queue": "a", "status": "done", "count": 45},
            {"queue": "b", "status": "done", "count": 6},
            {"queue": "b", "status": "failed", "count": 3},
            {"queue": "a", "status": "pending", "count": 51},
            {"queue": "b", "status": "pending", "count": 50}]
    assert counts.over_limit(rows, 50) == {("a", "done"), ("b", "done"), ("a", "pending")}


@ON_PG
def test_estimated_counts_inside_a_batch_leave_its_planner_settings_alone(backend):
    put_tasks(backend, "t", json.dumps([[]] * 3), 3, queue="q")
    setting = "SELECT current_setting('enable_seqscan') AS v"
    with backend.batch():
        assert backend.queue_stats(estimate=True)[0]["count"] == 3
        assert backend._session.run(setting).fetchone()["v"] == "on"
    assert backend._session.run(setting).fetchone()["v"] == "on"
