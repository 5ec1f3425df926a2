"""Load: 8 producer processes enqueue 5,000 tasks each while one daemon with
two children drains them. Exactly 40,000 end done, each executed exactly once.

Producers are real processes racing for the database with each other and with the
daemon; half their tasks go in one .delay() at a time, half in .map() batches. Every
execution is recorded by the task itself ("TASK_ID PID", O_APPEND), so the count is
exact. No speed is asserted (tests/benchmarks/bench_*.py and `liteq bench` measure that); the
deadlines only keep a broken run from hanging CI.
"""

import time
from collections import Counter

import pytest

from support import APPS
from support.daemon_helpers import PYTHON as PY
from support.processes import read_lines, wait_for
from support.task_table import status_counts
from support.fault_helpers import executions

PRODUCERS = 8
PER_PRODUCER = 5000

PRODUCER = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
import fault_app
log, out, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
ids = []
i = 0
while i < n:
    # Alternate: 50 single .delay() calls, then one .map() of 200.
    for _ in range(min(50, n - i)):
        ids.append(fault_app.work.delay(log))
        i += 1
    batch = min(200, n - i)
    if batch:
        ids += fault_app.work.map([log] * batch)
        i += batch
with open(out + ".tmp", "w") as f:
    f.write("\n".join(map(str, ids)) + "\n")
os.rename(out + ".tmp", out)
'''


@pytest.mark.timeout(300)
def test_8_producers_5000_tasks_each_drained_by_2_children_exactly_once(lab):
    d = lab.daemon("--concurrency", "2")
    log = lab.path("executions.txt")
    outs = [lab.path(f"producer{n}.ids") for n in range(PRODUCERS)]
    producers = [lab.popen([PY, "-c", PRODUCER, APPS, log, out, str(PER_PRODUCER)])
                 for out in outs]
    deadline = time.monotonic() + 180
    for p in producers:
        assert p.wait(timeout=max(deadline - time.monotonic(), 1)) == 0, "a producer failed"
    ids = []
    for out in outs:
        mine = [int(x) for x in read_lines(out)]
        assert len(mine) == PER_PRODUCER
        ids += mine
    total = PRODUCERS * PER_PRODUCER
    assert len(set(ids)) == total, "two producers were given the same id"

    wait_for(lambda: status_counts(lab.db).get("done", 0) >= total,
             max(deadline - time.monotonic(), 30),
             lambda: f"not drained: {status_counts(lab.db)}\n{d.dump()}", interval=0.5)
    assert status_counts(lab.db) == {"done": total}

    lines = read_lines(log)
    assert len(lines) == total, f"{len(lines)} executions for {total} tasks"
    runs = executions(log)
    assert len(runs) == total
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}
    # Both children did the work (each line is "TASK_ID PID").
    by_pid = Counter(line.split()[1] for line in lines)
    assert len(by_pid) >= 2, by_pid
    assert d.alive()
    assert not d.events("child.exited", reason="crashed")
