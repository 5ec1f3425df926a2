"""Every numeric option has a range and every name a length and character rule
(liteq/taskspec.py, README "Limits on values"): a value outside them is a ValueError
at the call, the same on both backends, and nothing is written.

Each case runs on both backends (conftest's `db`, through fault_helpers' `lab`),
through every way of enqueueing that takes the option, and liteqd's flags are
checked with real short-lived `liteqd` processes that must refuse to start.
"""

import math

import pytest

import liteq
from liteq import backends

from support.daemon_helpers import PYTHON
from support.task_table import count_tasks, fresh_backend
from support.fault_helpers import FAULT_APP

NAN, INF = math.nan, math.inf
LONG = "q" * 1_000_000

# (option, bad value, words the error must hold)
BAD_OPTIONS = [
    ("timeout", NAN, "timeout must be a finite number"),
    ("timeout", INF, "timeout must be a finite number"),
    ("timeout", 1e300, "timeout must be at most"),
    ("timeout", -1, "timeout must be > 0"),
    ("priority", -2**63, "priority must be >= -2147483648"),
    ("priority", 2**31, "priority must be at most"),
    ("priority", NAN, "priority must be a finite number"),
    ("priority", INF, "priority must be a finite number"),
    ("max_retries", 10**12, "max_retries must be at most"),
    ("max_retries", -1, "max_retries must be >= 0"),
    ("queue", "a\x00b", "control character"),
    ("queue", "tab\there", "control character"),
    ("queue", "\ud800", "lone surrogate"),
    ("queue", LONG, "queue must be 1 to 200 characters long"),
    ("queue", "a,b", "comma"),
    ("queue", " padded ", "space"),
    ("countdown", NAN, "countdown must be a finite number"),
    ("countdown", INF, "countdown must be a finite number"),
    ("countdown", 1e300, "countdown must be at most"),
    ("countdown", -5, "countdown must be >= 0"),
    ("eta", NAN, "eta"),
    ("eta", INF, "eta"),
    ("eta", 1e300, "eta"),
    ("eta", -1.0, "eta"),
    ("unique_key", "key\x00", "unique_key"),
    ("unique_key", "\udc80", "unique_key"),
    ("unique_key", "k" * 513, "unique_key"),
]

MAP_OPTIONS = ("queue", "priority", "countdown", "timeout")
DECORATOR_OPTIONS = ("queue", "priority", "max_retries", "timeout")
SCHEDULE_OPTIONS = ("queue", "priority", "max_retries")
BAD_RETRY_OPTIONS = [("retry_delay", NAN), ("retry_delay", 1e300), ("retry_backoff", INF),
                     ("retry_backoff", 1e6), ("retry_max_delay", NAN), ("retry_max_delay", -1)]
BAD_NAMES = ["nul\x00name", "x" * 1_000_000, "line\nbreak"]
BAD_WHEN = [NAN, INF, -INF, 1e300]


@pytest.fixture
def app(fault_app):
    """This file's tasks: tests/apps/fault_app.py, run by the `lab` daemons."""
    return fault_app


def _nothing_written(lab):
    assert count_tasks(lab.db) == 0
    with fresh_backend(lab.db) as backend:
        assert backend.list_schedules() == []


@pytest.mark.parametrize("option, value, words", BAD_OPTIONS,
                         ids=[f"{o}={v!r}"[:40] for o, v, _ in BAD_OPTIONS])
def test_a_bad_option_is_a_value_error_on_every_path_and_writes_nothing(lab, app, option,
                                                                          value, words):
    with pytest.raises(ValueError, match=words):
        app.add.apply_async((1, 2), **{option: value})
    if option in MAP_OPTIONS:
        with pytest.raises(ValueError, match=words):
            app.add.map([1, 2, 3], **{option: value})
    if option in DECORATOR_OPTIONS:
        with pytest.raises(ValueError, match=words):
            liteq.task(name="limits_probe", **{option: value})(lambda: None)
    if option in SCHEDULE_OPTIONS and not isinstance(value, float):  # floats: TypeError
        with pytest.raises(ValueError, match=words):
            liteq.register_schedule(app.add, "* * * * *", 1, 2, name="limits_probe",
                                    **{option: value})
    _nothing_written(lab)


