"""Wake-ups: producers nudge the daemon, and nothing waits for the fallback poll.

The daemon runs with --poll-interval 30, so a task that depended on the poll
would wait about 30 s; every wait below is far shorter than that.
"""

import json
import os
import subprocess
import sys
import time

import pytest

import liteq
from liteq import wait_for_task
from liteq.launcher import start_daemon

from support import REPO as ROOT


APP = '''
import os
import time
from liteq import task

@task
def stamp():
    return time.time()


@task
def gated(path):
    """Hold a child until `path` exists (30 s at most)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
'''


@pytest.fixture
def stamp_app(db, tmp_path, monkeypatch, clean_registry):
    # clean_registry: the app's task names must not outlive this test (other files
    # register tasks of the same names).
    app = tmp_path / "wake_app.py"
    app.write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "wake_app", raising=False)
    import importlib
    module = importlib.import_module("wake_app")
    try:
        with start_daemon(str(app), concurrency=2, poll_interval=30,
                          log_path=str(tmp_path / "daemon.log")) as daemon:
            yield module, daemon
    finally:
        sys.modules.pop("wake_app", None)


def test_back_to_back_enqueues_never_wait_for_the_poll(stamp_app):
    # Each .delay() follows the previous task's end at once: well within the
    # producers' 1 ms wake-up throttle, so many wake-ups are skipped and the
    # daemon's follow-up claim must pick those tasks up.
    app, _ = stamp_app
    worst = 0.0
    for _ in range(300):
        t0 = time.time()
        task_id = app.stamp.delay()
        started = wait_for_task(task_id, timeout=10, poll=0.0005)["result"]
        worst = max(worst, started - t0)
    assert worst < 1.0, f"a task waited {worst:.3f} s: a wake-up was lost"


def test_a_burst_runs_without_the_poll(stamp_app):
    app, _ = stamp_app
    t0 = time.time()
    ids = [app.stamp.delay() for _ in range(200)]
    starts = [wait_for_task(i, timeout=10)["result"] for i in ids]
    assert max(starts) - t0 < 5.0


PRODUCER = """
import json, sys
import wake_app
print(json.dumps([int(wake_app.stamp.delay()) for _ in range(int(sys.argv[1]))]))
"""


def test_bursts_from_many_producers_all_run_without_the_poll(stamp_app, tmp_path):
    # Each producer process skips the wake-ups that closely follow its own last one
    # (on PostgreSQL: NOTIFY at most once per 10 ms); the daemon's claims after each
    # wake-up must find every task they enqueued, never leaving one to the 30 s poll.
    app, _ = stamp_app
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")]))
    ids = []
    for _ in range(2):   # a second round: after the first burst has been drained
        procs = [subprocess.Popen([sys.executable, str(script), "60"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(6)]
        try:
            for p in procs:
                out, err = p.communicate(timeout=60)
                assert p.returncode == 0, err.decode()
                ids.extend(json.loads(out))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        # Far less than the poll interval: a task found only by the poll fails this.
        for task_id in ids:
            assert wait_for_task(task_id, timeout=15)["status"] == "done"
    assert len(set(ids)) == 720


def test_a_task_whose_wake_up_was_skipped_runs_without_the_poll(stamp_app, tmp_path):
    # The second .delay() follows the first at once: on PostgreSQL a burst, within
    # the producer's NOTIFY interval, so it sends none. The first task holds its
    # child, so no finished task makes the daemon claim either: only its claims
    # after the wake-up find the second before the 30 s poll.
    app, _ = stamp_app
    gate = str(tmp_path / "gate")
    try:
        for _ in range(3):
            held = app.gated.delay(gate)
            second = app.stamp.delay()
            assert wait_for_task(second, timeout=10)["status"] == "done"
            liteq.cancel_task(held)
            wait_for_task(held, timeout=10)
            time.sleep(0.3)   # past the daemon's claims after this wake-up
    finally:
        with open(gate, "w"):
            pass


def test_delayed_tasks_start_on_time_in_any_order(stamp_app):
    # Announced later than an earlier one, or out of order: each still starts on
    # time, since the daemon looks up the next due time whenever one passes.
    app, _ = stamp_app
    t0 = time.time()
    offsets = [0.9, 0.3, 0.5, 1.2]
    ids = [app.stamp.schedule(o) for o in offsets]
    for task_id, offset in zip(ids, offsets):
        started = wait_for_task(task_id, timeout=10)["result"] - t0
        assert offset - 0.01 <= started < offset + 0.5, (offset, started)


def test_wake_ups_reach_a_restarted_daemon(db, tmp_path, monkeypatch, clean_registry):
    app_file = tmp_path / "wake_app2.py"
    app_file.write_text(APP.replace("def stamp", "def stamp2").replace("def gated",
                                                                        "def gated2"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    monkeypatch.delitem(sys.modules, "wake_app2", raising=False)  # restored afterwards
    app = importlib.import_module("wake_app2")
    for _ in range(2):  # the second daemon gets a new socket; wake-ups must follow
        with start_daemon(str(app_file), concurrency=1, poll_interval=30,
                          log_path=str(tmp_path / "d.log")):
            time.sleep(0.2)
            t0 = time.time()
            started = wait_for_task(app.stamp2.delay(), timeout=10)["result"]
            assert started - t0 < 1.0
    events = [json.loads(line)["event"] for line in open(tmp_path / "d.log")]
    assert events.count("daemon.ready") == 2
