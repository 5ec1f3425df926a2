"""Tasks for tests/daemon/test_concurrency_limits.py: each appends its start and end stamps to
the file it is given (O_APPEND, one line each)."""

import os
import time

from liteq import task


def stamp(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def _work(path, tag, seconds):
    stamp(path, f"start {tag} {time.time():.6f}")
    time.sleep(seconds)
    stamp(path, f"end {tag} {time.time():.6f}")


@task(concurrency=2, max_retries=0)
def limited(path, tag, seconds=0.3):
    _work(path, tag, seconds)


@task(queue="emails", max_retries=0)
def email(path, tag, seconds=0.3):
    _work(path, tag, seconds)


@task(max_retries=0)
def free(path, tag, seconds=0.3):
    _work(path, tag, seconds)
