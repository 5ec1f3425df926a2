"""Global concurrency limits: `@task(concurrency=N)` and
`liteqd --queue-limit QUEUE=N` hold over every daemon on the database, checked from the
tasks' own start and end stamps, on each backend."""

import os

import pytest

from support import APPS
from support.daemon_helpers import load_app_module
from support.processes import read_lines
from support.task_table import wait_all

APP = os.path.join(APPS, "limits_app.py")


def _most_at_once(path, prefix=""):
    """The largest number of tasks (tags starting with prefix) running at one moment."""
    events = []
    for line in read_lines(path):
        kind, tag, at = line.split()
        if tag.startswith(prefix):
            events.append((float(at), 0 if kind == "end" else 1))
    running = most = 0
    for _, delta in sorted(events):   # ends sort before starts at the same instant
        running += 1 if delta else -1
        most = max(most, running)
    return most


def _three_daemons(daemons, *args):
    for n in range(3):
        daemons.start("--concurrency", "3", "--queues", "default,emails", *args,
                      "--socket", daemons.path(f"d{n}.sock"), app=APP)


def test_a_task_limit_holds_over_three_daemons(daemons):
    app = load_app_module(APP)
    stamps = daemons.path("stamps.txt")
    _three_daemons(daemons)
    ids = [app.limited.delay(stamps, f"lim{i}") for i in range(12)]
    ids += [app.free.delay(stamps, f"free{i}") for i in range(6)]
    rows = wait_all(ids, timeout=60, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    assert _most_at_once(stamps, "lim") == 2          # never more, and the limit is used
    assert _most_at_once(stamps, "free") > 2          # other tasks are not held back


def test_a_queue_limit_holds_over_three_daemons(daemons):
    app = load_app_module(APP)
    stamps = daemons.path("stamps.txt")
    _three_daemons(daemons, "--queue-limit", "emails=1")
    ids = [app.email.delay(stamps, f"mail{i}", 0.2) for i in range(6)]
    rows = wait_all(ids, timeout=60, daemons=daemons)
    assert all(r["status"] == "done" for r in rows.values()), rows
    assert _most_at_once(stamps, "mail") == 1


@pytest.mark.parametrize("value, error", [(0, ValueError), (-1, ValueError),
                                          ("2", TypeError), (True, TypeError)])
def test_a_bad_limit_is_refused_at_the_decorator(clean_registry, value, error):
    from liteq import task
    with pytest.raises(error, match="concurrency"):
        task(concurrency=value)


def test_a_bad_queue_limit_stops_liteqd_naming_it(daemons):
    d = daemons.start("--queue-limit", "emails=0", app=APP, ready=False)
    assert d.wait(timeout=20) != 0
    assert "emails" in d.stderr() and "at least 1" in d.stderr()
