"""The dispatcher without processes, sockets or a database: a stub backend hands it
claimed rows, stub channels take what it sends, and we look at which child got what
and what became of a dead child's tasks."""

import contextlib
import json

import structlog

from liteqd import handout, protocol
from liteqd.accounting import ChildMessages
from liteqd.channel import ChildChannel
from liteqd.config import DaemonConfig, PoolSpec
from liteqd.dispatch import Dispatcher
from liteqd.exits import ExitCause, classify
from liteqd.outage import Outage
from liteqd.pool import ChildHandle, Pool

LOG = structlog.get_logger()


class StubSocket:
    """Takes everything sent; remembers it. `incoming` is what recv() returns, then
    end of file."""

    def __init__(self):
        self.sent = b""
        self.incoming = []

    def recv(self, size):
        return self.incoming.pop(0) if self.incoming else b""

    def send(self, data):
        self.sent += bytes(data)
        return len(data)

    def fileno(self):
        return 99


class StubBackend:
    """Claims the rows it is given; records what the dispatcher writes."""

    wake_follow_ups_s = ()

    def __init__(self, rows=()):
        self.rows = list(rows)
        self.recorded = {}
        self.released = []

    def batch(self):
        return contextlib.nullcontext()

    def claim(self, worker_id, queues, limit, limits=None):
        taken, self.rows = self.rows[:limit], self.rows[limit:]
        return taken

    def rate_wait(self):
        return None

    def next_due(self, queues):
        return None

    def mark_started(self, worker_id, started):
        return len(started)

    def record_outcomes(self, worker_id, done=(), failed=(), retry=()):
        for kind, rows in (("done", done), ("failed", failed), ("retry", retry)):
            for row in rows:
                self.recorded[row[0]] = (kind, row)
        return list(self.recorded)

    def release(self, worker_id, ids):
        self.released.extend(ids)

    def release_unheld(self, worker_id, held):
        return []

    def get_tasks(self, ids):
        return []


class StubLifecycle:
    """The processes: records kills and signals instead."""

    def __init__(self, pools):
        self.pools = pools
        self.killed, self.poked = [], []

    def all_children(self):
        return [c for p in self.pools for c in p.children.values()]

    def kill(self, child, reason, task=None):
        self.killed.append((child.pid, reason))

    def signal_cancel(self, child):
        self.poked.append(child.pid)

    def poke(self, child):
        self.poked.append(child.pid)
        return True

    def retire(self, child, deadline):
        child.retiring = True

    def maybe_recycle(self, child):
        pass


class StubFds:
    def unregister_fd(self, fileobj):
        pass


def row(task_id, name="t", max_retries=0, timeout=None):
    return {"id": task_id, "name": name, "queue": "default", "attempts": 1,
            "max_retries": max_retries, "timeout": timeout, "retry_delay": 1.0,
            "retry_backoff": 2.0, "retry_max_delay": 60.0, "payload": "[[],{}]",
            "created_at": 0.0}


def child(pool, pid, busy_with=()):
    c = ChildHandle(pid=pid, slot=pid, pool=pool, channel=ChildChannel(StubSocket(),
                                                                       lambda on: True))
    c.ready = True
    if busy_with:
        runs = [handout.task_run(r, None) for r in busy_with]
        c.channel.hand(runs, [])
        runs[0].started_mono = runs[0].started_wall = 1.0
    pool.children[pid] = c
    return c


def dispatcher(rows=(), prefetch=1, size=2):
    config = DaemonConfig(app="app", db="db", pools=[PoolSpec("default", ["default"], size)],
                          prefetch=prefetch)
    pool = Pool("default", ["default"], size)
    lifecycle = StubLifecycle([pool])
    backend = StubBackend(rows)
    d = Dispatcher(config, LOG, backend, Outage(LOG), [pool], lifecycle, "me", set())
    return d, pool, backend, lifecycle


def sent_ids(c):
    lines = c.channel.sock.sent.decode().splitlines()
    return [json.loads(line)[1] for line in lines]


def test_a_due_task_goes_to_the_idle_child():
    d, pool, backend, _ = dispatcher([row(7)], prefetch=2)
    busy = child(pool, 1, busy_with=[row(1)])
    idle = child(pool, 2)
    d.sync(stopping=False)
    assert sent_ids(idle) == [7] and sent_ids(busy) == []
    head = idle.inflight[0]
    assert head.id == 7 and head.started_mono is not None   # its clock runs from now
    assert 7 in d.outcomes.started


def test_tasks_spread_over_the_least_loaded_children():
    d, pool, _, _ = dispatcher([row(i) for i in range(10, 14)], prefetch=2)
    a, b = child(pool, 1), child(pool, 2)
    d.sync(stopping=False)
    assert sorted(sent_ids(a) + sent_ids(b)) == [10, 11, 12, 13]
    assert len(a.inflight) == len(b.inflight) == 2


