"""The in-memory fake backend's own rules, beyond what the contract suite runs on it:
dependencies, unique keys, purge's guards, and a loud failure for what it does not model."""

import json

import pytest

from liteq.backends.limits import Limits
from liteq.taskspec import NewTask, NewTasks, TaskOptions
from unit.fake_backend import FakeBackend

PAYLOAD = '{"args":[],"kwargs":{}}'


def _new(name="t", **kwargs):
    return NewTask(name, PAYLOAD, TaskOptions(), **kwargs)


def test_a_chain_runs_in_order_and_a_failure_cancels_what_follows():
    fake = FakeBackend()
    first, second, third = fake.enqueue_chain([_new("a"), _new("b"), _new("c")])
    assert [r["id"] for r in fake.claim("w", ["default"], 10)] == [first]
    assert fake.record_outcomes("w", done=[(first, '"ok"', 1.0, 2.0)]) == [first]
    assert fake.parent_results(second) == ['"ok"']
    assert [r["id"] for r in fake.claim("w", ["default"], 10)] == [second]
    assert fake.record_outcomes("w", failed=[(second, "boom", 1.0, 2.0)]) == [second]
    row = fake.get_task(third)
    assert row["status"] == "cancelled" and str(second) in row["error"]


def test_a_unique_key_held_by_a_live_task_returns_that_task():
    fake = FakeBackend()
    held = fake.enqueue(_new(unique_key="k"))
    assert fake.enqueue(_new(unique_key="k")) == held
    assert fake.cancel(held)
    assert fake.enqueue(_new(unique_key="k")) != held


def test_enqueue_many_writes_one_task_per_call():
    fake = FakeBackend()
    ids = fake.enqueue_many(NewTasks("t", json.dumps([[1], [2]]), 2, TaskOptions()))
    assert [json.loads(fake.get_task(i)["payload"])["args"] for i in ids] == [[1], [2]]


def test_purge_keeps_a_parent_a_pending_task_waits_for_and_refuses_unknown_statuses():
    fake = FakeBackend()
    parent, child = fake.enqueue_chain([_new("p"), _new("c")])
    fake.claim("w", ["default"], 1)
    fake.record_outcomes("w", done=[(parent, "null", 1.0, 2.0)])
    assert fake.purge(None) == 0 and fake.get_task(parent) is not None
    with pytest.raises(ValueError):
        fake.purge(None, statuses=("bogus",))
    assert fake.count_tasks(status="pending") == 1 and fake.get_task(child) is not None


def test_what_the_fake_does_not_model_fails_loudly():
    fake = FakeBackend()
    with pytest.raises(NotImplementedError, match="queue_stats"):
        fake.queue_stats()
    with pytest.raises(NotImplementedError):
        fake.claim("w", ["default"], 1, Limits(by_name={"t": 1}))
