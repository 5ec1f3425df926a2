"""Who is dead: neither a wall-clock step nor a database outage makes a live daemon look
dead to another one (liteqd/liveness.py).

A clock step is made with libfaketime (Debian's `faketime`; .ci/run installs it): the
daemons run with it preloaded, reading their clock's offset from a file the test
rewrites, while their monotonic clocks stay true. An outage is a throwaway PostgreSQL
cluster (tests/support/pg_cluster.py) stopped for longer than the old reconnect back-off
could bridge.
"""

import glob
import os
import time

import pytest

from support import hosts as hosts_module
from support.daemon_helpers import load_app_module, running
from support.processes import wait_for
from support.task_table import wait_statuses
from support.fault_helpers import FAULT_APP, Lab, executions

FAKETIME_LIBS = "/usr/lib/*/faketime/libfaketime.so.1"


@pytest.fixture
def app(fault_app):
    """This file's tasks: tests/apps/fault_app.py, run by the `lab` daemons."""
    return fault_app


def faketime_env(offset_file) -> dict:
    """The environment that makes a process's wall clock read `offset_file` (e.g. "+0",
    "+3600") at every call, its monotonic clocks left alone."""
    libs = sorted(glob.glob(FAKETIME_LIBS))
    if not libs:
        pytest.skip("needs libfaketime (Debian package faketime; .ci/run installs it)")
    return {"LD_PRELOAD": libs[0], "FAKETIME_TIMESTAMP_FILE": offset_file,
            "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1"}


def set_offset(path, offset):
    with open(path + ".tmp", "w") as f:
        f.write(offset + "\n")
    os.rename(path + ".tmp", path)


def hold_on_each(lab, app, log, seconds):
    """Two never-retried tasks of `seconds` on each daemon's own queue (qa, qb); returns
    their ids once all of them have started."""
    ids = []
    for queue in ("qa", "qb"):
        ids += [app.hold_without_sleep.apply_async((log, seconds), queue=queue)
                for _ in range(2)]
    wait_for(lambda: len(executions(log)) == len(ids), 30,
             lambda: f"not every task started\n{lab.dump()}")
    return ids


def assert_each_ran_once_on_its_daemon(lab, log, ids, daemons):
    rows = wait_statuses(lab.db, ids, timeout=60, dump=lab.dump)
    assert {i: r["status"] for i, r in rows.items()} == {i: "done" for i in ids}, lab.dump()
    assert executions(log) == {i: 1 for i in ids}
    for d in daemons:
        assert not d.events("task.reclaimed"), d.dump()
        assert not d.events("task.outcome_refused"), d.dump()
        assert len(d.events("task.succeeded")) == 2, d.dump()


def test_a_forward_clock_step_makes_no_live_daemon_of_this_host_look_dead(lab, app):
    # Both daemons' wall clocks jump an hour ahead while each runs two tasks: every
    # heartbeat written before the step looks an hour old by the new clock. A daemon of
    # this host is judged by its pid and start time, so neither takes the other's tasks.
    clock = lab.path("clock-offset")
    set_offset(clock, "+0")
    env = faketime_env(clock)
    log = lab.path("executions.txt")
    daemons = [lab.start("--concurrency", "2", "--queues", queue,
                         "--socket", lab.path(f"{queue}.sock"), env=env)
               for queue in ("qa", "qb")]
    ids = hold_on_each(lab, app, log, 4)
    set_offset(clock, "+3600")
    assert_each_ran_once_on_its_daemon(lab, log, ids, daemons)


@pytest.fixture
def stepped_pg(throwaway_pg, monkeypatch):
    """The throwaway cluster restarted under libfaketime: the server's clock reads its
    offset from the returned file ("+0" at first)."""
    clock = os.path.join(throwaway_pg.base, "clock-offset")  # the server's user reads it
    set_offset(clock, "+0")
    throwaway_pg.stop()
    with monkeypatch.context() as m:
        for name, value in faketime_env(clock).items():
            m.setenv(name, value)
        throwaway_pg.start()
    return clock