def test_nothing_is_claimed_while_stopping():
    d, pool, backend, _ = dispatcher([row(1)])
    child(pool, 1)
    d.sync(stopping=True)
    assert backend.rows == [row(1)]


def test_a_crashed_childs_running_task_fails_and_its_queued_task_goes_back():
    d, pool, backend, _ = dispatcher()
    c = child(pool, 1, busy_with=[row(1, max_retries=0), row(2)])
    del pool.children[1]
    requeued = d.child_ended(c, classify(9, None, False))  # killed by SIGKILL
    assert requeued == 1 and not c.inflight
    d.sync(stopping=True)
    kind, recorded = backend.recorded[1]
    assert kind == "failed" and recorded[1].startswith("ChildDied: the worker process "
                                                       "killed by signal SIGKILL")
    assert backend.released == [2]


def test_a_timed_out_task_is_retried_by_its_policy():
    d, pool, backend, _ = dispatcher()
    c = child(pool, 1, busy_with=[row(1, max_retries=2, timeout=1.5)])
    d.child_ended(c, classify(9, ExitCause.TIMEOUT, False))
    d.sync(stopping=True)
    kind, recorded = backend.recorded[1]
    assert kind == "retry" and recorded[1].startswith("TaskTimeout: timed out after 1.5 s")


def test_a_stopped_child_hands_everything_back():
    d, pool, backend, _ = dispatcher()
    c = child(pool, 1, busy_with=[row(1), row(2)])
    assert d.child_ended(c, classify(9, ExitCause.STOP, True)) == 2
    d.sync(stopping=True)
    assert backend.recorded == {} and sorted(backend.released) == [1, 2]


def test_a_cancel_reaches_the_child_holding_the_task():
    d, pool, _, lifecycle = dispatcher()
    c = child(pool, 1, busy_with=[row(1)])
    d.cancel([1])
    assert c.inflight[0].cancelled and lifecycle.poked == [1]
    assert json.loads(c.channel.sock.sent.decode().splitlines()[-1]) == ["x", 1]


def test_a_failed_send_kills_the_child_as_crashed():
    d, pool, _, lifecycle = dispatcher([row(5)])
    c = child(pool, 1)

    def refuse(data):
        raise BrokenPipeError

    c.channel.sock.send = refuse
    d.sync(stopping=False)
    assert lifecycle.killed == [(1, ExitCause.CRASH)]
    assert [r.id for r in c.inflight] == [5]   # its exit hands it back


def test_a_result_records_the_outcome_and_starts_the_next_task():
    d, pool, backend, lifecycle = dispatcher()
    c = child(pool, 1, busy_with=[row(1), row(2)])
    messages = ChildMessages(d.config, LOG, StubFds(), lifecycle, d)
    c.channel.sock.incoming = [protocol.encode([
        protocol.result(1, True, "null", 1.0, 1.5, 0, False),
        protocol.ready(1)])]
    messages.drain(c)
    assert [r.id for r in c.inflight] == [2] and c.inflight[0].started_mono is not None
    assert c.tasks_done == 1 and pool.avg_duration == 0.5
    d.sync(stopping=True)
    assert backend.recorded[1][0] == "done"


def test_a_task_handed_back_unstarted_goes_back_to_pending():
    d, pool, backend, lifecycle = dispatcher()
    c = child(pool, 1, busy_with=[row(1), row(2), row(3)])
    c.recalling = True
    messages = ChildMessages(d.config, LOG, StubFds(), lifecycle, d)
    c.channel.sock.incoming = [protocol.encode([protocol.skipped(2), protocol.skipped(3)])]
    messages.drain(c)
    assert [r.id for r in c.inflight] == [1] and not c.recalling
    d.sync(stopping=True)
    assert backend.released == [2, 3]


def test_a_timed_out_result_retires_its_child():
    d, pool, _, lifecycle = dispatcher()
    c = child(pool, 1, busy_with=[row(1, timeout=1.0)])
    messages = ChildMessages(d.config, LOG, StubFds(), lifecycle, d)
    c.channel.sock.incoming = [protocol.encode([
        protocol.result(1, False, "TaskTimeout: x", 1.0, 2.0, 0, True)])]
    messages.drain(c)
    assert c.retiring


def test_junk_from_a_child_kills_it_as_crashed():
    d, pool, _, lifecycle = dispatcher()
    c = child(pool, 1)
    c.channel.sock.incoming = [b'["junk"]\n']
    ChildMessages(d.config, LOG, StubFds(), lifecycle, d).drain(c)
    assert lifecycle.killed == [(1, ExitCause.CRASH)]
