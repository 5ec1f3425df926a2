"""Several hosts on one PostgreSQL queue, under stress: cron across hosts, the schema
race of daemons starting together, load from many producers, and a TTIN/TTOU storm
during a drain. (The shared drain, crashes and frozen hosts: test_hosts.py.)

Each daemon runs in UTS and PID namespaces of its own (tests/support/hosts.py). Tasks record
each execution themselves in one O_APPEND write, so runs are counted from their side
effects, not from the database. The only time bounds asserted are the documented
ones, with CI_SLACK. The SQLite case of `db` is skipped (hosts.py says why).
"""

import json
import signal
import time
from collections import Counter

import pytest

from liteq.backends.postgres.schema import SCHEMA_VERSION

from support import pg_helpers
from support import APPS
from support.daemon_helpers import LITEQCTL, PYTHON
from support.processes import read_lines, wait_for
from support.task_table import status_counts, task_rows, worker_rows
from support.fault_helpers import CI_SLACK, FAULT_APP, executions, load_app_module

HEARTBEAT = 0.5  # daemon_helpers.FAST_ARGS
NAMES = ("host-a", "host-b", "host-c")


# ---- cron across hosts -----------------------------------------------------------------------

PERIOD = 2.0

# Every daemon imports this app and registers the schedule (one row by name); each
# fire's task appends "OCCURRENCE HOSTNAME STARTED" (epoch seconds) in one write.
CRON_APP = '''
import os
import socket
import time

from liteq import current_task, register_schedule, task
from liteq.backends import get_backend


@task(max_retries=0)
def occurrence(path):
    """Record which occurrence this run stands for (its run_at), where and when it ran."""
    started = time.time()
    run_at = get_backend().get_task(current_task.id)["run_at"]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{{run_at!r}} {{socket.gethostname()}} {{started!r}}\\n".encode())
    finally:
        os.close(fd)


register_schedule(occurrence, "* * * * * */2", {path!r}, name="every-two-seconds")
'''


def _ran(log) -> list:
    """(occurrence, hostname, started) per line of the cron executions file."""
    return [(float(o), h, float(s)) for o, h, s in (line.split() for line in read_lines(log))]


def _fires(started) -> list:
    """(occurrence, firing host, task id) of every schedule.fired event, oldest first."""
    return sorted((occ, name, tid) for name, h in started.items()
                  for ev in h.events("schedule.fired")
                  for occ, tid in zip(ev["occurrences"], ev["task_ids"]))


def test_cron_across_hosts_fires_each_occurrence_once_and_survives_its_firer(hosts):
    log = hosts.path("occurrences.txt")
    hosts.app = hosts.path("cron_app.py")
    with open(hosts.app, "w") as f:
        f.write(CRON_APP.format(path=log))
    started = {name: hosts.host(name, "--concurrency", "1") for name in NAMES}

    # Crash the host that fired last, once its task is done (a run cut short would
    # rightly run again after reclaim) and the next occurrence is still ahead.
    def fired_and_done():
        fires = _fires(started)
        if len(fires) < 4:
            return None
        occ, firer, tid = fires[-1]
        if task_rows(hosts.db, [tid]).get(tid, {}).get("status") != "done":
            return None
        return (occ, firer) if time.time() < occ + PERIOD - 0.8 else None
    crashed_occ, firer = wait_for(fired_and_done, 30, lambda: f"no crash point\n{hosts.dump()}",
                                  interval=0.05)
    started[firer].crash()
    last = crashed_occ + 5 * PERIOD
    wait_for(lambda: any(o >= last for o, _, _ in _ran(log)), 5 * PERIOD + 10,
             lambda: f"the schedule stopped after the crash\n{hosts.dump()}", interval=0.1)

    ran = _ran(log)
    fires = _fires(started)
    print(f"crashed {firer} after it fired {crashed_occ}; fired by: "
          f"{[(o - fires[0][0], n) for o, n, _ in fires]}")
    occurrences = [o for o, _, _ in ran]
    fired = [o for o, _, _ in fires]
    assert len(set(fired)) == len(fired), f"an occurrence fired twice: {fired}"
    assert len(set(occurrences)) == len(occurrences), f"an occurrence ran twice: {ran}"
    assert set(occurrences) == {o for o in fired if o <= max(occurrences)}
    gaps = {round(b - a, 3) for a, b in zip(sorted(occurrences), sorted(occurrences)[1:])}
    assert gaps == {PERIOD}, f"an occurrence was skipped: {sorted(occurrences)}"
    # The next occurrence fired on another host, on time or within a heartbeat.
    after = {o: (n, s) for o, n, s in ran}[crashed_occ + PERIOD]
    next_firer = {o: n for o, n, _ in fires}[crashed_occ + PERIOD]
    assert next_firer != firer and after[0] != firer
    late = after[1] - (crashed_occ + PERIOD)
    print(f"the occurrence after the crash started {late:.3f} s after its time on {after[0]}")
    assert late <= HEARTBEAT + CI_SLACK


# ---- the schema race -------------------------------------------------------------------------

def _tables(db) -> set:
    """The tables in the test's schema (the URL's search_path)."""
    return {r["table_name"] for r in pg_helpers.rows(
        db, "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema()")}


