"""Fair dispatch: a due task goes to an idle child whenever one exists (at start, after a
scale-up, after a child is replaced, with long and short tasks mixed), and a child never
starts a task it held longer than a frozen daemon may keep one.

Tasks that hold their child wait for a gate file the test creates, so "ran at the same
time" is shown by both having started before any gate opened, never by timing.
"""

import os
import signal
import time

import pytest

from liteq import backends

from support import APPS
from support.control_client import request
from support.daemon_helpers import load_app_module
from support.processes import read_lines, wait_for
from support.task_table import wait_all, wait_status

DISPATCH_APP = os.path.join(APPS,
                            "dispatch_app.py")


@pytest.fixture
def app(daemons):
    """tests/apps/dispatch_app.py loaded in the test process; daemons run it too."""
    daemons.app = DISPATCH_APP
    return load_app_module(DISPATCH_APP)


def _starts(log):
    """{tag: pid} of the tasks that started, from their log lines."""
    out = {}
    for line in read_lines(log):
        tag, what, pid = line.split()
        if what == "start":
            out.setdefault(tag, int(pid))
    return out


def _wait_started(log, tags, daemons, timeout=20):
    """Wait until every tag has started; returns {tag: pid}."""
    return wait_for(lambda: (lambda s: s if set(tags) <= set(s) else None)(_starts(log)),
                    timeout, lambda: f"not all of {tags} started: {_starts(log)}\n"
                                     f"{daemons.dump()}")


def _open(gate):
    with open(gate, "w"):
        pass


def test_a_backlog_at_start_runs_on_two_children_at_once(daemons, app):
    log, gate = daemons.path("log.txt"), daemons.path("gate")
    ids = [app.held.delay(gate, log, tag) for tag in ("a", "b")]
    daemons.start("--concurrency", "2")
    try:
        # Both started while the gate is shut: their runs overlap, on two children.
        pids = _wait_started(log, ["a", "b"], daemons)
        assert pids["a"] != pids["b"]
    finally:
        _open(gate)
    rows = wait_all(ids, daemons=daemons)
    assert [rows[t]["status"] for t in ids] == ["done", "done"]


def test_after_a_scale_up_the_new_child_takes_the_waiting_task(daemons, app):
    log, gate = daemons.path("log.txt"), daemons.path("gate")
    daemons.start("--concurrency", "1")
    try:
        first = app.held.delay(gate, log, "a")
        _wait_started(log, ["a"], daemons)
        second = app.held.delay(gate, log, "b")
        out = daemons.liteqctl("scale", "2")
        assert out.returncode == 0, out.stderr
        pids = _wait_started(log, ["a", "b"], daemons)
        assert pids["a"] != pids["b"]
    finally:
        _open(gate)
    assert wait_status(second, daemons=daemons)["status"] == "done"
    assert wait_status(first, daemons=daemons)["status"] == "done"


@pytest.mark.parametrize("how", ["crash", "timeout", "recycle"])
def test_a_replaced_child_takes_the_waiting_task(daemons, app, how):
    """One child is held; the other is replaced (it crashed, overran its limit, or was
    recycled after its task) while a task waits: the replacement starts that task, not
    the held child after its long task."""
    log = daemons.path("log.txt")
    gate_a, gate_b, gate_c = (daemons.path(f"gate-{x}") for x in "abc")
    extra = ["--max-tasks-per-child", "1"] if how == "recycle" else []
    d = daemons.start("--concurrency", "2", *extra)
    try:
        app.held.delay(gate_a, log, "a")
        if how == "crash":
            app.crash_at.delay(gate_c, log, "c")
        elif how == "timeout":
            app.overrun.delay(log, "c")
        else:
            app.held.delay(gate_c, log, "c")
        busy = _wait_started(log, ["a", "c"], daemons)
        waiting = app.held.delay(gate_b, log, "b")
        if how != "timeout":
            _open(gate_c)  # the child of c crashes, or finishes and is recycled
        pids = _wait_started(log, ["b"], daemons)
        assert pids["b"] not in (busy["a"], busy["c"])
        assert "a end" not in " ".join(read_lines(log))
    finally:
        for gate in (gate_a, gate_b, gate_c):
            _open(gate)
    assert wait_status(waiting, daemons=daemons)["status"] == "done"
    d.wait_event("child.exited")


