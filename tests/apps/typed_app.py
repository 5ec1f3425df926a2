"""Annotated tasks for tests/test_handle.py (queue "typed")."""

import asyncio

from liteq import task


@task(queue="typed")
def add(a: int, b: int) -> int:
    """The sum."""
    return a + b


@task(queue="typed")
async def fetch(url: str) -> dict[str, int]:
    """A coroutine task: its handle's result is the awaited dict."""
    await asyncio.sleep(0)
    return {url: len(url)}


@task(queue="typed", max_retries=0)
def explode(why: str) -> int:
    """Always fails, once."""
    raise ValueError(f"explode: {why}")
