"""Global rate limits: `@task(rate_limit="10/s")` and
`liteqd --queue-rate QUEUE=N/s` hold over every daemon and host on the database,
evenly spread in time, checked from the start stamps the tasks write themselves,
on each backend. The bounds allow a busy 2-core machine some lateness (a late
daemon starts fewer tasks, never more) and jitter between a claim and its start,
and still fail by far without the limit (the tasks would all start at once)."""

import os

import pytest

from support import APPS
from support.daemon_helpers import load_app_module
from support.processes import read_lines, wait_for
from support.task_table import all_tasks, status_counts, wait_all

APP = os.path.join(APPS, "rate_app.py")


def _starts(path, prefix):
    """The start times of tasks whose tag starts with `prefix`, in order."""
    out = []
    for line in read_lines(path):
        _, tag, at = line.split()
        if tag.startswith(prefix):
            out.append(float(at))
    return sorted(out)


def _most_in(times, window):
    """The most starts in any `window` seconds (a half-open interval from a start)."""
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window + 1e-9:
            j += 1
        most = max(most, i - j + 1)
    return most


def _assert_rate(times, per_second, n):
    """n starts at per_second: spread over (n - burst) / rate seconds, never more than
    the rate plus the burst (2) and some jitter in a window."""
    assert len(times) == n
    span = times[-1] - times[0]
    assert span >= 0.9 * (n - 3) / per_second, f"{n} starts in {span:.2f} s"
    assert _most_in(times, 1.0) <= per_second + 2 + 2, times
    # Evenly spread: never a burst (a third of a second holds its third of the rate).
    assert _most_in(times, 1 / 3) <= per_second / 3 + 2 + 2, times


def test_a_task_rate_holds_for_a_daemon(daemons):
    app = load_app_module(APP)
    stamps = daemons.path("stamps.txt")
    ids = app.limited.starmap([(stamps, f"lim{i}") for i in range(30)])
    daemons.start("--concurrency", "4", app=APP)
    rows = wait_all(ids, timeout=60, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    _assert_rate(_starts(stamps, "lim"), 10, 30)


def test_a_queue_rate_holds_for_a_daemon(daemons):
    app = load_app_module(APP)
    stamps = daemons.path("stamps.txt")
    ids = app.email.starmap([(stamps, f"mail{i}") for i in range(30)])
    free = app.free.starmap([(stamps, f"free{i}") for i in range(10)])
    daemons.start("--concurrency", "4", "--queues", "default,emails",
                  "--queue-rate", "emails=10/s", app=APP)
    rows = wait_all(ids + free, timeout=60, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    _assert_rate(_starts(stamps, "mail"), 10, 30)


def test_tasks_without_a_limit_are_not_held_back(daemons):
    # 30 tasks limited to 2/s sit ahead of the others (priority 5): the others all
    # finish while most of the limited ones still wait for their turn.
    app = load_app_module(APP)
    stamps = daemons.path("stamps.txt")
    slow = app.slow_head.starmap([(stamps, f"slow{i}") for i in range(30)])
    free = app.free.starmap([(stamps, f"free{i}") for i in range(10)])
    daemons.start("--concurrency", "2", app=APP)
    rows = wait_all(free, timeout=30, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    assert status_counts(daemons.db, slow).get("pending", 0) >= 15


@pytest.mark.parametrize("value, error, message", [
    ("abc", ValueError, "must be N/s"), ("0/s", ValueError, "more than 0"),
    ("-1/s", ValueError, "more than 0"), ("3/fortnight", ValueError, "unknown unit"),
    (True, TypeError, "rate_limit"), ([1], TypeError, "rate_limit")])
def test_a_bad_rate_is_refused_at_the_decorator(clean_registry, value, error, message):
    from liteq import task
    with pytest.raises(error, match=message):
        task(rate_limit=value)
    with pytest.raises(error, match=message):
        task(rate_limit=value)(lambda: None)


@pytest.mark.parametrize("flag, message", [
    ("emails=0/s", "more than 0"), ("emails=-1/s", "more than 0"),
    ("emails=abc", "must be N/s"), ("emails", "QUEUE=N/s")])
def test_a_bad_queue_rate_stops_liteqd_naming_it(daemons, flag, message):
    d = daemons.start("--queue-rate", flag, app=APP, ready=False)
    assert d.wait(timeout=20) != 0
    assert "emails" in d.stderr() and message in d.stderr(), d.stderr()


def test_queue_rates_from_flags_and_the_environment():
    from liteq.errors import ConfigError
    from liteqd.config import build_parser, resolve
    args = build_parser().parse_args(["--app", "x.py", "--queue-rate", "emails=20/s",
                                      "--queue-rate", "sms=60/min"])
    assert resolve(args, environ={}).queue_rates == {"emails": 20.0, "sms": 1.0}
    args = build_parser().parse_args(["--app", "x.py"])
    env = {"LITEQ_QUEUE_RATES": "emails=3600/h; sms=2/s"}
    assert resolve(args, environ=env).queue_rates == {"emails": 1.0, "sms": 2.0}
    with pytest.raises(ConfigError, match="LITEQ_QUEUE_RATES.*'sms'.*more than 0"):
        resolve(args, environ={"LITEQ_QUEUE_RATES": "sms=0/s"})


# ---- three hosts, 20/s, 30 s -------------------------------------------------------

@pytest.mark.slow
def test_three_hosts_keep_a_rate_of_20_a_second_for_30_seconds(hosts):
    hosts.app = APP
    app = load_app_module(APP)
    stamps = hosts.path("stamps.txt")
    for name in ("host-a", "host-b", "host-c"):
        hosts.host(name, "--concurrency", "2")
    # More than 30 s's worth, so that the backlog never runs dry.
    app.twenty.starmap([(stamps, f"t{i}") for i in range(700)])
    wait_for(lambda: len(_starts(stamps, "t")) > 0, 30, lambda: f"nothing ran\n{hosts.dump()}")
    first = _starts(stamps, "t")[0]
    wait_for(lambda: _starts(stamps, "t")[-1] >= first + 30.5, 60,
             lambda: f"too few starts\n{hosts.dump()}", interval=0.5)
    times = [t for t in _starts(stamps, "t") if t < first + 30]
    assert 570 <= len(times) <= 630, len(times)
    # Evenly spread: every second of the 30 holds about 20.
    per_second = [sum(1 for t in times if first + k <= t < first + k + 1) for k in range(30)]
    assert all(14 <= n <= 26 for n in per_second), per_second
    assert _most_in(times, 0.25) <= 5 + 2 + 2, per_second
    # Every host took its share: the limit is the database's, not one daemon's.
    used = {r["worker_id"].split(":")[0] for r in all_tasks(hosts.db) if r["worker_id"]}
    assert used == {"host-a", "host-b", "host-c"}, used