def test_short_tasks_queued_behind_a_long_one_start_on_the_free_child(daemons, app):
    """While tasks are short, children get some ahead; one that turns out long gives back
    what it holds unstarted, so the short ones all run on the other child meanwhile."""
    log, gate = daemons.path("log.txt"), daemons.path("gate")
    daemons.start("--concurrency", "2")
    try:
        warm = app.note.starmap([(daemons.path("warm.txt"), f"w{i}") for i in range(300)])
        wait_all(warm, daemons=daemons)
        long_id = app.held.delay(gate, log, "long")
        quick = app.note.starmap([(log, f"q{i}") for i in range(60)])
        rows = wait_all(quick, timeout=30, daemons=daemons)
        assert {rows[t]["status"] for t in quick} == {"done"}
        assert "long end" not in " ".join(read_lines(log))
        long_pid = _starts(log)["long"]
        assert long_pid not in {pid for tag, pid in _starts(log).items() if tag != "long"}
    finally:
        _open(gate)
    assert wait_status(long_id, daemons=daemons)["status"] == "done"
    assert {rows[t]["attempts"] for t in quick} == {1}


def test_a_frozen_daemon_never_starts_a_task_it_held_past_stale_after(daemons, app):
    """A task queued in a child of a daemon that is then frozen past stale-after is
    reclaimed and run by another daemon; when the first resumes, its child hands the task
    back instead of running it a second time."""
    log, gate = daemons.path("log.txt"), daemons.path("gate")
    a_sock = daemons.path("a.sock")
    # --prefetch 2: the second task waits in the child's hands behind the first.
    a = daemons.start("--concurrency", "1", "--prefetch", "2", "--socket", a_sock)
    first = app.held.delay(gate, log, "a")
    _wait_started(log, ["a"], daemons)
    queued = app.note.delay(log, "q")
    wait_status(queued, "running", timeout=10, daemons=daemons)
    group = [a.ps] + a.children()
    for p in group:
        p.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        # A daemon of this host is judged by its pid, so it is never reclaimed while it
        # is only frozen: reclaim as a daemon on another host would once A's heartbeat
        # stopped, and keep A frozen past its stale-after (2 s) as such a host would.
        store = backends.get_backend()
        owner = store.get_task(queued)["worker_id"]
        assert sorted(store.reclaim(dead_worker_ids=[owner])) == \
            sorted([(first, "pending"), (queued, "pending")])
        daemons.start("--concurrency", "2", "--socket", daemons.path("b.sock"))
        assert wait_status(queued, "done", timeout=30, daemons=daemons)["status"] == "done"
        while time.monotonic() - frozen_at < 3.0:
            time.sleep(0.1)
        _open(gate)
        assert wait_status(first, "done", timeout=30, daemons=daemons)["status"] == "done"
    finally:
        _open(gate)
        for p in group:
            p.send_signal(signal.SIGCONT)
    a.wait_event("task.outcome_refused", task_id=first, timeout=15)

    def a_idle():
        children = request(a_sock, "status")["pools"][0]["children"]
        return all(c["task_id"] is None for c in children)
    wait_for(a_idle, 15, lambda: f"daemon A never went idle\n{daemons.dump()}")
    runs = [line for line in read_lines(log) if line.startswith("q ")]
    assert len(runs) == 1, runs
    assert a.events("task.started", task_id=queued) == [] or a.alive()


def test_two_daemons_share_a_backlog(daemons, app):
    """A daemon claims what its idle children can start, not more: the second daemon on
    the queue gets the task the first cannot start yet."""
    log, gate = daemons.path("log.txt"), daemons.path("gate")
    ids = [app.held.delay(gate, log, tag) for tag in ("a", "b")]
    a = daemons.start("--concurrency", "1", "--socket", daemons.path("a.sock"))
    try:
        first = _wait_started(log, ["a"], daemons)
        b = daemons.start("--concurrency", "1", "--socket", daemons.path("b.sock"))
        pids = _wait_started(log, ["a", "b"], daemons)
        assert pids["a"] in a.worker_pids() and pids["b"] in b.worker_pids()
        assert first["a"] == pids["a"]
    finally:
        _open(gate)
    rows = wait_all(ids, daemons=daemons)
    assert [rows[t]["status"] for t in ids] == ["done", "done"]
