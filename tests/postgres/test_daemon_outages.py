"""Outages of a PostgreSQL queue under running daemons: a server restarted in the middle
of a drain, connections killed with pg_terminate_backend, a server that is down when
liteqd starts, and wake-ups (NOTIFY) that never arrive.

Every test runs on a throwaway cluster of its own (tests/support/pg_cluster.py), never on
the shared server; its daemons are real liteqd processes (tests/support/daemon_helpers.py)
each with its own ?application_name= in its --db URL, so the test can pick out
that daemon's sessions in pg_stat_activity. The tasks record each execution
themselves (tests/apps/fault_app.py), so "nothing lost" is counted from their
side effects, not from the statuses alone.

The rules asserted here: the daemon never exits because of an outage,
logs db.unavailable once per outage and db.recovered when it is back, keeps the
outcomes of tasks that finished meanwhile and records them after the reconnect,
reconnects with back-off, and opens its LISTEN channel again; every task ends
done. Time bounds are the documented ones, with fault_helpers.CI_SLACK of extra room.
"""

import os
import socket
import threading
import time

import pytest

from support import pg_helpers
from liteq import backends
from liteq.errors import DatabaseError, DatabaseUnavailable

from support.daemon_helpers import load_app_module, running
from support.processes import read_lines, wait_for
from support.task_table import count_tasks, status_counts, task_row, wait_statuses
from support.fault_helpers import CI_SLACK, FAULT_APP, Lab, executions
from support.pg_proxy import AnswerLoser
from support.systemd_helpers import NotifyListener

OUTAGE_EVENTS = ("db.unavailable", "db.recovered")
WAKE_EVENTS = ("wake.lost", "wake.unavailable", "wake.restored")


@pytest.fixture
def lab(throwaway_pg, workdir, monkeypatch):
    """A fault_helpers.Lab whose queue is the throwaway cluster (LITEQ_DB), with
    LITEQ_SOCKET in workdir; every process is killed before the cluster is removed."""
    ds = Lab(throwaway_pg.url, workdir, socket=os.path.join(workdir, "liteqd.sock"))
    with running(ds, monkeypatch) as lab:
        yield lab


@pytest.fixture
def app(lab):
    """tests/apps/fault_app.py in the test process (for .delay())."""
    return load_app_module(FAULT_APP)


def start_daemon(lab, cluster, name, *args, ready=True, env=None):
    """liteqd (fast flags, then ARGS) on the cluster as application_name `name`, with a
    control socket of its own."""
    return lab.start("--db", cluster.url_for(name), "--socket", lab.path(f"{name}.sock"),
                     *args, ready=ready, env=env)


def sequence(daemon, names):
    """The names of `daemon`'s log events among `names`, in order."""
    return [e["event"] for e in daemon.events() if e.get("event") in names]


def between(daemon, first, last, event):
    """`event`s logged after the first `first` and before the first `last` after it."""
    out, inside = [], False
    for e in daemon.events():
        if not inside:
            inside = e.get("event") == first
        elif e.get("event") == last:
            return out
        elif e.get("event") == event:
            out.append(e)
    raise AssertionError(f"{daemon.label}: no {first} followed by {last}\n{daemon.dump()}")


def listen_sessions(cluster, name):
    """The sessions of application_name `name` that LISTEN (the daemon's wake channel)."""
    return [s for s in cluster.sessions(name) if s["query"].startswith("LISTEN")]


def start_times(path) -> dict:
    """{task id: epoch time of its first start} from a file of fault_app.stamp lines."""
    out = {}
    for line in read_lines(path):
        task_id, _pid, when = line.split()
        out.setdefault(int(task_id), float(when))
    return out


def assert_still_the_same_daemon(d):
    """Alive, and ready once: it neither exited nor restarted itself."""
    assert d.alive(), f"{d.label} exited\n{d.dump()}"
    assert len(d.events("daemon.ready")) == 1, d.dump()
    assert not d.events("daemon.stopped"), d.dump()


def wake_latency(app, lab, name, timeout=10.0):
    """Enqueue one stamp task and return the seconds from .delay() to its start."""
    path = lab.path(f"latency-{name}.txt")
    before = time.time()
    task_id = app.stamp.delay(path)
    started = wait_for(lambda: start_times(path).get(task_id), timeout,
                       lambda: f"task {task_id} did not start within {timeout} s\n"
                               f"{lab.dump()}")
    return started - before


