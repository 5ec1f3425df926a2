"""Claims under concurrency limits, on each backend: tasks of a name at its limit are
passed over, and the claim reaches the tasks behind them in the same call."""

from liteq import backends
from liteq.backends.limits import Limits
from liteq.serialization import encode_payload

from support.task_table import put_task


def _put(store, name, n, priority):
    return [put_task(store, name, encode_payload(name, [], {}), priority=priority)
            for _ in range(n)]


def test_a_claim_reaches_past_the_tasks_of_a_name_at_its_limit(db):
    store = backends.get_backend()
    limited = _put(store, "limited", 30, priority=5)
    free = _put(store, "free", 3, priority=0)
    limits = Limits({"limited": 1}, {})
    rows = store.claim("w1", ["default"], 3, limits=limits)
    assert [r["id"] for r in rows] == [limited[0], free[0], free[1]]
    # The name is at its limit now: only the others are claimed.
    rows = store.claim("w1", ["default"], 3, limits=limits)
    assert [r["id"] for r in rows] == [free[2]]

