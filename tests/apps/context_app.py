"""Tasks for tests/api/test_task_context.py: current_task, liteq.Retry, retry filters, hooks.

Tasks and hooks append JSON lines to the file named by LITEQ_TEST_TRACE (set by the
test in the daemon's environment), with O_APPEND so lines never interleave.
"""

import asyncio
import json
import os
import time

import liteq
from liteq import Retry, current_task, task

FAST = dict(retry_delay=0.05, retry_backoff=1.0)


def trace(**fields):
    """Append one JSON line to the trace file."""
    fd = os.open(os.environ["LITEQ_TEST_TRACE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(dict(fields, at=time.time())) + "\n").encode())
    finally:
        os.close(fd)


def _context():
    c = current_task
    return dict(id=c.id, name=c.name, queue=c.queue, attempt=c.attempt,
                max_retries=c.max_retries, retries_left=c.retries_left,
                enqueued_at=c.enqueued_at, deadline=c.deadline, worker=c.worker)


@task(queue="ctx", max_retries=2, timeout=30, **FAST)
def introspect():
    trace(event="ran", **_context())
    if current_task.attempt < 2:
        raise RuntimeError("the first attempt fails")
    return current_task.attempt


@task(queue="ctx")
async def async_introspect():
    await asyncio.sleep(0)
    return [current_task.id, current_task.attempt, current_task.deadline]


@task(queue="ctx", max_retries=2, **FAST)
def asks_retry():
    trace(event="ran", **_context())
    raise Retry(delay=0.3, reason=f"rate limited on attempt {current_task.attempt}")


@task(queue="ctx", max_retries=3, retry_on=(ConnectionError,), **FAST)
def network(kind):
    raise (ConnectionError if kind == "connection" else ValueError)(f"{kind} trouble")


@task(queue="ctx", max_retries=3, no_retry_on=(ValueError,), **FAST)
def strict(kind):
    raise (ValueError if kind == "value" else KeyError)(f"{kind} trouble")


@task(queue="ctx", max_retries=0)
def hook_victim():
    return "fine"


@liteq.on_task_start
def _on_start(ctx):
    trace(event="hook.start", id=ctx.id, attempt=ctx.attempt)
    if ctx.name == "hook_victim":
        raise RuntimeError("a broken start hook")


@liteq.on_task_success
def _on_success(ctx, result):
    trace(event="hook.success", id=ctx.id, result=result)


@liteq.on_task_retry
def _on_retry(ctx, exc):
    trace(event="hook.retry", id=ctx.id, attempt=ctx.attempt, error=str(exc))


@liteq.on_task_failure
def _on_failure(ctx, exc):
    trace(event="hook.failure", id=ctx.id, attempt=ctx.attempt, error=type(exc).__name__)
