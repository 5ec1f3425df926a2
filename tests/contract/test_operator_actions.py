"""The operators' actions (cancel, retry, delete) behave alike on both backends: the
filtered operation of each, the calls that are one case of it (cancel, cancel_many,
retry_failed, retry_many, delete_many, purge), and one ValueError for a bad status,
age or id wherever one is taken."""

import math
import time

import pytest

from liteq import backends
from liteq.backends.base import CANCEL_TEXT
from liteq.backends.filters import TaskFilter
from liteq.taskspec import NewTask, TaskOptions
from support.task_table import put_task

PAYLOAD = '{"args":[],"kwargs":{}}'
UNKNOWN = "unknown task status"


# The panel's and liteqctl's reads (find_finished, count_finished...) are not modelled by the fake.
pytestmark = pytest.mark.real_backend


@pytest.fixture
def store(db):
    """The backend of `db` (the db fixture closes it afterwards)."""
    return backends.get_backend(db)


def _finished(store, kind, queue="a", when=None, unique_key=None):
    """A task of `queue` that ran and ended `kind` (done or failed) at `when` (default
    now). No other task of the queue may be due."""
    tid = store.enqueue(NewTask("x", PAYLOAD, TaskOptions.build(queue=queue),
                                unique_key=unique_key))
    assert [r["id"] for r in store.claim("w", [queue], 10)] == [tid]
    t = time.time() if when is None else when
    entry = (tid, "null" if kind == "done" else f"error of {tid}", t, t)
    assert len(store.record_outcomes("w", **{kind: [entry]})) == 1
    return tid


def _status(store, *ids):
    return [store.get_task(i)["status"] for i in ids]


# ---- one check of the values, on both backends ---------------------------------------------

@pytest.mark.parametrize("call", [
    lambda s: s.purge(0, statuses=("bogus",)),
    lambda s: s.purge(None, statuses="bogus"),
    lambda s: s.find_finished(("failed", "bogus")),
    lambda s: s.count_finished("bogus"),
    lambda s: s.match_task_ids(("pending", "bogus")),
    lambda s: s.count_tasks(statuses=("bogus",)),
    lambda s: s.find_tasks(statuses=("bogus",)),
    lambda s: s.prune("bogus", 0, 10),
    lambda s: s.cancel_tasks(TaskFilter(statuses=("bogus",))),
    lambda s: s.retry_tasks(TaskFilter(statuses=("failed", "bogus"))),
    lambda s: s.delete_tasks(TaskFilter(statuses=("bogus",))),
], ids=["purge", "purge-str", "find_finished", "count_finished", "match_task_ids",
        "count_tasks", "find_tasks", "prune", "cancel_tasks", "retry_tasks", "delete_tasks"])
def test_an_unknown_status_is_one_value_error_everywhere(store, call):
    put_task(store, "x", PAYLOAD, queue="a")
    with pytest.raises(ValueError, match=UNKNOWN):
        call(store)
    assert store.count_tasks() == 1


@pytest.mark.parametrize("call, needle", [
    (lambda s: s.cancel("x"), "invalid literal"),
    (lambda s: s.retry_failed(task_id="x"), "invalid literal"),
    (lambda s: s.get_task("x"), "invalid literal"),
    (lambda s: s.retry_failed(older_than=math.nan), "older_than must be a finite number"),
    (lambda s: s.find_finished("failed", older_than=math.nan),
     "older_than must be a finite number"),
    (lambda s: s.count_finished("failed", older_than=math.inf),
     "older_than must be a finite number"),
    (lambda s: s.purge(math.nan), "older_than must be a finite number"),
], ids=["cancel-id", "retry-id", "get_task-id", "retry-age", "find-age", "count-age",
        "purge-age"])
def test_a_bad_id_or_age_is_a_value_error_on_both_backends(store, call, needle):
    put_task(store, "x", PAYLOAD, queue="a")
    with pytest.raises(ValueError, match=needle):
        call(store)


# ---- cancel ------------------------------------------------------------------------------

