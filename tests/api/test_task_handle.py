"""TaskHandle: what .delay() and the other enqueue calls return. An int (the task id)
that reads the task's TaskStatus and waits for its typed result; on each backend, with
a real daemon where tasks must run."""

import asyncio
import json
import os

import pytest

import liteq
from liteq import (TaskFailed, TaskHandle, TaskNotFound, TaskStatus, TaskWasCancelled,
                   WaitTimeout, cancel_task, chain)
from liteq.fastapi import TaskEnqueuer, enqueue_task

from support import APPS
from support.daemon_helpers import load_app_module

APP = os.path.join(APPS, "typed_app.py")


@pytest.fixture
def app(db, clean_registry):
    """The typed app module, loaded in the test process (to enqueue)."""
    return load_app_module(APP)


def _start(daemons):
    return daemons.start("--concurrency", "2", "--queues", "typed", app=APP)


def test_every_enqueue_call_returns_a_handle_that_is_the_id(app):
    one = app.add.delay(1, 2)
    assert isinstance(one, TaskHandle) and isinstance(one, int)
    assert one == one.id == int(one) and type(one.id) is int
    assert json.loads(json.dumps({"task_id": one})) == {"task_id": one.id}
    assert f"{one}" == str(one.id) and {one: "x"}[one.id] == "x"
    made = [app.add.apply_async((1, 2), countdown=60), app.add.schedule(60, 1, 2),
            *app.add.starmap([(1, 2), (3, 4)]), *app.fetch.map(["a", "b"]),
            *chain(app.add.s(1, 2), app.add.s(3, 4)),
            app.add.s(5, 6).apply_async(queue="other"), asyncio.run(app.fetch.adelay("c")),
            enqueue_task(app.add, 7, 8), TaskEnqueuer().add_task(app.add, 9, 10)]
    assert all(type(h) is TaskHandle for h in made)
    assert [h.id for h in made] == list(range(one.id + 1, one.id + 1 + len(made)))
    # A dependent task takes handles and plain ids together (one driver type).
    child = app.add.apply_async((0, 0), depends_on=[one, made[0].id])
    assert child.status()["status"] == "pending"


def test_a_handle_is_made_again_from_a_stored_id(app):
    stored = json.dumps(app.add.delay(1, 2))
    again = app.add.handle(json.loads(stored))
    plain = TaskHandle(json.loads(stored))
    assert again == plain == json.loads(stored)
    assert again.status()["args"] == [1, 2] == plain.status().args
    with pytest.raises(TypeError, match="a task id is an int"):
        TaskHandle("12")


def test_the_status_is_typed_and_still_the_dict_liteq_0_2_gave(app):
    status = app.add.delay(1, 2).status()
    assert isinstance(status, TaskStatus) and isinstance(status, dict)
    assert status["status"] == status.status == "pending"
    assert status.get("result") is None and status.result is None
    assert status.attempts == status["attempts"] == 0 and status.finished is False
    assert status.args == [1, 2] and status.kwargs == {}
    assert json.loads(json.dumps(status))["name"] == status.name == "add"
    assert liteq.get_task_status(status.id) == status


def test_result_returns_the_task_value_sync_and_async(app, daemons):
    summed = app.add.delay(2, 3)
    fetched = app.fetch.delay("https://example.com")
    _start(daemons)
    assert summed.result(timeout=30) == 5
    assert fetched.result(timeout=30) == {"https://example.com": 19}
    assert summed.wait(timeout=30).status == "done"

    async def waits():
        later = await app.add.adelay(4, 5)
        return await later.aresult(timeout=30), (await later.await_(timeout=30)).finished
    assert asyncio.run(waits()) == (9, True)


def test_result_of_a_failed_task_raises_task_failed_with_its_error(app, daemons):
    handle = app.explode.delay("boom")
    _start(daemons)
    with pytest.raises(TaskFailed, match=r"failed after 1 attempt\(s\): ValueError: explode: "
                                         r"boom") as info:
        handle.result(timeout=30)
    assert "Traceback" in info.value.error
    assert info.value.status.status == "failed"
    with pytest.raises(TaskFailed):
        asyncio.run(handle.aresult(timeout=30))


def test_result_of_a_cancelled_task_raises_task_was_cancelled(app):
    handle = app.add.delay(1, 2)
    assert cancel_task(handle)
    with pytest.raises(TaskWasCancelled, match=f"task {handle} \\(add\\) was cancelled"):
        handle.result(timeout=10)
    assert not issubclass(TaskWasCancelled, TaskFailed)  # each end has its own error


def test_result_past_its_timeout_says_the_task_is_still_pending(app):
    handle = app.add.apply_async((1, 2), countdown=3600)
    with pytest.raises(WaitTimeout, match=f"task {handle} \\(add\\) is still pending after "
                                          f"0.2 s"):
        handle.result(timeout=0.2)
    with pytest.raises(TimeoutError):
        asyncio.run(handle.aresult(timeout=0.2))


def test_a_handle_of_no_task_raises_task_not_found(app):
    with pytest.raises(TaskNotFound, match="no task with id 987654"):
        TaskHandle(987654).result(timeout=1)
    assert TaskHandle(987654).status() is None
