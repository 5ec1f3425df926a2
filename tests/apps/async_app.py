"""Tasks for tests/daemon/test_async_concurrency.py: coroutine tasks that leave traces
(JSON lines appended to files whose paths come in as arguments), and a sync task."""

import asyncio
import json
import logging
import os
import time

import liteq
from liteq import current_task, task

FAST = dict(retry_delay=0.05, retry_backoff=1.0)
log = logging.getLogger("async_app")


def append(path, **fields):
    """Append one JSON line to `path` atomically (O_APPEND, one write)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(fields) + "\n").encode())
    finally:
        os.close(fd)


@task(**FAST)
async def nap(seconds, path):
    """Sleep on the loop; record the window and what current_task said before and after."""
    tid = current_task.id
    start = time.time()
    append(path, event="start", id=tid, pid=os.getpid(), at=start)
    await asyncio.sleep(seconds)
    append(path, event="end", id=tid, seen_after=current_task.id, pid=os.getpid(),
           start=start, at=time.time())
    return tid


@task(max_retries=3, **FAST)
async def boom(path):
    """Fails (not retried: max_retries is used up by the test's override)."""
    append(path, event="boom", id=current_task.id)
    await asyncio.sleep(0.05)
    raise ValueError("boom from a coroutine")


@task(max_retries=3, **FAST)
async def flaky(path):
    """Fails on its first attempt, succeeds on the next."""
    append(path, event="attempt", id=current_task.id, attempt=current_task.attempt)
    await asyncio.sleep(0.05)
    if current_task.attempt == 1:
        raise RuntimeError("first attempt fails")
    return current_task.attempt


@task(max_retries=0)
async def stubborn(path):
    """Ignores its cancellation and keeps going (the child must be killed)."""
    append(path, event="start", id=current_task.id, pid=os.getpid())
    for _ in range(600):
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            append(path, event="ignored", id=current_task.id)
    return "never"


@task(max_retries=0)
async def blocker(seconds, path):
    """Blocks the loop (time.sleep inside async def)."""
    append(path, event="start", id=current_task.id, pid=os.getpid())
    time.sleep(seconds)
    return "blocked"


@task(max_retries=0)
async def chatty(n):
    """Prints and logs lines, awaiting between them (lines of siblings interleave)."""
    for i in range(n):
        print(f"line {i} of task {current_task.id}")
        log.warning("record %d of task %d", i, current_task.id)
        await asyncio.sleep(0.01)
    return n


@task(**FAST)
def sync_step(seconds, path):
    """A plain function: records its window and pid."""
    start = time.time()
    append(path, event="sync_start", id=current_task.id, pid=os.getpid(), at=start)
    time.sleep(seconds)
    append(path, event="sync_end", id=current_task.id, pid=os.getpid(), start=start,
           at=time.time())
    return current_task.id


@task(max_retries=2, **FAST)
async def hold(path):
    """Its first attempt holds on (until the test kills the child); later ones return."""
    append(path, event="start", id=current_task.id, attempt=current_task.attempt,
           pid=os.getpid())
    if current_task.attempt == 1:
        await asyncio.sleep(120)
    return current_task.attempt


HOOK_TRACE = os.environ.get("ASYNC_APP_HOOK_TRACE")
if HOOK_TRACE:
    # Each hook records the task it was called for, and what current_task says then.
    @liteq.on_task_start
    def _started(ctx):
        append(HOOK_TRACE, hook="start", id=ctx.id, current=current_task.id)

    @liteq.on_task_success
    def _succeeded(ctx, result):
        append(HOOK_TRACE, hook="success", id=ctx.id, current=current_task.id)

    @liteq.on_task_retry
    def _retried(ctx, exc):
        append(HOOK_TRACE, hook="retry", id=ctx.id, error=str(exc))

    @liteq.on_task_failure
    def _failed(ctx, exc):
        append(HOOK_TRACE, hook="failure", id=ctx.id, error=str(exc))
