"""Many coroutine tasks per child (`liteqd --async-concurrency N`), on each backend with
real daemons: coroutines overlap in one child; each keeps its own time limit, cancel,
retry, result and current_task; a blocking coroutine is named in the log; sync tasks
still run alone; a killed child's tasks all follow the crash rules.

Overlap is shown by recorded timestamps (every task started before any finished),
never by how long something took.
"""

import json
import os
import signal

import pytest

import liteq

from support import APPS
from support.daemon_helpers import load_app_module
from support.processes import read_lines, wait_for
from support.task_table import wait_all, wait_status

ASYNC_APP = os.path.join(APPS, "async_app.py")


@pytest.fixture
def app(daemons):
    """tests/apps/async_app.py loaded in the test process; daemons run it too."""
    daemons.app = ASYNC_APP
    return load_app_module(ASYNC_APP)


def _trace(path):
    return [json.loads(line) for line in read_lines(path)]


def _events(path, event):
    return [t for t in _trace(path) if t["event"] == event]


def _wait_started(path, n, daemons, timeout=20):
    return wait_for(lambda: (lambda s: s if len(s) >= n else None)(_events(path, "start")),
                    timeout, lambda: f"fewer than {n} started: {_trace(path)}\n"
                                     f"{daemons.dump()}")