# ---- a server restart in the middle of a drain ----------------------------------------------

RESTART_TOTAL = 5000


@pytest.mark.timeout(180)
def test_server_restart_in_the_middle_of_a_drain_loses_nothing(throwaway_pg, lab, app):
    cluster = throwaway_pg
    log = lab.path("executions.txt")
    ids = app.work.starmap([(log, 0.004)] * RESTART_TOTAL)
    # stale-after as in production (far longer than the outage), so neither daemon
    # takes the other's tasks while both are cut off; a long fallback poll, so the
    # wake-up measured at the end can only have come through LISTEN.
    poll_s = 20.0
    # A deeper prefetch, so children have tasks in hand to run while the server is down.
    flags = ("--concurrency", "2", "--stale-after", "30", "--poll-interval", str(poll_s),
             "--prefetch", "4")
    daemons = [start_daemon(lab, cluster, name, *flags) for name in ("d1", "d2")]
    children = [d.wait_children(2) for d in daemons]
    wait_for(lambda: len(read_lines(log)) >= RESTART_TOTAL // 3, 90,
             lambda: f"a third of the tasks not run\n{lab.dump()}", interval=0.01)
    cluster.stop()
    done_before = len(read_lines(log))
    time.sleep(2)
    cluster.start()
    assert done_before < RESTART_TOTAL, "the drain ended before the restart"

    wait_for(lambda: status_counts(cluster.url).get("done", 0) >= RESTART_TOTAL, 120,
             lambda: f"not drained: {status_counts(cluster.url)}\n{lab.dump()}", interval=0.5)
    assert status_counts(cluster.url) == {"done": RESTART_TOTAL}
    runs = executions(log)
    assert set(runs) == set(ids), "a task that is done never ran"
    # At least once: a task whose claim or outcome was in flight at the moment the
    # server stopped may run again. With stale-after longer than the outage there
    # should be none; a few are allowed, thousands would be a bug.
    twice = sorted(i for i, n in runs.items() if n > 1)
    print(f"executed more than once: {len(twice)} of {RESTART_TOTAL} {twice[:20]}")
    assert len(twice) <= 12, twice

    waited = []
    for d, kids in zip(daemons, children):
        assert_still_the_same_daemon(d)
        assert d.worker_pids() == kids, "the outage cost children their lives"
        assert sequence(d, OUTAGE_EVENTS) == list(OUTAGE_EVENTS), d.dump()
        # Tasks a child started while the server was down: their outcomes could only
        # wait in memory, and were recorded (task.succeeded is logged once the
        # database has recorded it) by this same daemon after the reconnect.
        started = between(d, "db.unavailable", "db.recovered", "task.started")
        recovered_at = [e["event"] for e in d.events()].index("db.recovered")
        succeeded_after = {e["task_id"] for e in d.events()[recovered_at:]
                           if e.get("event") == "task.succeeded"}
        for e in started:
            assert e["task_id"] in succeeded_after, (e, d.dump())
        waited += [e["task_id"] for e in started]
        assert not d.events("task.outcome_refused"), d.dump()
    print(f"outcomes that waited in memory during the outage: {len(waited)}")
    assert waited, "no task ran while the server was down (the test proved nothing)"

    # LISTEN is back: each daemon logged that it lost the channel and that it is
    # restored, holds a LISTEN session again, and a new task starts on a wake-up
    # (the fallback poll is 20 s away).
    for d, name in zip(daemons, ("d1", "d2")):
        assert sequence(d, WAKE_EVENTS) == ["wake.lost", "wake.restored"], d.dump()
        assert len(listen_sessions(cluster, name)) == 1, cluster.sessions(name)
    backends.forget_backends()  # the test's own connection died with the restart
    latency = wake_latency(app, lab, "after-restart")
    print(f"wake-up latency after the restart: {latency * 1000:.1f} ms")
    assert latency < 1 + CI_SLACK < poll_s


# ---- killed connections -----------------------------------------------------------------------

KILLS = 20
WAVE = 150


