"""Claims under rate limits, on each backend: a rate-limited name or
queue starts at most a small burst at once, then one per interval; the claim says
when the next start is allowed; other tasks are not held back by limited ones ahead
of them; and a limit nobody uses leaves the claim as it was.

A claim that finds a bucket empty must come within the bucket's interval of the one
that emptied it; the rates are slow enough for that on a busy machine, and where a
stall makes it late the test says so instead of failing on the clock."""

import time

import pytest

from liteq import backends
from liteq.backends.limits import Limits
from liteq.serialization import encode_payload

from support.task_table import put_task


def _put(store, name, n, priority=0, queue="default"):
    return [put_task(store, name, encode_payload(name, [], {}), priority=priority, queue=queue)
            for _ in range(n)]


def _ids(rows):
    return [r["id"] for r in rows]


def _within(started, seconds):
    """Skip the rest of the test when a stall made it later than `seconds` after
    `started` (the bucket would rightly have refilled)."""
    if time.monotonic() - started >= seconds:
        pytest.skip(f"the machine stalled the test past {seconds} s")


def test_a_rate_limited_name_starts_a_small_burst_then_waits(db):
    store = backends.get_backend()
    limited = _put(store, "limited", 20)
    limits = Limits(rate_by_name={"limited": 0.5})   # one start every 2 s
    started = time.monotonic()
    first = store.claim("w1", ["default"], 10, limits=limits)
    # Never a second's worth at once: one start, early by at most EARLY_S.
    assert _ids(first) == limited[:1]
    wait = store.rate_wait()
    assert wait is not None and 1.5 < wait <= 2.0
    rows = store.claim("w1", ["default"], 10, limits=limits)
    _within(started, 1.7)
    assert rows == []
    assert 0.0 < store.rate_wait() <= 2.0
    time.sleep(store.rate_wait() + 0.01)
    rows = store.claim("w1", ["default"], 10, limits=limits)
    assert len(rows) >= 1 and _ids(rows) == limited[1:1 + len(rows)]


def test_a_fast_rate_bursts_two_at_most(db):
    store = backends.get_backend()
    limited = _put(store, "limited", 20)
    limits = Limits(rate_by_name={"limited": 4.0})   # every 0.25 s: bursts of two
    started = time.monotonic()
    assert _ids(store.claim("w1", ["default"], 10, limits=limits)) == limited[:2]
    rows = store.claim("w1", ["default"], 10, limits=limits)
    _within(started, 0.25)
    assert rows == []
    assert 0.0 < store.rate_wait() <= 0.25


def test_tasks_without_a_limit_are_not_held_back_by_limited_ones_ahead(db):
    store = backends.get_backend()
    limited = _put(store, "limited", 40, priority=5)
    free = _put(store, "free", 4, priority=0)
    limits = Limits(rate_by_name={"limited": 0.25})
    started = time.monotonic()
    rows = store.claim("w1", ["default"], 3, limits=limits)
    assert _ids(rows) == [limited[0], free[0], free[1]]
    rows = store.claim("w1", ["default"], 3, limits=limits)
    _within(started, 3.7)
    assert _ids(rows) == free[2:4]
    assert store.rate_wait() is not None   # limited tasks are still due


def test_a_queue_rate_holds_over_every_name_of_the_queue(db):
    store = backends.get_backend()
    mails = _put(store, "a", 5, queue="emails") + _put(store, "b", 5, queue="emails")
    other = _put(store, "c", 3, queue="default")
    limits = Limits(rate_by_queue={"emails": 0.25})
    started = time.monotonic()
    rows = store.claim("w1", ["emails", "default"], 10, limits=limits)
    assert sorted(_ids(rows)) == sorted([mails[0]] + other)
    rows = store.claim("w1", ["emails", "default"], 10, limits=limits)
    _within(started, 3.7)
    assert rows == []
    assert store.rate_wait() is not None


def test_daemons_share_one_bucket(db):
    store = backends.get_backend()
    _put(store, "limited", 10)
    limits = Limits(rate_by_name={"limited": 0.25})
    started = time.monotonic()
    assert len(store.claim("w1", ["default"], 5, limits=limits)) == 1
    # Another daemon (its own connection) finds the bucket empty.
    other = backends.open_backend(db, daemon=True)
    try:
        rows = other.claim("w2", ["default"], 5, limits=limits)
        _within(started, 3.7)
        assert rows == []
        assert other.rate_wait() is not None
    finally:
        other.close()


def test_an_unused_rate_limit_changes_no_claim(db):
    store = backends.get_backend()
    free = _put(store, "free", 5)
    limits = Limits(rate_by_name={"never_queued": 1.0})
    assert _ids(store.claim("w1", ["default"], 10, limits=limits)) == free
    assert store.rate_wait() is None


def test_rate_and_concurrency_limits_together(db):
    store = backends.get_backend()
    limited = _put(store, "limited", 10)
    limits = Limits(by_name={"limited": 1}, rate_by_name={"limited": 100.0})
    assert _ids(store.claim("w1", ["default"], 5, limits=limits)) == limited[:1]
    assert store.claim("w1", ["default"], 5, limits=limits) == []


@pytest.mark.parametrize("value, message", [
    ("abc", "must be N/s"), ("0/s", "more than 0"), ("-1/s", "more than 0"),
    ("5/week", "unknown unit 'week'"), ("/s", "must be N/s"), ("nan/s", "more than 0"),
    ("1e300/s", "at most"), (0, "more than 0")])
def test_bad_rates_are_refused_naming_the_problem(value, message):
    from liteq.rates import parse_rate
    with pytest.raises(ValueError, match=message):
        parse_rate(value)


@pytest.mark.parametrize("value, per_second", [
    ("100/s", 100.0), ("60/m", 1.0), ("30/min", 0.5), ("3600/h", 1.0), (" 2.5 / S ", 2.5),
    (4, 4.0), ("10", 10.0), (None, None)])
def test_rates_as_celery_writes_them(value, per_second):
    from liteq.rates import parse_rate
    assert parse_rate(value) == per_second


@pytest.mark.parametrize("rate", [0.5, 3.0, 20.0, 500.0])
def test_the_bucket_keeps_the_rate_and_its_bound_whenever_claimers_come(rate):
    # The bucket arithmetic alone, with claimers arriving at random moments (some late,
    # some early, some at once): never more than rate * W + 2 in any W seconds, and
    # nothing lost while someone comes at least once per interval.
    import random

    from liteq.backends.limits import early, next_start, spend, tokens
    rng = random.Random(int(rate * 1000))
    interval = 1 / rate
    tat, now, starts = None, 1.7e9, []
    end = now + 200 * interval
    while now < end:
        n = min(tokens(tat, now, interval), rng.choice([1, 2, 5]))
        if n:
            tat = spend(tat, now, interval, n)
            starts += [now] * n
        # Come back when told (as the daemon does), or late by up to what the bucket
        # forgives, or too early (and find nothing).
        told = max(now, next_start(tat, interval))
        late = rng.choice([0.0, 0.5, 0.99]) * early(interval) * rng.random()
        now = max(now, told - interval / 3) if rng.random() < 0.2 else told + late
    for width in (interval, 1.0, 10 * interval):
        j = 0
        for i, t in enumerate(starts):
            while starts[j] <= t - width:
                j += 1
            assert i - j + 1 <= rate * width + 2 + 1e-9, (width, i - j + 1)
    assert len(starts) >= 200 - 2   # the rate is kept: such lateness is forgiven
