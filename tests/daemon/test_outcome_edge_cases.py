"""Hardening found by an adversarial pass: big arguments run, errors that no
retry can fix fail at once, outcomes the database refuses are not reported as done, and
processes a task leaves behind do not outlive a graceful stop."""

import os
import signal
import time

import psutil

from liteq import backends
from liteq.serialization import encode_payload

from support.daemon_helpers import APP
from support.processes import is_gone, wait_for
from support.task_table import put_task, wait_all, wait_status

MB = 1024 * 1024


def test_arguments_from_a_kilobyte_to_near_the_limit_run(daemons, app):
    """A message far bigger than the socket buffer reaches the child whole, however long
    the child takes to read it: the send gives up only on a child that takes nothing."""
    d = daemons.start("--concurrency", "1", "--prefetch", "1")
    sizes = [1024, MB, 15 * MB + MB // 2]
    ids = [app.add.delay("x" * n, "!") for n in sizes]
    rows = wait_all(ids, timeout=60, daemons=daemons)
    for n, tid in zip(sizes, ids):
        row = rows[tid]
        assert row["status"] == "done", (n, row["error"])
        assert row["attempts"] == 1
    assert backends.get_backend().get_task(ids[-1])["result"] == '"' + "x" * sizes[-1] + '!"'
    assert d.events("child.exited") == []


def test_a_big_argument_waits_behind_a_running_task_without_harm(daemons, app):
    """The child reads its next (prefetched) task only after the running one: the
    supervisor must neither block on it nor take the wait for a wedged child."""
    marker = daemons.path("started.txt")
    d = daemons.start("--concurrency", "1", "--prefetch", "2")
    running = app.slow.delay(2.5, marker)
    wait_for(lambda: os.path.exists(marker), 10, "the first task never started")
    big = app.add.delay("y" * (12 * MB), "!")
    quick = app.add.delay(1, 2)
    rows = wait_all([running, big, quick], timeout=60, daemons=daemons)
    assert [rows[t]["status"] for t in (running, big, quick)] == ["done"] * 3, rows
    assert [rows[t]["attempts"] for t in (running, big, quick)] == [1, 1, 1]
    assert d.events("child.exited") == []


def test_errors_that_no_retry_can_fix_fail_at_once(daemons, app):
    d = daemons.start("--concurrency", "1")
    store = backends.get_backend()
    cases = {
        "unknown task": put_task(store, "no_such_task",
                                 encode_payload("no_such_task", [1], {}), max_retries=3),
        "bad payload": put_task(store, "add", "{this is not json", max_retries=3),
        "arguments": put_task(store, "add", encode_payload("add", [1], {"c": 3}),
                              max_retries=3),
    }
    for label, tid in cases.items():
        st = wait_status(tid, daemons=daemons)
        assert st["status"] == "failed", (label, st)
        assert st["attempts"] == 1, (label, st)
        assert "not retried" in st["error"], (label, st["error"])
        assert d.events("task.retrying", task_id=tid) == [], label
    assert wait_status(app.add.delay(2, 3), daemons=daemons)["result"] == 5


def test_a_frozen_daemon_reports_its_refused_outcome_as_refused(daemons, app):
    """A frozen daemon loses its task (as to a daemon on another host that saw its
    heartbeat stop); when it resumes, the database refuses its late outcome, and it logs
    and counts a refusal, not a success."""
    marker = daemons.path("started.txt")
    a = daemons.start("--concurrency", "1", "--socket", daemons.path("a.sock"))
    tid = app.slow.delay(1.5, marker)
    wait_for(lambda: os.path.exists(marker), 10, "the task never started on daemon A")
    group = [a.ps] + a.children()
    for p in group:
        p.send_signal(signal.SIGSTOP)
    try:
        # A daemon of this host judges A by its pid, which still runs; a daemon on
        # another host would reclaim A's task once its heartbeat stopped, as here.
        store = backends.get_backend()
        owner = store.get_task(tid)["worker_id"]
        assert store.reclaim(dead_worker_ids=[owner]) == [(tid, "pending")]
        daemons.start("--concurrency", "1", "--socket", daemons.path("b.sock"))
        st = wait_status(tid, "done", timeout=20, daemons=daemons)
        assert st["worker_id"] is None or not st["worker_id"].startswith(a.label)
    finally:
        for p in group:
            p.send_signal(signal.SIGCONT)
    refused = a.wait_event("task.outcome_refused", task_id=tid, timeout=15)
    assert refused["outcome"] == "succeeded"
    assert "reclaim" in refused["reason"] or "no longer running" in refused["reason"]
    assert a.events("task.succeeded", task_id=tid) == []
    assert a.alive()
    a.stop()
    stopped = a.events("daemon.stopped")[-1]
    assert stopped["tasks_done"] == 0
    assert backends.get_backend().get_task(tid)["status"] == "done"


def test_a_graceful_stop_ends_what_a_task_left_running(daemons, app):
    d = daemons.start("--concurrency", "1")
    pidfile = daemons.path("helper.pid")
    tid = app.daemonize_helper.delay(pidfile)
    assert wait_status(tid, daemons=daemons)["status"] == "done"
    helper = psutil.Process(int(open(pidfile).read()))
    assert helper.is_running() and helper.name() == "sleep"
    assert d.stop() == 0
    wait_for(lambda: is_gone(helper), 10, "the task's leftover `sleep` outlived the daemon")
    killed = d.events("child.leftover_killed")
    assert [e["pid"] for e in killed] == [helper.pid]
    assert killed[0]["signal"] == "SIGTERM"
