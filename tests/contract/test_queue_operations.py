"""The backend's queue operations: claim, outcomes, reclaim, operator actions, stats, and
the claim race. Every test runs on each backend (conftest's `db`)."""

import json
import multiprocessing
import os
import random
import time
from datetime import datetime, timedelta, timezone

import pytest

import liteq
from liteq import monitoring, backends
from liteq.core import task
from support.task_table import age_heartbeat, put_task

FORK = multiprocessing.get_context("fork")

PAYLOAD = '{"args":[],"kwargs":{}}'


def _ids(rows):
    return [r["id"] for r in rows]


def _finish(store, worker, ids, kind, when=None):
    """Claimed ids -> done / failed, with finished_at `when` (default now)."""
    t = time.time() if when is None else when
    entries = [(i, "null" if kind == "done" else f"error of {i}", t, t) for i in ids]
    assert len(store.record_outcomes(worker, **{kind: entries})) == len(ids)


# ---- claim -------------------------------------------------------------------------


def test_claim_order_is_priority_then_due_time_then_id(store):
    t = time.time()
    a = put_task(store, "a", PAYLOAD, priority=0, run_at=t - 10)
    b = put_task(store, "b", PAYLOAD, priority=5, run_at=t - 1)
    c = put_task(store, "c", PAYLOAD, priority=5, run_at=t - 5)
    d = put_task(store, "d", PAYLOAD, priority=0, run_at=t - 10)  # ties with a: id decides
    e = put_task(store, "e", PAYLOAD, priority=-3, run_at=t - 100)
    f = put_task(store, "f", PAYLOAD, priority=0, run_at=t - 20)
    expected = [c, b, f, a, d, e]
    one_by_one = []
    for _ in expected:
        rows = store.claim("w", ["default"], 1)
        assert len(rows) == 1
        one_by_one.append(rows[0]["id"])
    assert one_by_one == expected
    assert store.claim("w", ["default"], 1) == []


def test_claim_batch_takes_the_best_and_returns_them_in_claim_order(store):
    t = time.time()
    a = put_task(store, "a", PAYLOAD, priority=0, run_at=t - 10)
    b = put_task(store, "b", PAYLOAD, priority=5, run_at=t - 1)
    c = put_task(store, "c", PAYLOAD, priority=5, run_at=t - 5)
    put_task(store, "d", PAYLOAD, priority=0, run_at=t - 1)
    f = put_task(store, "f", PAYLOAD, priority=0, run_at=t - 20)
    rows = store.claim("w", ["default"], 4)
    assert _ids(rows) == [c, b, f, a]
    r = rows[0]
    assert r["name"] == "c" and r["payload"] == PAYLOAD and r["queue"] == "default"
    assert r["attempts"] == 1 and r["max_retries"] == 3


def test_claim_marks_rows_running_for_the_worker(store):
    tid = put_task(store, "x", PAYLOAD)
    before = time.time()
    [row] = store.claim("worker-1", ["default"], 5)
    got = store.get_task(tid)
    assert row["id"] == tid
    assert got["status"] == "running" and got["worker_id"] == "worker-1"
    # Claimed, not started: a child's start is marked separately (mark_started).
    assert got["attempts"] == 1 and got["started_at"] is None
    assert store.claimed_counts() == {"default": 1}
    assert store.claim("worker-2", ["default"], 5) == []  # never claimed twice
    assert store.mark_started("worker-2", [(tid, before)]) == 0   # not its task
    assert store.mark_started("worker-1", [(tid, before)]) == 1
    assert store.mark_started("worker-1", [(tid, before + 5)]) == 0  # marked once
    assert abs(store.get_task(tid)["started_at"] - before) < 0.01
    assert store.claimed_counts() == {}


