"""Tasks that write to stdout and stderr and log with `logging` (tests/daemon/test_task_output.py).

Every line a task writes names its own task id, so a test can check that the daemon
attributes each line to the task that wrote it.
"""

import logging
import os
import subprocess
import sys

from liteq import current_task, task

log = logging.getLogger("output_app.tasks")


@task
def chatty(lines):
    """Print `lines` lines naming this task, a line on stderr, one from a subprocess, and a
    last line without its newline."""
    me = current_task.id
    for i in range(lines):
        print(f"chatty {me} line {i}")
    sys.stderr.write(f"chatty {me} on stderr\n")
    subprocess.run(["echo", f"chatty {me} from a subprocess"], check=True)
    print(f"chatty {me} last", end="")
    return lines


@task
def quick(n):
    return n


@task
def logs_records():
    """Log at three levels, one with an exception, and raise a Python warning."""
    me = current_task.id
    log.info("info from %s", me)
    log.warning("warning from %s", me)
    try:
        {}["missing"]
    except KeyError:
        log.exception("error from %s", me)
    import warnings
    warnings.warn(f"deprecated in {me}", UserWarning)
    return me


@task
def long_line(size):
    """Print one line of `size` bytes (then one short line)."""
    sys.stdout.write("L" * size + "\n")
    print("after the long line")
    return size


@task(queue="flood", timeout=600)
def flood(megabytes, flag):
    """Write one 8 MB line with no newline to stderr, then 1000-byte lines to stdout
    until the file `flag` exists and at least `megabytes` MB are written."""
    os.write(2, b"g" * (8 << 20))
    block = ("f" * 999 + "\n").encode() * 64
    written = 0
    while written < megabytes * 1_000_000 or not os.path.exists(flag):
        written += os.write(1, block)
    return written


@task(max_retries=1, retry_delay=0.05, retry_backoff=1.0)
def broken(word):
    """Raise with a traceback that names this function."""
    return _deep(word)


def _deep(word):
    raise RuntimeError(f"broken on {word}")
