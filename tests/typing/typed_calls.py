"""Correct uses of the typed API: mypy --strict and pyright (strict) report nothing here
(tests/compat/test_typing.py). Never run; only type-checked."""

import asyncio
import json
from datetime import timedelta

from liteq import (Signature, TaskHandle, TaskStatus, chain, current_task, get_task_status,
                   on_task_failure, task, wait_for_task)
from liteq.context import TaskContext
from liteq.fastapi import TaskEnqueuer, enqueue_task
from liteq.monitoring import get_failed_tasks, get_queue_stats


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue="emails", max_retries=5, timeout=30)
def send_email(to: str, subject: str = "Hi") -> str:
    return f"sent to {to}"


@task(queue="fetch")
async def fetch(url: str) -> dict[str, int]:
    await asyncio.sleep(0)
    return {url: 200}


@task("reports", 3)  # liteq 0.2's positional options
def report(report_id: int) -> None:
    attempt: int = current_task.attempt
    print(current_task.id, report_id, attempt, current_task.parent_results())


@on_task_failure
def alert(ctx: TaskContext, exc: BaseException) -> None:
    print(ctx.name, exc)


def enqueue() -> None:
    handle: TaskHandle[int] = add.delay(1, 2)
    task_id: int = handle                     # still an int: stores, compares, JSON
    print(json.dumps({"task_id": handle}), handle == task_id, handle.id)
    total: int = handle.result(timeout=10)
    status = handle.status()
    if status is not None:                    # liteq 0.2's dict access, and typed attributes
        print(status["status"], status.get("result"), status.status, status.attempts)
    sent: str = send_email.delay("a@example.com").result()
    page: dict[str, int] = fetch.delay("https://example.com").result()
    later = send_email.apply_async(("b@example.com",), {"subject": "Later"}, countdown=60)
    checked = send_email.s("c@example.com", subject="Checked").apply_async(queue="urgent")
    handles: list[TaskHandle[str]] = send_email.map(["d@example.com", "e@example.com"])
    steps: list[TaskHandle[object]] = chain(add.s(1, 2), send_email.s("f@example.com"))
    again: TaskHandle[str] = send_email.handle(int(later))
    scheduled = report.schedule(timedelta(minutes=5), 7)
    direct: int = add(2, 3)                   # calling the task runs the function here
    coro = fetch("https://example.com")
    awaited: dict[str, int] = asyncio.run(coro)
    sig: Signature[int] = add.s(4, 5)
    row: TaskStatus | None = get_task_status(handle)
    done: TaskStatus = wait_for_task(scheduled, timeout=1)
    via_helper: TaskHandle[str] = enqueue_task(send_email, "g@example.com", _queue="urgent")
    background = TaskEnqueuer()
    added: TaskHandle[str] = background.add_task(send_email, "h@example.com")
    print(total, sent, page, checked, handles, steps, again, direct, awaited, sig, row, done,
          via_helper, added, get_failed_tasks(5), get_queue_stats())


async def enqueue_async() -> None:
    handle = await fetch.adelay("https://example.com")
    page: dict[str, int] = await handle.aresult(timeout=10)
    status: TaskStatus = await handle.await_()
    print(page, status.finished)