def test_claim_ignores_future_other_queue_and_non_pending_tasks(store):
    t = time.time()
    due = put_task(store, "due", PAYLOAD, queue="q1", run_at=t - 1)
    put_task(store, "future", PAYLOAD, queue="q1", run_at=t + 60)
    other = put_task(store, "other", PAYLOAD, queue="q2", run_at=t - 1)
    cancelled = put_task(store, "cancelled", PAYLOAD, queue="q1", run_at=t - 1)
    assert store.cancel(cancelled)
    assert store.claim("w", [], 10) == []
    assert store.claim("w", ["q1"], 0) == []
    assert _ids(store.claim("w", ["q1"], 10)) == [due]
    assert store.claim("w", ["q1"], 10) == []  # running, future and cancelled stay put
    assert store.claim("w", ["nope"], 10) == []
    assert _ids(store.claim("w", ["q1", "q2"], 10)) == [other]
    # The future task is still pending, due in about a minute.
    assert store.next_due(["q1"]) == pytest.approx(60, abs=1)


def test_claim_several_queues_keeps_global_order(store):
    t = time.time()
    x = put_task(store, "x", PAYLOAD, queue="low", priority=1, run_at=t - 1)
    y = put_task(store, "y", PAYLOAD, queue="high", priority=9, run_at=t - 1)
    z = put_task(store, "z", PAYLOAD, queue="low", priority=1, run_at=t - 2)
    assert _ids(store.claim("w", ["low", "high"], 10)) == [y, z, x]


def test_next_due(store):
    assert store.next_due(["default"]) is None
    t = time.time()
    put_task(store, "a", PAYLOAD, run_at=t + 30)
    put_task(store, "b", PAYLOAD, run_at=t + 10)
    put_task(store, "c", PAYLOAD, queue="other", run_at=t + 1)
    assert store.next_due(["default"]) == pytest.approx(10, abs=0.5)  # seconds from now
    assert store.next_due(["default", "other"]) == pytest.approx(1, abs=0.5)


def test_task_scheduled_one_second_ahead_comes_due_one_second_later(db, clean_registry):
    """Regression: liteq 0.2 compared isoformat text with CURRENT_TIMESTAMP text, so
    delayed and retried tasks never came due. Every form of 'one second from now'."""
    @task
    def later(tag):
        return tag

    store = backends.get_backend()
    # A retried task: claimed, then sent back with a one-second retry delay.
    retried = later.delay("retry")
    assert _ids(store.claim("w0", ["default"], 1)) == [retried]
    t0 = time.time()
    assert len(store.record_outcomes("w0", retry=[(retried, "boom", t0, 1.0)])) == 1
    ids = {
        retried,
        later.schedule(1.0, "seconds"),
        later.schedule(timedelta(seconds=1), "timedelta"),
        later.schedule(datetime.now() + timedelta(seconds=1), "naive local"),
        later.schedule(datetime.now(timezone.utc) + timedelta(seconds=1), "aware"),
        later.apply_async(args=["countdown"], countdown=1),
        later.apply_async(args=["eta"], eta=datetime.now() + timedelta(seconds=1)),
    }
    assert len(ids) == 7
    assert store.claim("w", ["default"], 100) == []
    time.sleep(max(0.0, t0 + 0.5 - time.time()))
    checked_at = time.time()
    early = store.claim("w", ["default"], 100)
    assert early == [], f"claimable {checked_at - t0:.2f} s after scheduling: {_ids(early)}"
    claimed, first_claim = set(), None
    deadline = t0 + 2.0
    while time.time() < deadline and claimed != ids:
        got = _ids(store.claim("w", ["default"], 100))
        if got and first_claim is None:
            first_claim = time.time()
        claimed.update(got)
        time.sleep(0.02)
    assert claimed == ids, f"not claimable 2 s after scheduling: {sorted(ids - claimed)}"
    assert first_claim >= t0 + 0.95


# ---- outcomes ------------------------------------------------------------------------


