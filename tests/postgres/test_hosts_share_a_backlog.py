"""Hosts share a backlog, scaled down for CI from "three hosts and
600 one-second tasks": three hosts of two children each and 60 tasks of 0.5 s, all
enqueued at once while the three daemons are idle.

A daemon claims only what its idle children can start (no prefetch behind a task
that long), so each host takes its share and none is left with a queue of its own
while the others idle: the hosts' last tasks end within about one task's length of
each other. Shares and times come from the database's rows (worker_id, started_at,
finished_at), never from the test's own clock. Each daemon runs in namespaces of its
own (tests/support/hosts.py); the SQLite case is skipped.
"""

from collections import Counter

import pytest

from support.processes import wait_for
from support.task_table import status_counts, task_rows
from support.fault_helpers import CI_SLACK, FAULT_APP, executions, load_app_module

NAMES = ("host-a", "host-b", "host-c")
CHILDREN, TASKS, TASK_S = 2, 60, 0.5


@pytest.fixture
def app(hosts):
    """tests/apps/fault_app.py loaded in the test process."""
    return load_app_module(FAULT_APP)


def test_three_hosts_share_a_backlog_and_finish_together(hosts, app):
    for name in NAMES:
        hosts.host(name, "--concurrency", str(CHILDREN))
    log = hosts.path("executions.txt")
    ids = app.work_on_host.starmap([(log, TASK_S)] * TASKS)
    wait_for(lambda: status_counts(hosts.db, ids).get("done", 0) == TASKS, 120,
             lambda: f"not drained: {status_counts(hosts.db, ids)}\n{hosts.dump()}",
             interval=0.2)
    runs = executions(log)
    assert set(runs) == set(ids) and set(runs.values()) == {1}, "a task ran twice or never"

    rows = task_rows(hosts.db, ids)
    host_of = {i: rows[i]["worker_id"].split(":", 1)[0] for i in ids}
    share = Counter(host_of.values())
    print(f"tasks per host: {dict(share)}")
    fair = TASKS // len(NAMES)
    # Each host ran its share, give or take one round of its children.
    assert set(share) == set(NAMES), share
    assert all(abs(n - fair) <= 2 * CHILDREN for n in share.values()), share

    # No host kept a queue of its own: their last tasks ended within about one task's
    # length of each other (plus CI_SLACK / 2: a loaded machine's scheduling).
    last_end = {h: max(rows[i]["finished_at"] for i in ids if host_of[i] == h) for h in NAMES}
    spread = max(last_end.values()) - min(last_end.values())
    print(f"last task ends: spread {spread:.3f} s")
    assert spread <= TASK_S + CI_SLACK / 2, last_end
    # Every task's run counts from its real start: about TASK_S each.
    assert all(rows[i]["finished_at"] - rows[i]["started_at"] >= TASK_S for i in ids)