@pytest.mark.timeout(120)
def test_a_forward_clock_step_on_the_server_makes_no_live_daemon_look_dead(
        throwaway_pg, stepped_pg, outage_lab):
    # The server's clock jumps an hour ahead: by it, every heartbeat written before the
    # step is an hour old, the one of the daemon that judges included.
    cluster, lab = throwaway_pg, outage_lab
    app = load_app_module(FAULT_APP)
    log = lab.path("executions.txt")
    daemons = [lab.start("--db", cluster.url_for(queue), "--concurrency", "2",
                         "--queues", queue, "--socket", lab.path(f"{queue}.sock"))
               for queue in ("qa", "qb")]
    ids = hold_on_each(lab, app, log, 4)
    set_offset(stepped_pg, "+3600")
    assert_each_ran_once_on_its_daemon(lab, log, ids, daemons)


@pytest.fixture
def stepped_hosts(throwaway_pg, stepped_pg, workdir, monkeypatch):
    """tests/support/hosts.py's hosts, on the throwaway cluster whose clock steps."""
    problem = hosts_module._check_namespaces()
    if problem:
        pytest.skip(f"several hosts are simulated with Linux namespaces: {problem}")
    ds = hosts_module.Hosts(throwaway_pg.url, workdir,
                            socket=os.path.join(workdir, "liteqd.sock"))
    with running(ds, monkeypatch) as hosts:
        yield hosts


@pytest.mark.timeout(120)
def test_a_forward_clock_step_on_the_server_makes_no_live_host_look_dead(
        stepped_pg, stepped_hosts):
    # Daemons on two hosts judge each other by their heartbeats: by whether they
    # change, on the judge's own monotonic clock, not by their age on any wall clock.
    hosts = stepped_hosts
    app = load_app_module(FAULT_APP)
    log = hosts.path("executions.txt")
    daemons = [hosts.host(f"host-{queue}", "--concurrency", "2", "--queues", queue)
               for queue in ("qa", "qb")]
    ids = hold_on_each(hosts, app, log, 4)
    set_offset(stepped_pg, "+3600")
    assert_each_ran_once_on_its_daemon(hosts, log, ids, daemons)


# ---- a database outage that outlasts stale-after ---------------------------------------------

@pytest.fixture
def outage_lab(throwaway_pg, workdir, monkeypatch):
    """A Lab on the throwaway cluster; every process is killed before it is removed."""
    ds = Lab(throwaway_pg.url, workdir, socket=os.path.join(workdir, "liteqd.sock"))
    with running(ds, monkeypatch) as lab:
        yield lab


OUTAGE_S = 22
STALE_S = 20


@pytest.mark.timeout(240)
def test_an_outage_longer_than_stale_after_makes_no_task_run_twice(throwaway_pg, outage_lab):
    # Two daemons each run two tasks that last through the outage. Nobody can write a
    # heartbeat while the server is down, so that time does not count: the first
    # daemon back waits a full stale-after of its own before it judges anyone, and the
    # others are back long before (their back-off is capped well under stale-after).
    cluster, lab = throwaway_pg, outage_lab
    app = load_app_module(FAULT_APP)
    log = lab.path("executions.txt")
    daemons = [lab.start("--db", cluster.url_for(queue), "--concurrency", "2",
                         "--queues", queue, "--stale-after", str(STALE_S),
                         "--socket", lab.path(f"{queue}.sock"))
               for queue in ("qa", "qb")]
    ids = hold_on_each(lab, app, log, OUTAGE_S + STALE_S + 5)
    cluster.stop()
    time.sleep(OUTAGE_S)
    cluster.start()
    for d in daemons:
        d.wait_event("db.recovered", timeout=30)
    assert_each_ran_once_on_its_daemon(lab, log, ids, daemons)