def test_record_outcomes_done_failed_retry(store):
    a = put_task(store, "a", PAYLOAD)
    b = put_task(store, "b", PAYLOAD)
    c = put_task(store, "c", PAYLOAD)
    store.claim("w", ["default"], 3)
    t = time.time()
    n = len(store.record_outcomes("w", done=[(a, json.dumps({"r": 1}), t - 2, t)],
                              failed=[(b, "ValueError: bad\nTraceback...", t - 1, t)],
                              retry=[(c, "flaky", t - 1, 30)]))
    assert n == 3
    ra, rb, rc = store.get_task(a), store.get_task(b), store.get_task(c)
    assert (ra["status"], json.loads(ra["result"]), ra["error"]) == ("done", {"r": 1}, None)
    assert ra["started_at"] == pytest.approx(t - 2) and ra["finished_at"] == pytest.approx(t)
    assert (rb["status"], rb["error"]) == ("failed", "ValueError: bad\nTraceback...")
    assert rb["finished_at"] == pytest.approx(t)
    assert (rc["status"], rc["error"], rc["worker_id"], rc["attempts"]) == (
        "pending", "flaky", None, 1)
    assert rc["run_at"] == pytest.approx(t + 30, abs=1)
    assert store.claim("w", ["default"], 3) == []  # the retry is not due yet
    assert store.next_due(["default"]) == pytest.approx(30, abs=1)


@pytest.mark.parametrize("kind", ["done", "failed", "retry"])
def test_late_writes_change_nothing(store, kind):
    tid = put_task(store, "x", PAYLOAD)
    store.claim("w1", ["default"], 1)
    t = time.time()
    entry = [(tid, "null" if kind == "done" else "late error", t, t + 5)]

    before = store.get_task(tid)
    assert len(store.record_outcomes("w2", **{kind: entry})) == 0  # not the owner
    assert store.get_task(tid) == before

    assert store.reclaim(dead_worker_ids=["w1"]) == [(tid, "pending")]
    before = store.get_task(tid)
    assert len(store.record_outcomes("w1", **{kind: entry})) == 0  # reclaimed meanwhile
    assert store.get_task(tid) == before

    assert _ids(store.claim("w2", ["default"], 1)) == [tid]
    before = store.get_task(tid)
    assert len(store.record_outcomes("w1", **{kind: entry})) == 0  # now someone else's
    assert store.get_task(tid) == before
    assert len(store.record_outcomes("w2", **{kind: entry})) == 1  # the owner's write lands
    after = store.get_task(tid)
    assert after["status"] == {"done": "done", "failed": "failed", "retry": "pending"}[kind]
    assert len(store.record_outcomes("w2", **{kind: entry})) == 0  # and lands once
    assert store.get_task(tid) == after


def test_late_write_after_cancel_changes_nothing(store):
    tid = put_task(store, "x", PAYLOAD)
    assert store.cancel(tid)
    t = time.time()
    assert len(store.record_outcomes("w", done=[(tid, "1", t, t)])) == 0
    assert store.get_task(tid)["status"] == "cancelled"


def test_release_returns_tasks_and_uncounts_the_attempt(store):
    a, b, c = (put_task(store, n, PAYLOAD) for n in "abc")
    assert _ids(store.claim("w", ["default"], 3)) == [a, b, c]
    assert store.release("other", [a, b, c]) == 0
    assert store.release("w", []) == 0
    assert store.release("w", [a, b]) == 2
    for tid in (a, b):
        row = store.get_task(tid)
        assert (row["status"], row["attempts"], row["worker_id"], row["started_at"]) == (
            "pending", 0, None, None)
    row = store.get_task(c)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("running", 1, "w")
    assert store.release("w", [a]) == 0  # already pending: not uncounted twice
    assert store.get_task(a)["attempts"] == 0
    assert _ids(store.claim("w2", ["default"], 5)) == [a, b]


