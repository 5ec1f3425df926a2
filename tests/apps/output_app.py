"""Tasks that write to stdout and stderr and log, for tests/test_task_output.py."""

import logging
import os
import subprocess
import sys

from liteq import task

log = logging.getLogger("output_app")


@task
def chatty(n, width=60):
    """Print n numbered lines (print, stderr and raw fd writes in turn)."""
    pad = "x" * width
    for i in range(n):
        if i % 3 == 0:
            print(f"chatty line {i} {pad}")
        elif i % 3 == 1:
            sys.stderr.write(f"chatty err {i} {pad}\n")
        else:
            os.write(1, f"chatty raw {i} {pad}\n".encode())
    return n


@task
def quick(i):
    return i


@task
def say(text):
    """One print, no newline at the end."""
    sys.stdout.write(text)
    return "said"


@task
def shell_echo(text):
    """A subprocess that inherits the task's stdout."""
    subprocess.run(["echo", text], check=True)


@task
def logs_things():
    log.info("info from a task")
    log.warning("careful: %s", "warned")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("it broke")


@task
def long_line(size):
    print("L" * size)
    print("after the long line")


@task
def flood(megabytes):
    """Write megabytes of short lines to stdout as fast as possible."""
    chunk = ("flood " + "y" * 57 + "\n").encode() * 16384  # 1 MiB
    for _ in range(megabytes):
        os.write(1, chunk)
    return megabytes


@task(max_retries=0)
def fails():
    raise ValueError("bad value in a task")
