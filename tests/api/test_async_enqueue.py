"""Enqueueing from asyncio code: adelay, aapply_async, aget_task_status
and await_task, on each backend; the event loop keeps running while they wait, and the
FastAPI helpers use them."""

import asyncio

import pytest

import liteq
from liteq import aget_task_status, await_task, task

from support.daemon_helpers import APP, load_app_module


@pytest.fixture
def echo(db, clean_registry):
    @task(queue="asyncq", max_retries=1)
    def echo(x, tag="plain"):
        return [x, tag]
    return echo


def test_async_enqueue_and_reads_match_the_sync_ones(db, echo):
    async def main():
        a = await echo.adelay(1, tag="a")
        b = await echo.aapply_async((2,), {"tag": "b"}, priority=5, countdown=60)
        return a, b, await aget_task_status(a), await aget_task_status(b), \
            await aget_task_status(10 ** 9)
    a, b, sa, sb, missing = asyncio.run(main())
    assert sa == liteq.get_task_status(a) and sa["args"] == [1] and sa["kwargs"] == {"tag": "a"}
    assert sb["priority"] == 5 and sb["status"] == "pending" and sb["queue"] == "asyncq"
    assert missing is None
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        asyncio.run(echo.adelay(object()))
    assert liteq.backends.get_backend().count_tasks() == 2   # the bad call wrote nothing


def test_the_loop_keeps_running_during_a_thousand_enqueues(db, echo):
    """A ticker coroutine runs between the enqueues: with a blocking enqueue it could not
    run at all until every one of them returned."""
    async def main():
        events = []
        done = asyncio.Event()

        async def ticker():
            while not done.is_set():
                events.append("tick")
                await asyncio.sleep(0)

        async def producer(start):
            for i in range(start, start + 100):
                await echo.adelay(i)
                events.append("enqueued")

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(producer(n * 100) for n in range(10)))
        done.set()
        await tick
        return events
    events = asyncio.run(main())
    first, last = events.index("enqueued"), len(events) - 1 - events[::-1].index("enqueued")
    assert events.count("enqueued") == 1000
    assert events[first:last].count("tick") >= 100, "the loop was blocked while enqueueing"
    assert liteq.backends.get_backend().count_tasks() == 1000


def test_await_task_waits_for_a_daemon_without_blocking(daemons):
    app = load_app_module(APP)
    daemons.start("--concurrency", "1")

    async def main():
        tid = await app.add.adelay(20, 22)
        return await await_task(tid, timeout=15)
    assert asyncio.run(main())["result"] == 42
    with pytest.raises(liteq.WaitTimeout):
        asyncio.run(await_task(app.slow.delay(5), timeout=0.2))


def test_fastapi_async_endpoints_enqueue_through_the_async_helpers(db, echo):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from liteq.fastapi import LiteQBackgroundTasks, aenqueue_task, task_router

    api = FastAPI()
    api.include_router(task_router)

    @api.post("/one")
    async def one(x: int, background: LiteQBackgroundTasks):
        first = await background.aadd_task(echo, x, tag="bg")
        second = await aenqueue_task(echo, x + 1, _priority=3)
        return {"ids": [first, second], "mine": background.task_ids}

    with TestClient(api) as client:
        body = client.post("/one", params={"x": 7}).json()
        assert body["mine"] == body["ids"][:1]   # what went through the dependency
        status = client.get(f"/tasks/{body['ids'][1]}").json()
        assert status["args"] == [8] and status["priority"] == 3
        assert client.get("/tasks/999999").status_code == 404