def test_release_unheld_gives_back_what_the_worker_does_not_hold(store):
    a, b, c, d = (put_task(store, n, PAYLOAD) for n in "abcd")
    assert _ids(store.claim("w", ["default"], 3)) == [a, b, c]
    assert _ids(store.claim("other", ["default"], 1)) == [d]
    assert store.release_unheld("w", [a, c]) == [b]
    row = store.get_task(b)
    assert (row["status"], row["attempts"], row["worker_id"], row["started_at"]) == (
        "pending", 0, None, None)
    assert [store.get_task(i)["status"] for i in (a, c, d)] == ["running"] * 3
    assert store.release_unheld("w", [a, c]) == []           # nothing more to give back
    assert store.release_unheld("w", []) == [a, c]           # holding nothing: all of them
    assert store.get_task(d)["worker_id"] == "other"         # another worker's, untouched


# ---- workers and reclaim ---------------------------------------------------------------


def _heartbeat(store, worker_id, concurrency=2, queues="default"):
    store.heartbeat(worker_id, "host-" + worker_id, queues, concurrency, os.getpid(),
                    time.time() - 5)


@pytest.mark.real_backend  # ages a heartbeat in the database itself
def test_reclaim_stale_worker(db, store):
    _heartbeat(store, "dead")
    _heartbeat(store, "live")
    age_heartbeat(db, "dead", 600)
    keep = put_task(store, "keep", PAYLOAD, max_retries=3)
    spent = put_task(store, "spent", PAYLOAD, max_retries=0)
    mine = put_task(store, "mine", PAYLOAD)
    assert _ids(store.claim("dead", ["default"], 2)) == [keep, spent]
    assert _ids(store.claim("live", ["default"], 1)) == [mine]
    live_before = store.get_task(mine)

    due = store.get_task(keep)["run_at"]
    result = store.reclaim(stale_after=60)
    assert sorted(result) == sorted([(keep, "pending"), (spent, "failed")])

    k = store.get_task(keep)
    assert (k["status"], k["attempts"], k["worker_id"]) == ("pending", 1, None)
    assert k["run_at"] == due
    s = store.get_task(spent)
    assert (s["status"], s["attempts"], s["worker_id"]) == ("failed", 1, None)
    assert "worker died" in s["error"] and s["finished_at"] is not None
    assert store.get_task(mine) == live_before
    assert [w["worker_id"] for w in store.list_workers()] == ["live"]

    # The reclaimed task runs again, and the attempt is counted.
    assert _ids(store.claim("live", ["default"], 5)) == [keep]
    assert store.get_task(keep)["attempts"] == 2
    assert store.reclaim(stale_after=60) == []


def test_reclaim_fails_a_task_out_of_attempts_after_repeated_deaths(store):
    tid = put_task(store, "crashy", PAYLOAD, max_retries=1)
    store.claim("w1", ["default"], 1)
    assert store.reclaim(dead_worker_ids=["w1"], reason="child was killed") == [(tid, "pending")]
    store.claim("w2", ["default"], 1)
    assert store.get_task(tid)["attempts"] == 2
    assert store.reclaim(dead_worker_ids=["w2"], reason="child was killed") == [(tid, "failed")]
    row = store.get_task(tid)
    assert row["status"] == "failed" and "child was killed" in row["error"]


def test_reclaim_by_id_and_workers_without_a_row(store):
    _heartbeat(store, "fresh-but-dead")
    _heartbeat(store, "alive")
    a = put_task(store, "a", PAYLOAD)
    b = put_task(store, "b", PAYLOAD)
    c = put_task(store, "c", PAYLOAD)
    store.claim("fresh-but-dead", ["default"], 1)
    store.claim("no-row", ["default"], 1)  # never sent a heartbeat
    store.claim("alive", ["default"], 1)
    got = store.reclaim(dead_worker_ids=["fresh-but-dead"])
    assert sorted(got) == [(a, "pending"), (b, "pending")]
    assert store.get_task(c)["status"] == "running"
    assert [w["worker_id"] for w in store.list_workers()] == ["alive"]