@pytest.mark.parametrize("option, value", BAD_RETRY_OPTIONS)
def test_a_bad_retry_option_is_refused_at_the_decorator(lab, app, option, value):
    with pytest.raises(ValueError, match=option):
        liteq.task(name="limits_probe", **{option: value})(lambda: None)
    _nothing_written(lab)


@pytest.mark.parametrize("when", BAD_WHEN)
def test_schedule_with_a_time_out_of_range_writes_nothing(lab, app, when):
    with pytest.raises(ValueError, match="delay must be"):
        app.add.schedule(when, 1, 2)
    _nothing_written(lab)


@pytest.mark.parametrize("name", BAD_NAMES, ids=["nul", "1MB", "newline"])
def test_a_bad_task_or_schedule_name_is_refused_and_writes_nothing(lab, app, name):
    with pytest.raises(ValueError, match="task name"):
        liteq.task(name=name)(lambda: None)
    with pytest.raises(ValueError, match="name"):
        liteq.register_schedule(name, "* * * * *")
    with pytest.raises(ValueError, match="schedule name"):
        liteq.register_schedule(app.add, "* * * * *", 1, 2, name=name)
    _nothing_written(lab)


def test_good_values_at_the_limits_are_stored_alike_on_both_backends(lab, app):
    tid = app.add.apply_async((1, 2), priority=-2**31, timeout=10 * 365 * 86400,
                              countdown=10 * 365 * 86400, queue="é" * 200)
    top = app.add.apply_async((1, 2), priority=2**31 - 1, max_retries=1_000_000)
    with fresh_backend(lab.db) as backend:
        row, other = backend.get_task(tid), backend.get_task(top)
    assert (row["priority"], row["queue"], other["priority"]) == (-2**31, "é" * 200, 2**31 - 1)


def test_purge_with_an_unknown_status_is_a_value_error(lab, app):
    app.add.delay(1, 2)
    backend = backends.get_backend()
    with pytest.raises(ValueError, match="unknown task status"):
        backend.purge(0, statuses=("done", "bogus"))
    with pytest.raises(ValueError, match="older_than must be a finite number"):
        backend.purge(NAN)
    assert count_tasks(lab.db) == 1


# ---- liteqd's flags ---------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--timeout", "nan"], "--timeout must be a finite number"),
    (["--timeout", "1e300"], "--timeout must be at most"),
    (["--graceful-timeout", "nan"], "--graceful-timeout must be a finite number"),
    (["--stale-after", "inf"], "--stale-after must be a finite number"),
    (["--poll-interval", "nan"], "--poll-interval must be a finite number"),
    (["--keep-done", "inf"], "--keep-done must be a finite number"),
    (["--queues", "default," + "q" * 300], "must be 1 to 200 characters"),
    (["--queues", "bell\x07"], "control character"),
    (["--pool", "p:ok,tab\tq:1"], "control character"),
    (["--queue-limit", "x" * 300 + "=2"], "must be 1 to 200 characters"),
])
def test_liteqd_refuses_a_flag_out_of_range(lab, app, args, needle):
    tid = app.add.delay(20, 22)
    backends.forget_backends()
    res = lab.run([PYTHON, "-m", "liteqd.cli", "--log-format", "json", "--app", FAULT_APP,
                   "--concurrency", "1", *args], timeout=20)
    assert res.returncode != 0, f"liteqd started anyway:\n{res.stdout}\n{res.stderr}"
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    with fresh_backend(lab.db) as backend:
        row = backend.get_task(tid)
    assert (row["status"], row["attempts"]) == ("pending", 0)
