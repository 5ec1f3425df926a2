"""What becomes of one attempt in a worker child (liteqd.executor), run in this
process: results, errors that no retry can fix, a task's own Retry, and the
retry_on / no_retry_on rules. No daemon: Executor.run() is called directly."""

import asyncio
import json

from liteq import Retry, task
from liteq.serialization import encode_payload

from liteqd import protocol
from liteqd.child_state import Recycling, StopRequest
from liteqd.executor import Executor, Outcome


def _run(name, *args, **kwargs):
    msg = protocol.task(1, name, encode_payload(name, args, kwargs), None, enqueued_at=0.0)
    executor = Executor()
    try:
        return executor.run(msg, "host:1")
    finally:
        if executor.loop is not None:   # made for a coroutine task
            executor.loop.close()
            asyncio.set_event_loop(None)


def test_a_result_comes_back_as_json(clean_registry):
    @task(name="unit_add")
    def add(a, b):
        return a + b

    outcome = _run("unit_add", 2, 3)
    assert outcome.ok and json.loads(outcome.text) == 5


def test_an_unknown_task_is_not_retried_and_says_what_is_registered(clean_registry):
    @task(name="unit_known")
    def known():
        return None

    outcome = _run("unit_missing")
    assert outcome == Outcome(False, outcome.text, retry=False)
    assert outcome.text.startswith("UnknownTask: no task named 'unit_missing'")
    assert "unit_known" in outcome.text and "not retried" in outcome.text


def test_arguments_that_no_longer_fit_are_not_retried(clean_registry):
    @task(name="unit_one_arg")
    def one(a):
        return a

    outcome = _run("unit_one_arg", 1, 2)
    assert not outcome.ok and outcome.retry is False
    assert outcome.text.startswith("ArgumentMismatch:")


def test_a_result_json_cannot_hold_is_not_retried(clean_registry):
    @task(name="unit_bad_result")
    def bad():
        return object()

    outcome = _run("unit_bad_result")
    assert not outcome.ok and outcome.retry is False
    assert outcome.text.startswith("BadResult:")


def test_a_task_asks_for_a_retry_with_a_delay(clean_registry):
    @task(name="unit_retry")
    def again():
        raise Retry(delay=7, reason="rate limited")

    assert _run("unit_retry") == Outcome(False, "Retry: rate limited", retry=7)


def test_an_error_outside_retry_on_is_not_retried(clean_registry):
    @task(name="unit_retry_on", retry_on=(ConnectionError,))
    def fails():
        raise KeyError("x")

    outcome = _run("unit_retry_on")
    assert not outcome.ok and outcome.retry is False
    assert "KeyError is not in retry_on (ConnectionError)" in outcome.text.splitlines()[0]


def test_an_ordinary_error_is_left_to_the_retry_policy(clean_registry):
    @task(name="unit_fails")
    def fails():
        raise ValueError("boom")

    outcome = _run("unit_fails")
    assert not outcome.ok and outcome.retry is None and not outcome.timed_out
    assert outcome.text.startswith("ValueError: boom")


def test_a_coroutine_task_runs_on_the_executors_loop(clean_registry):
    @task(name="unit_async")
    async def double(x):
        return x * 2

    outcome = _run("unit_async", 21)
    assert outcome.ok and json.loads(outcome.text) == 42


def test_recycling_stops_the_child_at_its_task_limit():
    recycling = Recycling(report_rss=False, max_tasks=2, max_rss=0)
    try:
        recycling.task_done(recycling.rss())
        assert not StopRequest.requested
        recycling.task_done(recycling.rss())
        assert StopRequest.requested
    finally:
        StopRequest.requested = False


def test_recycling_stops_the_child_past_its_memory_limit():
    recycling = Recycling(report_rss=True, max_tasks=0, max_rss=1)
    try:
        rss = recycling.rss()
        assert rss > 1
        recycling.task_done(rss)
        assert StopRequest.requested
    finally:
        StopRequest.requested = False