@pytest.mark.timeout(150)
def test_connections_killed_20_times_during_a_drain_lose_nothing(throwaway_pg, lab, app):
    cluster = throwaway_pg
    d = start_daemon(lab, cluster, "victim", "--concurrency", "2")
    children = d.wait_children(2)
    log = lab.path("executions.txt")
    ids = []
    for kill in range(KILLS):
        # A fresh wave each time, so every kill lands in the middle of a drain.
        ran = len(read_lines(log))
        ids += app.work.starmap([(log, 0.002)] * WAVE)
        wait_for(lambda: len(read_lines(log)) > ran, 30,
                 lambda: f"the wave of kill {kill + 1} did not start\n{d.dump()}",
                 interval=0.005)
        killed = cluster.terminate("victim")
        assert killed, f"kill {kill + 1}: the daemon had no session\n{d.dump()}"
        wait_for(lambda: len(d.events("db.recovered")) > kill, 30,
                 lambda: f"kill {kill + 1}: no db.recovered\n{d.dump()}", interval=0.02)
    wait_statuses(cluster.url, ids, "done", timeout=60, dump=d.dump)

    runs = executions(log)
    assert set(runs) == set(ids) and len(ids) == KILLS * WAVE
    twice = sorted(i for i, n in runs.items() if n > 1)
    print(f"executed more than once: {len(twice)} of {len(ids)} {twice[:20]}")
    assert len(twice) <= KILLS, twice
    assert_still_the_same_daemon(d)
    assert d.worker_pids() == children
    # One db.unavailable per outage (not one per retry), each followed by its
    # db.recovered.
    assert sequence(d, OUTAGE_EVENTS) == list(OUTAGE_EVENTS) * KILLS, d.dump()
    # Each lost LISTEN channel was opened again (wake.lost, then wake.restored).
    wait_for(lambda: sequence(d, WAKE_EVENTS)[-1:] == ["wake.restored"], 10,
             lambda: f"the wake-up channel is not back\n{d.dump()}")
    wake = sequence(d, WAKE_EVENTS)
    assert wake == ["wake.lost", "wake.restored"] * (len(wake) // 2), wake
    assert len(listen_sessions(cluster, "victim")) == 1, cluster.sessions("victim")


# ---- the server is down when liteqd starts ------------------------------------------------------

@pytest.mark.timeout(90)
def test_a_daemon_started_while_the_server_is_down_waits_for_it(throwaway_pg, lab, app,
                                                                    monkeypatch):
    cluster = throwaway_pg
    cluster.stop()
    listener = NotifyListener(lab.path("notify.sock"))
    try:
        d = start_daemon(lab, cluster, "early", ready=False,
                         env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": None,
                              "WATCHDOG_PID": None})
        # It retries with back-off (0.5, 1, 2 s ...), telling systemd each time.
        waiting, at = [], 0
        while len(waiting) < 3:
            at = listener.wait("STATUS", after=at, timeout=15)
            status = listener.messages[at][1]["STATUS"]
            assert status.startswith("waiting for the database"), status
            waiting.append(status)
            at += 1
        assert d.alive(), d.dump()
        assert len(d.events("db.unavailable")) == 1, d.dump()
        assert not d.events("daemon.ready")

        # .delay() against the stopped server fails within the connect timeout.
        monkeypatch.setenv("LITEQ_CONNECT_TIMEOUT", "2")
        backends.forget_backends()
        began = time.monotonic()
        with pytest.raises(DatabaseError, match="is unavailable") as info:
            app.work.delay(lab.path("never.txt"))
        took = time.monotonic() - began
        assert isinstance(info.value, DatabaseUnavailable)
        assert took < 2 + CI_SLACK, took

        cluster.start()
        d.wait_ready(timeout=30)
        listener.wait("READY", "1", timeout=15)
        assert sequence(d, OUTAGE_EVENTS) == list(OUTAGE_EVENTS), d.dump()
    finally:
        listener.close()
    backends.forget_backends()
    assert count_tasks(cluster.url) == 0, "the failed .delay() wrote a task"
    log = lab.path("executions.txt")
    task_id = app.work.delay(log)
    wait_statuses(cluster.url, [task_id], "done", timeout=15, dump=d.dump)
    assert executions(log) == {task_id: 1}


