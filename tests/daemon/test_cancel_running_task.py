"""Cancelling a running task: cancel_task(id) reaches the daemon that
runs it (wake-up channel, else its poll), TaskCancelled is raised inside the task, the
child's tree is killed when it does not stop within the kill grace, and the task is
`cancelled`, never retried. On each backend, with real daemons and signals."""

import os

import psutil

import liteq

from support.processes import is_gone, read_lines, wait_for
from support.task_table import wait_status


def _started(path, timeout=10):
    wait_for(lambda: read_lines(path), timeout, f"nothing started ({path})")


def test_a_running_task_is_stopped_and_never_retried(daemons, app):
    d = daemons.start("--concurrency", "1")
    marker = daemons.path("slow.txt")
    tid = app.slow.delay(60, marker)          # max_retries=3
    _started(marker)
    child = d.worker_pids()
    assert liteq.cancel_task(tid) is True
    st = wait_status(tid, "cancelled", daemons=daemons)
    assert st["attempts"] == 1 and "TaskCancelled" in st["error"], st
    event = d.wait_event("task.cancelled", task_id=tid)
    assert event["how"] == "stopped"
    assert d.worker_pids() == child            # the child itself lived on
    assert wait_status(app.add.delay(1, 2), daemons=daemons)["result"] == 3
    assert d.events("task.retrying", task_id=tid) == []
    assert len(read_lines(marker)) == 1        # one attempt only
    assert liteq.cancel_task(tid) is False     # finished: nothing to cancel


def test_a_task_that_ignores_the_cancel_is_killed_after_the_grace(daemons, app):
    d = daemons.start("--concurrency", "1", "--kill-grace", "1")
    trace = daemons.path("swallow.txt")
    tid = app.swallow_cancel.delay(trace)
    _started(trace)
    pid = int(read_lines(trace)[0])
    assert liteq.cancel_task(tid)
    event = d.wait_event("task.cancelled", task_id=tid, timeout=15)
    assert event["how"].startswith("killed")
    wait_for(lambda: is_gone(pid), 10, "the child that ignored the cancel still runs")
    assert "caught" in read_lines(trace)       # TaskCancelled was raised inside it
    st = wait_status(tid, "cancelled", daemons=daemons)
    assert st["attempts"] == 1
    d.wait_children(1)                          # a fresh child took its place
    assert wait_status(app.add.delay(2, 2), daemons=daemons)["result"] == 4


def test_a_running_coroutine_is_cancelled(daemons, app):
    d = daemons.start("--concurrency", "1")
    marker = daemons.path("async.txt")
    tid = app.async_sleep.delay(60, marker)
    _started(marker)
    assert liteq.cancel_task(tid)
    assert d.wait_event("task.cancelled", task_id=tid)["how"] == "stopped"
    assert wait_status(tid, "cancelled", daemons=daemons)["attempts"] == 1


def test_a_queued_task_is_never_started(daemons, app):
    d = daemons.start("--concurrency", "1", "--prefetch", "2")
    first = daemons.path("first.txt")
    second = daemons.path("second.txt")
    running = app.slow.delay(1.5, first)
    _started(first)
    queued = app.slow.delay(0.1, second)        # prefetched behind the running one
    wait_for(lambda: liteq.get_task_status(queued)["status"] == "running", 10,
             "the second task was not handed to the child")
    assert liteq.cancel_task(queued)
    assert wait_status(running, daemons=daemons)["status"] == "done"
    d.wait_event("task.cancelled", task_id=queued)
    assert wait_status(queued, "cancelled", daemons=daemons)["status"] == "cancelled"
    assert read_lines(second) == []             # it never ran


def test_without_the_wake_up_channel_the_poll_finds_the_cancel(daemons, app):
    d = daemons.start("--concurrency", "1", "--poll-only", "--poll-interval", "0.5")
    marker = daemons.path("slow.txt")
    tid = app.slow.delay(60, marker)
    _started(marker)
    assert liteq.cancel_task(tid)
    assert d.wait_event("task.cancelled", task_id=tid, timeout=10)["how"] == "stopped"


def test_liteqctl_cancel(daemons, app):
    daemons.start("--concurrency", "1")
    marker = daemons.path("slow.txt")
    tid = app.slow.delay(60, marker)
    _started(marker)
    out = daemons.liteqctl("--db", daemons.db, "cancel", tid)
    assert out.returncode == 0 and f"cancelled task {tid}" in out.stdout, out.stderr
    wait_status(tid, "cancelled", daemons=daemons)
    again = daemons.liteqctl("--db", daemons.db, "cancel", tid)
    assert again.returncode == 1 and "cancelled: only pending or running" in again.stderr
