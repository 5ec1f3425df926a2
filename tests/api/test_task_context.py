"""What a running task knows and decides: current_task,
liteq.Retry, retry_on / no_retry_on, and the task hooks. Real daemons, on each backend."""

import json
import os
import time

import psutil
import pytest

import liteq
from liteq import LiteQError, current_task

from support import APPS
from support.daemon_helpers import load_app_module
from support.processes import read_lines, wait_for
from support.task_table import wait_status

APP = os.path.join(APPS, "context_app.py")


@pytest.fixture
def ctx_app(daemons, monkeypatch):
    trace = daemons.path("trace.jsonl")
    monkeypatch.setenv("LITEQ_TEST_TRACE", trace)
    d = daemons.start("--concurrency", "2", "--queues", "ctx", app=APP,
                      env={"LITEQ_TEST_TRACE": trace})
    return load_app_module(APP), d, trace


def _trace(path, **match):
    rows = [json.loads(line) for line in read_lines(path)]
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def test_current_task_tells_a_task_about_itself(ctx_app, daemons):
    app, d, trace = ctx_app
    before = time.time()
    tid = app.introspect.delay()
    st = wait_status(tid, daemons=daemons)
    assert st["status"] == "done" and st["result"] == 2, st
    runs = _trace(trace, event="ran", id=tid)
    assert [r["attempt"] for r in runs] == [1, 2]
    first, second = runs
    assert (first["name"], first["queue"], first["max_retries"]) == ("introspect", "ctx", 2)
    assert (first["retries_left"], second["retries_left"]) == (2, 1)
    assert before - 1 <= first["enqueued_at"] <= first["at"]
    assert first["enqueued_at"] == second["enqueued_at"]
    assert first["deadline"] == pytest.approx(first["at"] + 30, abs=2)
    host, pid = first["worker"].rsplit(":", 1)
    assert host == os.uname().nodename or host  # the child's host
    assert int(pid) in d.worker_pids() or not psutil.pid_exists(int(pid))
    # A coroutine task sees it too.
    st = wait_status(app.async_introspect.delay(), daemons=daemons)
    assert st["result"][:2] == [st["id"], 1] and st["result"][2] is None


def test_current_task_outside_a_task_is_a_clear_error():
    assert not current_task
    with pytest.raises(LiteQError, match="no task is running here"):
        current_task.attempt


def test_retry_asks_again_within_max_retries_and_records_the_reason(ctx_app, daemons):
    app, d, trace = ctx_app
    tid = app.asks_retry.delay()
    st = wait_status(tid, timeout=20, daemons=daemons)
    assert st["status"] == "failed" and st["attempts"] == 3, st   # max_retries=2
    assert "Retry: rate limited on attempt 3" in st["error"]
    runs = _trace(trace, event="ran", id=tid)
    gaps = [b["at"] - a["at"] for a, b in zip(runs, runs[1:])]
    assert len(gaps) == 2 and all(g >= 0.25 for g in gaps), gaps  # its delay, not 0.05 s
    assert [e["attempt"] for e in d.events("task.retrying", task_id=tid)] == [1, 2]


def test_retry_filters_decide_which_errors_are_retried(ctx_app, daemons):
    app, d, trace = ctx_app
    retried = app.network.delay("connection")
    not_listed = app.network.delay("value")
    excluded = app.strict.delay("value")
    other = app.strict.delay("key")
    rows = {t: wait_status(t, timeout=20, daemons=daemons)
            for t in (retried, not_listed, excluded, other)}
    assert rows[retried]["attempts"] == 4 and rows[other]["attempts"] == 4
    assert rows[not_listed]["attempts"] == 1 and rows[excluded]["attempts"] == 1
    assert "not retried: ValueError is not in retry_on (ConnectionError)" in \
        rows[not_listed]["error"]
    assert "not retried: ValueError is in no_retry_on (ValueError)" in rows[excluded]["error"]
    assert all(r["status"] == "failed" for r in rows.values())


def test_hooks_run_around_tasks_and_a_broken_hook_changes_nothing(ctx_app, daemons):
    app, d, trace = ctx_app
    tid = app.introspect.delay()
    victim = app.hook_victim.delay()
    assert wait_status(tid, daemons=daemons)["status"] == "done"
    st = wait_status(victim, daemons=daemons)
    assert st["status"] == "done" and st["result"] == "fine", st
    assert [(r["event"], r["attempt"]) for r in _trace(trace, id=tid)
            if r["event"].startswith("hook.") and "attempt" in r] == [
        ("hook.start", 1), ("hook.retry", 1), ("hook.start", 2)]
    assert _trace(trace, event="hook.success", id=tid)[0]["result"] == 2
    failed = d.wait_event("hook.failed", task_id=victim)
    assert failed["kind"] == "start" and "a broken start hook" in failed["error"]
    assert _trace(trace, event="hook.success", id=victim)  # the other hooks still ran
    spent = app.strict.delay("value")
    wait_status(spent, daemons=daemons)
    wait_for(lambda: _trace(trace, event="hook.failure", id=spent), 10, "no failure hook")
    assert _trace(trace, event="hook.failure", id=spent)[0]["error"] == "ValueError"


def test_task_options_are_checked_at_the_decorator(clean_registry):
    with pytest.raises(TypeError, match="retry_on takes exception classes"):
        liteq.task(retry_on=("ConnectionError",))
    with pytest.raises(TypeError, match="unknown task option"):
        liteq.task(retries=3)
    with pytest.raises(ValueError, match="Retry delay"):
        liteq.Retry(delay=-1)