# ---- lost wake-ups ---------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_without_notify_every_task_still_runs_within_the_poll_interval(throwaway_pg, lab,
                                                                         app):
    cluster = throwaway_pg
    poll_s = 0.5  # FAST_ARGS
    polling = start_daemon(lab, cluster, "polling", "--poll-only", "--queues", "p",
                           "--concurrency", "1")
    listening = start_daemon(lab, cluster, "listening", "--queues", "l", "--concurrency", "1")
    assert not listen_sessions(cluster, "polling"), cluster.sessions("polling")
    (listen,) = listen_sessions(cluster, "listening")
    path = lab.path("stamps.txt")
    app.stamp.apply_async([path], queue="l")  # the test's own connection, opened now

    # Kill the LISTEN session and keep it from coming back: the database takes no new
    # connections for a while (the sessions already open go on).
    pg_helpers.rows(cluster.admin_url, "ALTER DATABASE test ALLOW_CONNECTIONS false")
    try:
        assert cluster.terminate(pids=[listen["pid"]]) == [listen["pid"]]
        listening.wait_event("wake.lost")
        enqueued = {}
        for _ in range(10):
            for queue in ("p", "l"):
                enqueued[app.stamp.apply_async([path], queue=queue)] = (queue, time.time())
            time.sleep(0.25)
        wait_for(lambda: set(enqueued) <= set(start_times(path)), 15,
                 lambda: f"not every task ran: {len(start_times(path))}\n{lab.dump()}")
        assert not listen_sessions(cluster, "listening"), "the channel came back too soon"
    finally:
        pg_helpers.rows(cluster.admin_url, "ALTER DATABASE test ALLOW_CONNECTIONS true")
    starts = start_times(path)
    latencies = {q: [starts[i] - t for i, (qq, t) in enqueued.items() if qq == q]
                 for q in ("p", "l")}
    for queue, values in latencies.items():
        print(f"queue {queue}: start latency without NOTIFY, max {max(values) * 1000:.0f} ms")
        assert max(values) < poll_s + CI_SLACK, values

    # The channel comes back once the database takes connections again.
    listening.wait_event("wake.restored", timeout=15)
    wait_for(lambda: listen_sessions(cluster, "listening"), 10,
             lambda: f"no LISTEN again: {cluster.sessions('listening')}")
    for d in (polling, listening):
        assert_still_the_same_daemon(d)
        assert not d.events("db.unavailable"), d.dump()
    assert not polling.events("wake.lost") and not listen_sessions(cluster, "polling")


# ---- back-off while the server is away -------------------------------------------------------

class ConnectCounter:
    """A TCP listener on the stopped server's port that counts connection attempts and
    drops each one at once (a server that goes away mid-handshake).

    libpq may open two TCP connections for one attempt (sslmode=prefer tries again
    without SSL), so connections less than 0.2 s apart count as one attempt.
    """

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.times = []
        self.started = time.monotonic()
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.times.append(time.monotonic())
            conn.close()

    def attempts(self) -> list:
        """The monotonic times of the attempts so far."""
        out = []
        for t in list(self.times):
            if not out or t - out[-1] >= 0.2:
                out.append(t)
        return out

    def close(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()


def next_status(listener, after, timeout, prefix=""):
    """The index of the first STATUS= message from `after` on that starts with `prefix`."""
    deadline = time.monotonic() + timeout
    while True:
        at = listener.wait("STATUS", after=after, timeout=max(deadline - time.monotonic(), 0))
        if listener.messages[at][1]["STATUS"].startswith(prefix):
            return at
        after = at + 1


@pytest.mark.timeout(90)
def test_a_running_daemon_retries_with_back_off_and_says_so_once(throwaway_pg, lab, app):
    cluster = throwaway_pg
    listener = NotifyListener(lab.path("notify.sock"))
    try:
        # stale-after as in production: the back-off is capped at a quarter of it.
        d = start_daemon(lab, cluster, "patient", "--concurrency", "1", "--stale-after", "30",
                         env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": None,
                              "WATCHDOG_PID": None})
        ready = listener.wait("READY", "1")
        listener.collect(0.3)  # the STATUS of the first loop turns
        cluster.stop()
        counter = ConnectCounter(cluster.port)
        try:
            watch_s = 6.0
            # systemd hears of the outage at once, not at the next 5-second refresh.
            down = next_status(listener, ready + 1, 3.0, prefix="database unavailable")
            time.sleep(max(0.0, watch_s - (time.monotonic() - counter.started)))
            attempts = counter.attempts()
        finally:
            counter.close()
        gaps = [round(b - a, 2) for a, b in zip(attempts, attempts[1:])]
        print(f"connection attempts in {watch_s} s: {len(attempts)}, gaps {gaps}")
        # Back-off 0.5, 1, 2, 4 s: 3 or 4 attempts in 6 s (the heartbeat, every 0.5 s,
        # reconnecting on its own, made 12 or more).
        assert 2 <= len(attempts) <= 4, gaps
        assert gaps[-1] >= 1.5, gaps
        assert d.alive() and len(d.events("db.unavailable")) == 1, d.dump()
        assert "(database unavailable)" in d.title(d.ps)

        cluster.start()
        d.wait_event("db.recovered", timeout=30)
        up = listener.wait("STATUS", after=down + 1, timeout=5)
        while "unavailable" in listener.messages[up][1]["STATUS"]:
            up = listener.wait("STATUS", after=up + 1, timeout=5)
    finally:
        listener.close()
    log = lab.path("executions.txt")
    backends.forget_backends()
    task_id = app.work.delay(log)
    wait_statuses(cluster.url, [task_id], "done", timeout=15, dump=d.dump)
    assert_still_the_same_daemon(d)
    assert sequence(d, OUTAGE_EVENTS) == list(OUTAGE_EVENTS), d.dump()