def test_cancel_by_filter_takes_pending_and_running_with_their_dependents(store):
    run = put_task(store, "x", PAYLOAD, queue="a")
    store.claim("w", ["a"], 10)
    wait = put_task(store, "x", PAYLOAD, queue="a")
    other = put_task(store, "y", PAYLOAD, queue="a")
    elsewhere = put_task(store, "x", PAYLOAD, queue="b")
    child = store.enqueue(NewTask("z", PAYLOAD, TaskOptions.build(queue="b"),
                                  depends_on=(wait,)))

    assert store.cancel_tasks(TaskFilter(queue="a", name="x")) == 2
    assert _status(store, run, wait, other, elsewhere, child) == [
        "cancelled", "cancelled", "pending", "pending", "cancelled"]
    # The running one's attempt ended with the cancel; the pending one had no attempt.
    assert store.get_task(run)["error"] == CANCEL_TEXT
    assert [e["error"] for e in store.task_errors(run)] == [CANCEL_TEXT]
    assert store.task_errors(wait) == []
    cancelled = {(r["name"], r["count"]) for r in store.task_stats()
                 if r["metric"] == "cancelled"}
    assert cancelled == {("x", 2), ("z", 1)}
    assert store.cancel_tasks(TaskFilter(queue="a", name="x")) == 0


def test_cancel_of_one_id_is_the_filtered_cancel(store):
    a, b = (put_task(store, "x", PAYLOAD, queue="a") for _ in range(2))
    assert store.cancel(a) is True
    assert store.cancel(a) is False
    assert store.cancel(424242) is False
    assert store.cancel_many([b, a, 424242]) == 1
    assert store.cancel_tasks(TaskFilter(ids=())) == 0
    assert store.cancel_tasks(TaskFilter(statuses=("done",))) == 0
    assert _status(store, a, b) == ["cancelled", "cancelled"]


# ---- retry -------------------------------------------------------------------------------

def test_retry_by_filter_and_by_ids(store):
    f1 = _finished(store, "failed", "a")
    f2 = _finished(store, "failed", "b")
    d = _finished(store, "done", "a")
    c = put_task(store, "x", PAYLOAD, queue="a")
    store.cancel(c)

    assert store.retry_tasks(TaskFilter(queue="a", statuses=("failed",))) == 1
    assert _status(store, f1, f2, c) == ["pending", "failed", "cancelled"]
    assert store.retry_tasks(TaskFilter(ids=(f2, c, d))) == 2   # done is never retried
    assert _status(store, f2, c, d) == ["pending", "pending", "done"]
    row = store.get_task(f2)
    assert (row["attempts"], row["worker_id"], row["finished_at"]) == (0, None, None)
    # The calls liteq 0.2 and the panel make are cases of it.
    assert store.retry_failed(task_id=d) == 0
    assert store.retry_many([d]) == 0
    assert store.retry_failed() == 0


def test_retry_never_duplicates_a_unique_key(store):
    older = _finished(store, "failed", unique_key="k")
    newer = _finished(store, "failed", unique_key="k")
    opts = TaskOptions.build(queue="b")
    held = store.enqueue(NewTask("x", PAYLOAD, opts, unique_key="held"))
    store.cancel(held)
    holder = store.enqueue(NewTask("x", PAYLOAD, opts, unique_key="held"))

    # Of two chosen tasks with one key the newest is retried, by ids as by a filter.
    assert store.retry_tasks(TaskFilter(ids=(older, newer))) == 1
    assert _status(store, older, newer) == ["failed", "pending"]
    assert store.retry_tasks(TaskFilter(ids=(older,))) == 0   # the key is held now
    assert store.retry_failed(task_id=held) == 0   # a pending task holds its key
    store.cancel(holder)
    assert store.retry_failed(task_id=held) == 1
    assert _status(store, held, holder) == ["pending", "cancelled"]


# ---- delete ------------------------------------------------------------------------------

def test_delete_by_filter_keeps_what_a_pending_task_waits_for(store):
    old = time.time() - 7200
    parent = _finished(store, "done", "a", when=old)
    gone = _finished(store, "done", "a", when=old)
    recent = _finished(store, "failed", "b")
    child = store.enqueue(NewTask("z", PAYLOAD, TaskOptions.build(queue="idle"),
                                  depends_on=(parent,)))
    running = put_task(store, "x", PAYLOAD, queue="a")
    store.claim("w", ["a"], 10)

    assert store.delete_tasks(TaskFilter(older_than=3600)) == 1
    assert store.get_task(gone) is None
    assert store.get_task(parent)["status"] == "done"   # its child still waits for it
    assert store.delete_tasks(TaskFilter(statuses=("done",))) == 0
    assert store.delete_tasks(TaskFilter(ids=(recent, running, child))) == 1
    assert _status(store, parent, running, child) == ["done", "running", "pending"]
    assert store.task_errors(recent) == []
    # purge and delete_many are cases of it.
    assert store.purge(0, statuses=("pending", "running")) == 0
    assert store.delete_many([running, child]) == 0
    store.cancel(child)
    assert store.purge(None, queue="a") == 1
    assert store.get_task(parent) is None