def test_a_reclaimed_task_keeps_its_due_time_and_its_place_in_line(store):
    # Due an hour ago (a cron occurrence, say), claimed by a worker that then died.
    first = put_task(store, "first", PAYLOAD, run_at=time.time() - 3600)
    assert _ids(store.claim("w1", ["default"], 1)) == [first]
    due = store.get_task(first)["run_at"]
    later = [put_task(store, f"later{i}", PAYLOAD) for i in range(3)]
    assert store.reclaim(dead_worker_ids=["w1"]) == [(first, "pending")]
    assert store.get_task(first)["run_at"] == due
    # Still ahead of everything enqueued after it was due.
    assert _ids(store.claim("w2", ["default"], 4)) == [first] + later


def test_reclaim_by_a_stale_heartbeat_spares_a_worker_that_beat_meanwhile(store):
    _heartbeat(store, "silent")
    _heartbeat(store, "beating")
    a = put_task(store, "a", PAYLOAD)
    b = put_task(store, "b", PAYLOAD)
    store.claim("silent", ["default"], 1)
    store.claim("beating", ["default"], 1)
    read = {w["worker_id"]: w["last_heartbeat"] for w in store.list_workers()}
    time.sleep(0.01)  # a new heartbeat gets a new stamp
    _heartbeat(store, "beating")
    assert store.list_workers()[0]["last_heartbeat"] != read["beating"]
    assert store.reclaim(stale_heartbeats=read) == [(a, "pending")]
    assert store.get_task(b)["status"] == "running"
    assert [w["worker_id"] for w in store.list_workers()] == ["beating"]


# ---- operator actions ---------------------------------------------------------------


def test_cancel_pending_or_running(store):
    d = put_task(store, "d", PAYLOAD)
    r = put_task(store, "r", PAYLOAD)
    p = put_task(store, "p", PAYLOAD, run_at=time.time() + 60)  # pending, not yet due
    assert _ids(store.claim("w", ["default"], 5)) == [d, r]
    _finish(store, "w", [d], "done")
    assert store.cancel(p) is True
    row = store.get_task(p)
    assert row["status"] == "cancelled" and row["finished_at"] is not None
    assert store.cancel(p) is False
    assert store.cancel(d) is False
    assert store.get_task(d)["status"] == "done"
    assert store.cancel(r) is True   # a running task is cancelled too: its outcome is refused
    row = store.get_task(r)
    assert row["status"] == "cancelled" and "TaskCancelled" in row["error"]
    assert store.record_outcomes("w", done=[(r, "1", 1.0, 2.0)]) == []
    assert store.cancel(424242) is False
    assert store.next_due(["default"]) is None  # the cancelled task is not pending


def test_retry_failed_by_id_and_by_filter(store):
    f1 = put_task(store, "x", PAYLOAD, queue="a")
    f2 = put_task(store, "x", PAYLOAD, queue="b")
    f3 = put_task(store, "y", PAYLOAD, queue="a")
    d = put_task(store, "x", PAYLOAD, queue="a")
    store.claim("w", ["a", "b"], 10)
    _finish(store, "w", [f1, f2, f3], "failed")
    _finish(store, "w", [d], "done")

    assert store.retry_failed(task_id=d) == 0  # done is not retried
    assert store.retry_failed(queue="a", name="x") == 1
    assert store.get_task(f1)["status"] == "pending"
    assert store.get_task(f2)["status"] == "failed"
    assert store.retry_failed(queue="a") == 1
    assert store.get_task(f3)["status"] == "pending"
    assert store.retry_failed(task_id=f2) == 1
    assert store.retry_failed(task_id=f2) == 0
    assert store.retry_failed() == 0
    for tid in (f1, f2, f3):
        row = store.get_task(tid)
        assert (row["status"], row["attempts"], row["worker_id"], row["finished_at"]) == (
            "pending", 0, None, None)
    assert store.get_task(d)["status"] == "done"
    assert sorted(_ids(store.claim("w", ["a", "b"], 10))) == [f1, f2, f3]