# ---- a claim whose answer the network lost ------------------------------------------------

@pytest.mark.timeout(60)
def test_a_claim_whose_commit_answer_was_lost_is_given_back(throwaway_pg, lab, app):
    cluster = throwaway_pg
    proxy = AnswerLoser(cluster.port)
    try:
        # The fallback poll is far away: once the daemon is ready (its first claim is
        # made in the loop turn that logs daemon.ready), the next COMMIT is the claim
        # the wake-up causes.
        d = lab.start("--db", proxy.url(application_name="lossy"), "--socket",
                      lab.path("lossy.sock"), "--concurrency", "1", "--poll-interval", "30")
        worker_id = d.events("daemon.ready")[0]["worker_id"]
        log = lab.path("executions.txt")
        proxy.arm()
        task_id = app.work.delay(log)
        wait_for(proxy.lost.is_set, 10, lambda: f"no COMMIT answer was lost\n{d.dump()}")
        # The claim committed, and the daemon never heard so: its connection broke.
        row = task_row(cluster.url, task_id)
        assert (row["status"], row["worker_id"]) == ("running", worker_id), row
        d.wait_event("db.recovered", timeout=15)
        # Held by a live daemon that does not know it has it: without a check after
        # the outage it would stay running for good.
        wait_statuses(cluster.url, [task_id], "done", timeout=15, dump=d.dump)
        assert executions(log) == {task_id: 1}
        assert [e["task_id"] for e in d.events("task.released")] == [task_id], d.dump()
        assert task_row(cluster.url, task_id)["attempts"] == 1  # the lost claim uncounted
        assert_still_the_same_daemon(d)
        assert sequence(d, OUTAGE_EVENTS) == list(OUTAGE_EVENTS), d.dump()
    finally:
        proxy.close()


@pytest.mark.timeout(60)
def test_a_connection_lost_at_the_first_heartbeat_is_an_outage_too(throwaway_pg, lab, app):
    cluster = throwaway_pg
    count_tasks(cluster.url)  # the schema exists: the daemon's first INSERT is its heartbeat
    proxy = AnswerLoser(cluster.port)
    try:
        proxy.arm("INSERT")
        d = lab.start("--db", proxy.url(application_name="unlucky"), "--socket",
                      lab.path("unlucky.sock"), "--concurrency", "1", ready=False)
        wait_for(proxy.lost.is_set, 15, lambda: f"no INSERT answer was lost\n{d.dump()}")
        d.wait_ready(timeout=20)
        log = lab.path("executions.txt")
        task_id = app.work.delay(log)
        wait_statuses(cluster.url, [task_id], "done", timeout=15, dump=d.dump)
        assert_still_the_same_daemon(d)
        assert sequence(d, OUTAGE_EVENTS) == list(OUTAGE_EVENTS), d.dump()
        assert d.events("db.unavailable")[0]["op"] == "heartbeat", d.dump()
    finally:
        proxy.close()