def test_coroutines_overlap_in_one_child(daemons, app):
    trace = daemons.path("trace")
    ids = [app.nap.delay(0.5, trace) for _ in range(20)]
    d = daemons.start("--concurrency", "1", "--async-concurrency", "20")
    rows = wait_all(ids, timeout=30, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    ends = _events(trace, "end")
    assert len(ends) == 20
    assert len({e["pid"] for e in ends}) == 1                 # one child ran them all
    # Every task started before any finished: their windows all overlap.
    assert max(e["start"] for e in ends) < min(e["at"] for e in ends)
    assert max(r["started_at"] for r in rows.values()) < min(
        r["finished_at"] for r in rows.values())
    # current_task is per task: after its await each one still sees its own id.
    assert all(e["seen_after"] == e["id"] for e in ends)
    assert sorted(r["result"] for r in rows.values()) == sorted(str(i) for i in ids)
    assert len(d.events("task.started")) == 20


def test_a_timed_out_coroutine_is_cancelled_alone(daemons, app):
    trace = daemons.path("trace")
    d = daemons.start("--concurrency", "1", "--async-concurrency", "10")
    (child,) = d.wait_children(1)
    late = app.nap.apply_async((60, trace), timeout=1, max_retries=0)
    others = [app.nap.delay(2, trace) for _ in range(4)]
    _wait_started(trace, 5, daemons)
    st = wait_status(late, "failed", timeout=20, daemons=daemons)
    assert "TaskTimeout: timed out after 1 s" in st["error"], st
    rows = wait_all(others, timeout=20, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    # The same child went on: only the coroutine was cancelled.
    assert d.worker_pids() == {child}
    assert d.events("child.exited") == []
    assert {e["pid"] for e in _events(trace, "end")} == {child}


def test_a_coroutine_that_ignores_its_time_limit_ends_the_child(daemons, app):
    trace = daemons.path("trace")
    d = daemons.start("--concurrency", "1", "--async-concurrency", "10", "--kill-grace", "1")
    (child,) = d.wait_children(1)
    stubborn = app.stubborn.apply_async((trace,), timeout=1)
    sibling = app.nap.delay(30, trace)
    wait_for(lambda: len(_events(trace, "start")) >= 2, 20, lambda: daemons.dump())
    st = wait_status(stubborn, "failed", timeout=20, daemons=daemons)
    assert "TaskTimeout" in st["error"] and "killed" in st["error"], st
    assert _events(trace, "ignored")                  # it was cancelled, and ignored it
    d.wait_event("child.exited", pid=child, reason="timeout")
    # The sibling did nothing wrong: it went back to pending untouched and runs again.
    wait_for(lambda: len([e for e in _events(trace, "start") if e["id"] == sibling]) >= 2,
             20, lambda: daemons.dump())
    assert liteq.get_task_status(sibling)["attempts"] == 1


def test_cancel_of_one_running_coroutine(daemons, app):
    trace = daemons.path("trace")
    d = daemons.start("--concurrency", "1", "--async-concurrency", "10")
    (child,) = d.wait_children(1)
    victim = app.nap.delay(60, trace)
    others = [app.nap.delay(2, trace) for _ in range(3)]
    _wait_started(trace, 4, daemons)
    assert liteq.cancel_task(victim) is True
    st = wait_status(victim, "cancelled", daemons=daemons)
    assert st["attempts"] == 1
    assert d.wait_event("task.cancelled", task_id=victim)["how"] == "stopped"
    rows = wait_all(others, timeout=20, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    assert d.worker_pids() == {child}
    assert not [e for e in _events(trace, "end") if e["id"] == victim]


def test_retry_and_failure_of_one_leave_the_siblings_alone(daemons, app):
    trace = daemons.path("trace")
    daemons.start("--concurrency", "1", "--async-concurrency", "10")
    flaky = app.flaky.delay(trace)
    boom = app.boom.apply_async((trace,), max_retries=0)
    naps = [app.nap.delay(0.5, trace) for _ in range(5)]
    rows = wait_all([flaky, boom] + naps, timeout=30, daemons=daemons)
    assert rows[flaky]["status"] == "done" and rows[flaky]["attempts"] == 2
    assert rows[flaky]["result"] == "2"
    assert rows[boom]["status"] == "failed"
    assert "ValueError: boom from a coroutine" in rows[boom]["error"]
    assert all(rows[i]["status"] == "done" for i in naps)


def test_hooks_run_for_each_coroutine_with_its_own_context(daemons, app):
    trace, hooks = daemons.path("trace"), daemons.path("hooks")
    naps = [app.nap.delay(0.3, trace) for _ in range(5)]
    flaky = app.flaky.delay(trace)
    boom = app.boom.apply_async((trace,), max_retries=0)
    daemons.start("--concurrency", "1", "--async-concurrency", "10",
                  env={"ASYNC_APP_HOOK_TRACE": hooks})
    wait_all(naps + [flaky, boom], timeout=30, daemons=daemons)
    seen = [json.loads(line) for line in read_lines(hooks)]
    by_id = {}
    for h in seen:
        by_id.setdefault(h["id"], []).append(h["hook"])
        if "current" in h:
            assert h["current"] == h["id"], h     # current_task is the hook's own task
    for tid in naps:
        assert by_id[tid] == ["start", "success"], (tid, by_id)
    assert by_id[flaky] == ["start", "retry", "start", "success"], by_id[flaky]
    assert by_id[boom] == ["start", "failure"], by_id[boom]
    # The starts overlapped: every nap's start hook ran before any nap succeeded.
    order = [(h["hook"], h["id"]) for h in seen if h["id"] in naps]
    assert max(order.index(("start", t)) for t in naps) < min(
        order.index(("success", t)) for t in naps)


def test_a_blocking_coroutine_is_logged_with_its_task_id(daemons, app):
    trace = daemons.path("trace")
    d = daemons.start("--concurrency", "1", "--async-concurrency", "5",
                      "--async-block-threshold", "0.3")
    sibling = app.nap.delay(0.2, trace)
    blocker = app.blocker.delay(1.5, trace)
    event = d.wait_event("task.loop_blocked", task_id=blocker, timeout=20)
    assert event["name"] == "blocker" and event["threshold_s"] == 0.3
    assert "async_app.py" in event["where"]
    rows = wait_all([sibling, blocker], timeout=20, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values())
    assert d.events("task.loop_blocked", task_id=sibling) == []


def test_sync_tasks_still_run_alone(daemons, app):
    trace = daemons.path("trace")
    ids = []
    for i in range(12):
        ids.append(app.sync_step.delay(0.2, trace) if i % 3 == 0 else
                   app.nap.delay(0.3, trace))
    daemons.start("--concurrency", "1", "--async-concurrency", "10")
    rows = wait_all(ids, timeout=40, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    windows = [(e["start"], e["at"], "sync" if e["event"] == "sync_end" else "async")
               for e in _trace(trace) if e["event"] in ("end", "sync_end")]
    assert len(windows) == 12
    for s, e, kind in windows:
        if kind != "sync":
            continue
        overlapping = [w for w in windows if w[0] < e and s < w[1] and w[:2] != (s, e)]
        assert overlapping == [], (s, e, overlapping)
    # ... while the coroutines did overlap each other.
    naps = [w for w in windows if w[2] == "async"]
    assert any(a[0] < b[1] and b[0] < a[1] for a in naps for b in naps if a != b)


def test_killing_the_child_retries_every_task_it_ran(daemons, app):
    trace = daemons.path("trace")
    d = daemons.start("--concurrency", "1", "--async-concurrency", "10")
    (child,) = d.wait_children(1)
    ids = [app.hold.delay(trace) for _ in range(6)]
    _wait_started(trace, 6, daemons)
    os.kill(child, signal.SIGKILL)
    rows = wait_all(ids, timeout=30, daemons=daemons)
    assert all(r["status"] == "done" and r["attempts"] == 2 for r in rows.values()), rows
    for tid in ids:
        (retry,) = d.events("task.retrying", task_id=tid)
        assert "ChildDied" in retry["error"] and "SIGKILL" in retry["error"]


def test_output_is_credited_to_the_coroutine_that_wrote_it(daemons, app):
    d = daemons.start("--concurrency", "1", "--async-concurrency", "10")
    ids = [app.chatty.delay(5) for _ in range(3)]
    rows = wait_all(ids, timeout=20, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values())

    def credited():
        lines = [e for e in d.events("task.output") if e["text"].startswith("line ")]
        records = [e for e in d.events("task.log") if e["message"].startswith("record ")]
        return (lines, records) if len(lines) == 15 and len(records) == 15 else None

    lines, records = wait_for(credited, 10, lambda: d.dump())
    for e in lines:
        assert e["text"].endswith(f"of task {e['task_id']}") and e["name"] == "chatty", e
    for e in records:
        assert e["message"].endswith(f"of task {e['task_id']}") and e["name"] == "chatty", e


def test_claims_fill_each_child_to_n(daemons, app):
    trace = daemons.path("trace")
    d = daemons.start("--concurrency", "2", "--async-concurrency", "8")
    ids = [app.nap.delay(1.5, trace) for _ in range(16)]
    # 16 tasks, 2 children of 8 slots: all start at once, 8 on each.
    starts = _wait_started(trace, 16, daemons)
    per_pid = {}
    for s in starts:
        per_pid[s["pid"]] = per_pid.get(s["pid"], 0) + 1
    assert sorted(per_pid.values()) == [8, 8], per_pid
    rows = wait_all(ids, timeout=30, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values())
    assert len(d.worker_pids()) == 2


def test_a_pool_of_its_own_sets_its_async_concurrency(daemons, app):
    """`--pool NAME:QUEUES:SIZE:ASYNC` wins over LITEQ_ASYNC_CONCURRENCY for its pool."""
    trace = daemons.path("trace")
    ids = [app.nap.delay(0.5, trace) for _ in range(6)]
    d = daemons.start("--pool", "fetch:default:1:6", env={"LITEQ_ASYNC_CONCURRENCY": "2"})
    rows = wait_all(ids, timeout=30, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    ends = _events(trace, "end")
    assert max(e["start"] for e in ends) < min(e["at"] for e in ends)   # all 6 at once
    from liteq import control
    from liteqd.ctl import render_status
    st = control.status(include_queues=False)
    (pool,) = st["pools"]
    assert pool["name"] == "fetch" and pool["async_concurrency"] == 6
    assert "pool fetch: 1/1 children, up to 6 coroutines each" in render_status(st)
    assert len(d.events("task.succeeded")) == 6


@pytest.mark.parametrize("argv, env, expected", [
    ([], {}, (1, None)),
    ([], {"LITEQ_ASYNC_CONCURRENCY": "50"}, (50, None)),
    (["--async-concurrency", "20"], {"LITEQ_ASYNC_CONCURRENCY": "50"}, (20, None)),
    (["--pool", "io:io:2:100"], {}, (1, 100)),
    (["--pool", "io:io:2"], {"LITEQ_ASYNC_CONCURRENCY": "8"}, (8, None)),
])
def test_the_settings(argv, env, expected):
    from liteqd.config import build_parser, resolve
    cfg = resolve(build_parser().parse_args(["--app", "x.py", *argv]), env)
    assert (cfg.async_concurrency, cfg.pools[-1].async_concurrency) == expected
    assert cfg.async_block_threshold == 0.5


@pytest.mark.parametrize("argv, env, words", [
    (["--async-concurrency", "0"], {}, "--async-concurrency must be from 1 to"),
    ([], {"LITEQ_ASYNC_CONCURRENCY": "many"}, "LITEQ_ASYNC_CONCURRENCY must be a whole"),
    (["--pool", "io:io:2:lots"], {}, "pool 'io' async concurrency must be a whole number"),
    (["--pool", "io:io:2:0"], {}, "pool 'io' async concurrency must be from 1 to"),
    (["--async-block-threshold", "-1"], {}, "--async-block-threshold must be >= 0"),
])
def test_bad_settings_are_named(argv, env, words):
    from liteq.errors import ConfigError
    from liteqd.config import build_parser, resolve
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        resolve(build_parser().parse_args(["--app", "x.py", *argv]), env)
