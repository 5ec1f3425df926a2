"""Tasks for tests/daemon/test_rate_limits.py: each appends "start TAG TIME" to the file it is
given (O_APPEND, one line), as its first act."""

import os
import time

from liteq import task


def stamp(path, tag):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"start {tag} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


@task(rate_limit="10/s", max_retries=0)
def limited(path, tag):
    stamp(path, tag)


@task(rate_limit="20/s", max_retries=0)
def twenty(path, tag):
    stamp(path, tag)


@task(rate_limit="2/s", max_retries=0, priority=5)
def slow_head(path, tag):
    stamp(path, tag)


@task(queue="emails", max_retries=0)
def email(path, tag):
    stamp(path, tag)


@task(max_retries=0)
def free(path, tag, seconds=0.0):
    stamp(path, tag)
    time.sleep(seconds)