def test_five_daemons_starting_together_on_an_empty_schema_migrate_once_and_all_start(hosts):
    assert _tables(hosts.db) == set(), "the schema is not empty before the daemons start"
    names = [f"host-{i}" for i in range(1, 6)]
    # Launched back to back, none waited for: they race to create the tables.
    started = [hosts.host(name, "--concurrency", "1", ready=False) for name in names]
    for h in started:
        h.wait_ready(timeout=60)  # five start at once: a loaded machine takes its time
    began = sorted(h.events("daemon.starting")[0]["timestamp"] for h in started)
    print(f"daemon.starting from {began[0]} to {began[-1]}")
    assert all(h.alive() for h in started)
    assert not [h.label for h in started if h.events("daemon.fatal")]
    migrations = pg_helpers.rows(hosts.db, "SELECT version FROM liteq_migrations ORDER BY 1")
    assert [r["version"] for r in migrations] == list(range(1, SCHEMA_VERSION + 1))
    assert {"tasks", "workers", "schedules", "liteq_migrations"} <= _tables(hosts.db)
    assert sorted(w["hostname"] for w in worker_rows(hosts.db)) == names


# ---- load: 8 producers x 5,000 tasks against 3 hosts -----------------------------------------

PRODUCERS = 8
PER_PRODUCER = 5000

# A producer process: alternately 50 single .delay() calls and one .map() of 100;
# writes the ids it was given to OUT (renamed into place when complete).
PRODUCER = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
import fault_app
log, out, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
ids = []
while len(ids) < n:
    for _ in range(min(50, n - len(ids))):
        ids.append(fault_app.work_on_host.delay(log))
    batch = min(100, n - len(ids))
    if batch:
        ids += fault_app.work_on_host.map([log] * batch)
with open(out + ".tmp", "w") as f:
    f.write("\n".join(map(str, ids)) + "\n")
os.rename(out + ".tmp", out)
'''


def _hosts_of(log) -> Counter:
    """Executions per hostname ("TASK_ID PID HOSTNAME" lines)."""
    return Counter(line.split()[2] for line in read_lines(log))


@pytest.mark.timeout(300)
def test_8_producers_5000_tasks_each_against_3_hosts_each_executed_exactly_once(hosts):
    started = [hosts.host(name, "--concurrency", "2") for name in NAMES]
    log = hosts.path("executions.txt")
    outs = [hosts.path(f"producer{n}.ids") for n in range(PRODUCERS)]
    producers = [hosts.popen([PYTHON, "-c", PRODUCER, APPS, log, out, str(PER_PRODUCER)])
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

    wait_for(lambda: len(read_lines(log)) >= total and
             status_counts(hosts.db).get("done", 0) >= total,
             max(deadline - time.monotonic(), 30),
             lambda: f"not drained: {status_counts(hosts.db)}\n{hosts.dump()}", interval=0.5)
    runs = executions(log)
    assert len(read_lines(log)) == total, "more executions than tasks"
    assert set(runs) == set(ids), "some task never ran"
    assert set(runs.values()) == {1}
    assert status_counts(hosts.db) == {"done": total}
    per_host = _hosts_of(log)
    print(f"executions per host: {dict(per_host)}")
    assert set(per_host) == set(NAMES), "not every host took part"
    assert all(h.alive() for h in started)


# ---- a TTIN/TTOU storm and scale during a drain across hosts ----------------------------

def _sizes(host) -> list:
    """The pool sizes `liteqctl status --json` reports on that host."""
    out = host.ctl("status", "--json")
    assert out.returncode == 0, out.stderr
    return [p["size"] for p in json.loads(out.stdout)["pools"]]


def test_ttin_ttou_storm_and_scale_during_a_drain_across_hosts_lose_nothing(hosts):
    app = load_app_module(FAULT_APP)
    a, b, c = (hosts.host(name, "--concurrency", "2") for name in NAMES)
    log = hosts.path("executions.txt")
    ids = app.work_on_host.starmap([(log, 0.02)] * 3000)
    wait_for(lambda: len(read_lines(log)) >= 100, 30, lambda: f"not started\n{hosts.dump()}")
    # host-a's supervisor is pid 1 of its namespace: signal it by its pid out here.
    for n in range(40):
        a.supervisor.send_signal(signal.SIGTTIN if n % 2 == 0 else signal.SIGTTOU)
        time.sleep(0.05)
    out = b.ctl("scale", "3")
    assert out.returncode == 0, out.stderr
    assert "now has 3 children" in out.stdout
    assert status_counts(hosts.db).get("pending", 0) > 0, "the drain ended before the storm"

    # Python runs a signal's handler once for several deliveries that come before it
    # gets to it, so a slow turn of host-a's loop may merge two of one kind: its size
    # ends where its last pool.scaled event says (2 when none merged).
    time.sleep(1.0)
    sizes_a = [e["size"] for e in a.events("pool.scaled")]
    print(f"host-a scaled {len(sizes_a)} times for 40 signals: {sizes_a}")
    assert len(sizes_a) >= 20 and all(1 <= n <= 4 for n in sizes_a), sizes_a
    expected = {"host-a": sizes_a[-1], "host-b": 3, "host-c": 2}

    def listed():
        out = c.run_here([LITEQCTL, "--db", hosts.db, "status", "--all", "--json"])
        assert out.returncode == 0, out.stderr
        rows = {r["hostname"]: r["concurrency"] for r in json.loads(out.stdout)}
        return rows if rows == expected else None
    wait_for(listed, 15, lambda: f"status --all from host-c never showed {expected}\n"
                                 f"{hosts.dump()}")

    wait_for(lambda: status_counts(hosts.db).get("done", 0) == len(ids), 60,
             lambda: f"not drained: {status_counts(hosts.db)}\n{hosts.dump()}", interval=0.5)
    assert status_counts(hosts.db) == {"done": len(ids)}
    runs = executions(log)
    assert set(runs) == set(ids), "some task never ran"
    assert set(runs.values()) == {1}, f"{sum(n > 1 for n in runs.values())} ran twice"
    assert (_sizes(a), _sizes(b), _sizes(c)) == ([sizes_a[-1]], [3], [2])
    for h in (a, b, c):
        assert h.alive()
        assert not h.events("child.exited", reason="crashed"), h.label
