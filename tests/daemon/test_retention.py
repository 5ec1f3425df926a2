"""Retention: the daemon deletes finished tasks past their age,
per status, at most 1,000 rows per loop turn, and logs tasks.pruned. Real daemons,
on each backend; old rows are made by recording outcomes with old finish times."""

import json
import time

import pytest

from liteqd.config import build_parser, resolve
from liteq.errors import ConfigError

from support.processes import wait_for
from support.task_table import all_tasks, fresh_backend, put_tasks

HOUR = 3600.0


def _finished(db, count, outcome, age, queue="old"):
    """`count` tasks of `queue` that ended `outcome` (done, failed or cancelled) `age`
    seconds ago; returns their ids."""
    with fresh_backend(db) as backend:
        ids = put_tasks(backend, "add", json.dumps([[1, 2]] * count), count, queue=queue)
        if outcome == "cancelled":
            for tid in ids:
                assert backend.cancel(tid)
            return ids  # cancel stamps now; cancelled rows are aged by the caller
        t = time.time() - age
        claimed = []
        while len(claimed) < count:
            claimed += [r["id"] for r in backend.claim("w-old", [queue], 500)]
        rows = [(tid, "null" if outcome == "done" else "boom", t, t) for tid in claimed]
        assert len(backend.record_outcomes("w-old", **{outcome: rows})) == count
        return ids


def _age_cancelled(db, ids, age):
    """Make cancelled tasks look finished `age` seconds ago: cancelling stamps the
    database's now, which no backend operation moves back."""
    from liteq import backends
    if backends.is_postgres(db):
        from support import pg_helpers
        pg_helpers.rows(db, "UPDATE tasks SET finished_at = finished_at - make_interval("
                        "secs => %s) WHERE id = ANY(%s)", (age, ids))
    else:
        import sqlite3
        conn = sqlite3.connect(backends.sqlite_path(db), timeout=30)
        try:
            with conn:
                conn.execute(f"UPDATE tasks SET finished_at = finished_at - ? WHERE id IN "
                             f"({','.join('?' * len(ids))})", (age, *ids))
        finally:
            conn.close()


def test_the_daemon_prunes_old_finished_tasks_in_batches(db, daemons):
    old_done = _finished(db, 2500, "done", 2 * HOUR)
    new_done = _finished(db, 5, "done", 0)
    old_failed = _finished(db, 7, "failed", 2 * HOUR)
    older_failed = _finished(db, 3, "failed", 50 * HOUR)
    old_cancelled = _finished(db, 4, "cancelled", 0)
    _age_cancelled(db, old_cancelled, 2 * HOUR)
    with fresh_backend(db) as backend:
        pending = put_tasks(backend, "add", json.dumps([[1, 2]] * 3), 3, queue="old")
        running = put_tasks(backend, "add", json.dumps([[1, 2]] * 2), 2, queue="held")
        # Running for a daemon that is alive: this test's own row, refreshed below.
        backend.heartbeat("w-alive", "elsewhere", "held", 1, 1, 0.0)
        assert len(backend.claim("w-alive", ["held"], 10)) == 2

    # done: kept an hour; failed: a day; cancelled: as done.
    d = daemons.start("--keep-done", "3600", "--keep-failed", str(24 * HOUR),
                      "--stale-after", "600")
    total = 2500 + 3 + 4
    wait_for(lambda: sum(e["total"] for e in d.events("tasks.pruned")) >= total, 60,
             lambda: d.dump())
    events = d.events("tasks.pruned")
    assert all(e["total"] <= 1000 for e in events), events
    assert len(events) >= 3 and [e["more"] for e in events][:2] == [True, True], events
    assert sum(e.get("done", 0) for e in events) == 2500
    assert sum(e.get("failed", 0) for e in events) == 3
    assert sum(e.get("cancelled", 0) for e in events) == 4
    assert events[-1]["more"] is False

    left = {r["id"]: r["status"] for r in all_tasks(db)}
    assert not set(old_done) & set(left)
    assert not set(older_failed) & set(left)
    assert not set(old_cancelled) & set(left)
    assert {left[t] for t in new_done} == {"done"}
    assert {left[t] for t in old_failed} == {"failed"}
    assert {left[t] for t in pending} == {"pending"}
    assert {left[t] for t in running} == {"running"}
    assert len(left) == 5 + 7 + 3 + 2


def test_zero_keeps_tasks_forever(db, daemons):
    old = _finished(db, 20, "done", 100 * HOUR) + _finished(db, 2, "failed", 100 * HOUR)
    d = daemons.start("--keep-done", "0", "--keep-failed", "0")
    time.sleep(2.0)   # four heartbeats (0.5 s apart), each of which would prune
    assert d.alive()
    assert d.events("tasks.pruned") == []
    assert sorted(r["id"] for r in all_tasks(db)) == sorted(old)


@pytest.mark.parametrize("argv, env, expected", [
    ([], {}, (604800.0, 2592000.0, 604800.0)),
    (["--keep-done", "60"], {}, (60.0, 2592000.0, 60.0)),
    (["--keep-cancelled", "0"], {"LITEQ_KEEP_FAILED": "5"}, (604800.0, 5.0, 0.0)),
    ([], {"LITEQ_KEEP_DONE": "0", "LITEQ_KEEP_CANCELLED": "9"}, (0.0, 2592000.0, 9.0)),
])
def test_retention_flags_and_variables(argv, env, expected):
    config = resolve(build_parser().parse_args(["--app", "x.py", *argv]), env)
    assert (config.keep_done, config.keep_failed, config.keep_cancelled) == expected


@pytest.mark.parametrize("argv, message", [
    (["--keep-done", "-1"], "--keep-done must be >= 0"),
    (["--keep-failed", "a week"], "--keep-failed must be a number"),
])
def test_bad_retention_is_a_config_error(argv, message):
    with pytest.raises(ConfigError, match=message):
        resolve(build_parser().parse_args(["--app", "x.py", *argv]), {})


def test_prune_refuses_an_unfinished_status(backend):
    with pytest.raises(ValueError, match="finished status"):
        backend.prune("pending", 0, 10)
