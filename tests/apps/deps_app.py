"""Tasks for tests/api/test_task_dependencies.py: each run appends "id start end" to the file
named by LITEQ_TEST_TRACE (O_APPEND, so lines never interleave)."""

import os
import time

from liteq import current_task, task


def _record(start):
    line = f"{current_task.id} {start!r} {time.time()!r}\n"
    fd = os.open(os.environ["LITEQ_TEST_TRACE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task(queue="deps")
def step(value=None):
    """Record the run; return `value`."""
    start = time.time()
    _record(start)
    return value


@task(queue="deps", max_retries=0)
def explode():
    """Record the run, then fail (no retries)."""
    _record(time.time())
    raise ValueError("explode always fails")


@task(queue="deps")
def gather():
    """Return the parents' results, as current_task.parent_results() reads them."""
    start = time.time()
    results = current_task.parent_results()
    _record(start)
    return results