def test_purge_by_age(store):
    old = time.time() - 7200
    ids = [put_task(store, str(i), PAYLOAD) for i in range(4)]
    pending = put_task(store, "pending", PAYLOAD, queue="idle", run_at=old)
    cancelled = put_task(store, "cancelled", PAYLOAD)
    store.cancel(cancelled)
    store.claim("w", ["default"], 4)
    _finish(store, "w", [ids[0]], "done", when=old)
    _finish(store, "w", [ids[1]], "failed", when=old)
    _finish(store, "w", [ids[2]], "done")
    # ids[3] stays running
    assert store.purge(3600) == 2
    assert store.get_task(ids[0]) is None and store.get_task(ids[1]) is None
    assert store.get_task(ids[2])["status"] == "done"
    assert store.purge(3600) == 0
    time.sleep(0.01)
    assert store.purge(0) == 2  # the recent done one and the cancelled one
    assert store.get_task(cancelled) is None
    assert store.get_task(pending)["status"] == "pending"
    assert store.get_task(ids[3])["status"] == "running"
    assert store.count_tasks() == 2


# ---- stats, as liteq.monitoring shows them ------------------------------------------------


def test_monitoring_functions_return_the_seed_keys(db, clean_registry):
    @task(queue="a")
    def in_a(x):
        return x

    @task(queue="b")
    def in_b(x):
        return x

    store = backends.get_backend()
    a1, a2 = in_a.delay(1), in_a.delay(2)
    b1, b2 = in_b.delay(1), in_b.delay(2)
    store.claim("w1", ["b"], 2)
    _finish(store, "w1", [b1], "done")
    _finish(store, "w1", [b2], "failed")
    _heartbeat(store, "w1", concurrency=4, queues="a,b")
    _heartbeat(store, "w-stale")
    age_heartbeat(db, "w-stale", 60)
    assert _ids(store.claim("w1", ["a"], 1)) == [a1]

    stats = monitoring.get_queue_stats()
    assert all(set(s) == {"queue", "status", "count"} for s in stats), stats
    assert sorted((s["queue"], s["status"], s["count"]) for s in stats) == [
        ("a", "pending", 1), ("a", "running", 1), ("b", "done", 1), ("b", "failed", 1)]

    assert monitoring.list_queues() == ["a", "b"]

    recent = monitoring.get_recent_tasks(limit=3)
    assert [r["id"] for r in recent] == [b2, b1, a2]
    for r in recent:
        assert {"id", "name", "queue", "status", "attempts", "max_retries", "result",
                "error", "args", "kwargs", "created_at"} <= set(r)
    assert len(monitoring.get_recent_tasks()) == 4

    failed = monitoring.get_failed_tasks(limit=5)
    assert [f["id"] for f in failed] == [b2]
    assert failed[0]["error"] == f"error of {b2}" and failed[0]["status"] == "failed"

    workers = monitoring.get_active_workers()
    assert [w["worker_id"] for w in workers] == ["w1"]
    w = workers[0]
    assert {"worker_id", "hostname", "queues", "concurrency", "last_heartbeat",
            "active_tasks"} <= set(w)
    assert (w["hostname"], w["queues"], w["concurrency"], w["active_tasks"]) == (
        "host-w1", ["a", "b"], 4, 1)  # a list, as liteq 0.2 gave it
    assert abs(datetime.fromisoformat(w["last_heartbeat"]).timestamp() - time.time()) < 10


def test_monitoring_on_empty_database(db):
    assert monitoring.get_queue_stats() == []
    assert monitoring.list_queues() == []
    assert monitoring.get_recent_tasks() == []
    assert monitoring.get_failed_tasks() == []
    assert monitoring.get_active_workers() == []


