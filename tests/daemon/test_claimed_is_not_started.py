""""running" means started: a task a daemon claimed that no child
has started yet is shown as claimed, in the status API, `liteqctl status` and the
metrics; its started_at, run time and time limit count from the real start.

One child with --prefetch 2 holds a task that waits for a gate file and, queued
behind it, a second one: the second is claimed, waiting for the child, until the
gate opens. No timing asserts: the states are awaited, the times read from the rows.
"""

import json
import os
import time

import pytest

from liteq import backends, get_task_status
from liteq.metrics import LiteQCollector

from support import APPS
from support.daemon_helpers import load_app_module
from support.processes import read_lines, wait_for
from support.task_table import wait_status

DISPATCH_APP = os.path.join(APPS,
                            "dispatch_app.py")


@pytest.fixture
def app(daemons):
    """tests/apps/dispatch_app.py loaded in the test process; daemons run it too."""
    daemons.app = DISPATCH_APP
    return load_app_module(DISPATCH_APP)


def _state(task_id):
    return get_task_status(task_id)["state"]


def _metric(store, family, labels):
    collector = LiteQCollector(store_factory=lambda: store, status_fn=lambda: None)
    for fam in collector.collect():
        if fam.name == family:
            for sample in fam.samples:
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
    return None


def test_a_claimed_task_is_not_running_until_its_child_starts_it(daemons, app, db):
    log, gate = daemons.path("log.txt"), daemons.path("gate")
    first = app.held.delay(gate, log, "a")
    # Queued behind `first` on the only child; its one-second limit counts from its
    # real start, not from the claim (it waits longer than that for the child).
    second = app.brief.delay(log, "b", 0.2)
    daemons.start("--concurrency", "1", "--prefetch", "2")
    try:
        wait_for(lambda: "a" in {ln.split()[0] for ln in read_lines(log)}, 20,
                 lambda: daemons.dump())
        wait_for(lambda: _state(first) == "running", 10, lambda: daemons.dump())
        st = get_task_status(second)
        # Both rows say status "running" (liteq 0.2's names), but only one started.
        assert st["status"] == "running" and st.status == "running"
        assert st["state"] == "claimed" and st.waiting_for_child
        assert st["started_at"] is None and st["worker_id"]
        one = get_task_status(first)
        assert one["started_at"] is not None and not one["waiting_for_child"]

        out = daemons.liteqctl("status", "--json")
        assert out.returncode == 0, out.stderr
        queue = {q["queue"]: q for q in json.loads(out.stdout)["queues"]}["default"]
        assert (queue["claimed"], queue["running"]) == (1, 1)
        text = daemons.liteqctl("status").stdout
        assert "CLAIMED" in text

        store = backends.get_backend()
        assert store.claimed_counts() == {"default": 1}
        assert _metric(store, "liteq_tasks", {"queue": "default", "status": "running"}) == 1
        assert _metric(store, "liteq_tasks_claimed", {"queue": "default"}) == 1
        # Longer in the child's queue than the second task's time limit: still claimed.
        time.sleep(1.5)
        assert _state(second) == "claimed"
    finally:
        with open(gate, "w"):
            pass
    done = wait_status(second, daemons=daemons)
    assert done["status"] == "done", done["error"]
    first_row = wait_status(first, daemons=daemons)
    rows = {r["id"]: r for r in backends.get_backend().get_tasks([first, second])}
    # The second started when the first ended (same child), not when it was claimed.
    assert rows[second]["started_at"] >= rows[first]["finished_at"] - 0.05
    assert first_row["state"] == "done"