@pytest.mark.real_backend  # reads through liteq.monitoring, on LITEQ_DB
def test_failed_tasks_are_newest_failure_first(store, db):
    ids = [put_task(store, str(i), PAYLOAD) for i in range(3)]
    store.claim("w", ["default"], 3)
    t = time.time()
    # Fail in the order 2, 0, 1 (finish times), so newest failure first is 1, 0, 2.
    for offset, tid in ((-30, ids[2]), (-20, ids[0]), (-10, ids[1])):
        _finish(store, "w", [tid], "failed", when=t + offset)
    backends.forget_backends()
    assert [f["id"] for f in monitoring.get_failed_tasks()] == [ids[1], ids[0], ids[2]]
    assert [f["id"] for f in monitoring.get_failed_tasks(limit=1)] == [ids[1]]


# ---- the race ---------------------------------------------------------------------------


def _race_worker(db, worker_id, start, out_path, seed):
    """Claim batches of 1..10 and mark them done until nothing is pending."""
    rnd = random.Random(seed)
    claimed, problems = [], []
    store = backends.open_backend(db)
    try:
        if not start.wait(30):
            problems.append("start signal never came")
            return
        while True:
            rows = store.claim(worker_id, ["default"], rnd.randint(1, 10))
            if not rows:
                if store.count_tasks(status="pending") == 0:
                    break
                continue
            ids = [r["id"] for r in rows]
            claimed.extend(ids)
            t = time.time()
            n = len(store.record_outcomes(worker_id, done=[(i, "null", t, t) for i in ids]))
            if n != len(ids):
                problems.append(f"record_outcomes changed {n} of {len(ids)} rows")
    except BaseException as exc:
        problems.append(repr(exc))
    finally:
        store.close()
        with open(out_path, "w") as f:
            json.dump({"claimed": claimed, "problems": problems}, f)


@pytest.mark.timeout(120)
def test_race_many_processes_claim_without_duplicates_or_losses(db, workdir, clean_registry):
    @task
    def racer(i):
        return i

    all_ids = racer.map(range(2500))
    assert len(all_ids) == 2500
    backends.forget_backends()
    start = FORK.Event()
    procs, outs = [], []
    try:
        for n in range(5):
            out = os.path.join(workdir, f"race-{n}.json")
            outs.append(out)
            p = FORK.Process(target=_race_worker,
                             args=(db, f"racer-{n}", start, out, 1000 + n))
            p.start()
            procs.append(p)
        start.set()
        deadline = time.monotonic() + 90
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
        stuck = [p.pid for p in procs if p.is_alive()]
        assert not stuck, f"race workers still running after 90 s: {stuck}"
        assert [p.exitcode for p in procs] == [0] * len(procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)

    by_worker, problems = {}, {}
    for n, out in enumerate(outs):
        with open(out) as f:
            data = json.load(f)
        by_worker[f"racer-{n}"] = data["claimed"]
        if data["problems"]:
            problems[f"racer-{n}"] = data["problems"][:5]
    every = [i for ids in by_worker.values() for i in ids]
    print("claims per process:", {w: len(ids) for w, ids in by_worker.items()})
    duplicates = len(every) - len(set(every))
    assert duplicates == 0, f"{duplicates} tasks were claimed twice"
    lost = set(all_ids) - set(every)
    assert not lost, f"{len(lost)} tasks never claimed, e.g. {sorted(lost)[:10]}"
    assert set(every) == set(all_ids)
    assert not problems, problems  # e.g. an owner's record_outcomes that did not land

    store = backends.open_backend(db)
    try:
        rows = store.get_tasks(all_ids)
    finally:
        store.close()
    assert len(rows) == 2500
    owner = {i: w for w, ids in by_worker.items() for i in ids}
    bad = [r["id"] for r in rows
           if r["status"] != "done" or r["attempts"] != 1 or r["worker_id"] != owner[r["id"]]]
    assert not bad, f"{len(bad)} rows not done once by their claimer, e.g. {bad[:10]}"
