"""What is PostgreSQL's own in the PostgreSQL backend: the schema and its advisory lock,
identity without the password, the claim's index, the one-statement .delay() and its
NOTIFY, the wake-up channel, the server's clock, and threads and fork.

Lost connections, unreachable servers and a missing psycopg: test_postgres_outages.py.
Behaviour both backends share is tested by the suites that take the `db` fixture.
"""

import json
import multiprocessing
import os
import select
import subprocess
import sys
import tempfile
import threading
import time

import psycopg
import pytest
from psycopg import pq

import liteq
from support import pg_helpers
from support.processes import wait_for
from liteq import backends
from liteq.backends.postgres import PostgresBackend, tasks as pg_tasks
from liteq.backends.postgres.schema import SCHEMA_VERSION
from liteq.backends.postgres.inserts import NOTIFY_INTERVAL_S
from liteq.errors import ConfigError, DatabaseError
from liteq.taskspec import NewTasks, TaskOptions

FORK = multiprocessing.get_context("fork")
ON_PG = pytest.mark.parametrize("db", ["postgresql"], indirect=True)
HERE = os.path.dirname(os.path.abspath(__file__))


def _many(backend, count, **options):
    args = json.dumps([[i] for i in range(count)])
    return backend.enqueue_many(NewTasks("t", args, count, TaskOptions.build(**options)))


def _wait_readable(channel, timeout=5.0):
    readable, _, _ = select.select([channel], [], [], timeout)
    return bool(readable)


# ---- schema --------------------------------------------------------------------------


def _open_at_once(url, start, out):
    try:
        if not start.wait(30):
            raise RuntimeError("start signal never came")
        backends.open_backend(url).close()
        result = "ok"
    except BaseException as exc:  # report anything to the parent
        result = repr(exc)
    with open(out, "w") as f:
        f.write(result)


@ON_PG
@pytest.mark.timeout(120)
def test_five_processes_on_an_empty_schema_create_it_once(db, workdir):
    start = FORK.Event()
    outs = [os.path.join(workdir, f"open-{n}.txt") for n in range(5)]
    procs = [FORK.Process(target=_open_at_once, args=(db, start, out)) for out in outs]
    try:
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 5
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    results = [open(out).read() for out in outs]
    assert results == ["ok"] * 5, results
    versions = pg_helpers.rows(db, "SELECT version FROM liteq_migrations ORDER BY version")
    assert [r["version"] for r in versions] == list(range(1, SCHEMA_VERSION + 1))
    schema = pg_helpers.rows(db, "SELECT current_schema() AS s")[0]["s"]
    tables = pg_helpers.rows(db, "SELECT tablename FROM pg_tables WHERE schemaname = %s "
                                 "ORDER BY 1", (schema,))
    assert [t["tablename"] for t in tables] == ["liteq_migrations", "rate_limits", "schedules",
                                                 "task_deps", "task_errors", "task_stats",
                                                 "tasks", "workers"]


@ON_PG
def test_native_types_and_high_churn_settings(backend, db):
    cols = {r["column_name"]: r for r in pg_helpers.rows(
        db, "SELECT column_name, data_type, is_identity, identity_generation FROM "
            "information_schema.columns WHERE table_name = 'tasks' "
            "AND table_schema = current_schema()")}
    assert cols["id"]["data_type"] == "bigint" and cols["id"]["identity_generation"] == "ALWAYS"
    for col in ("run_at", "created_at", "started_at", "finished_at"):
        assert cols[col]["data_type"] == "timestamp with time zone"
    assert cols["payload"]["data_type"] == cols["result"]["data_type"] == "text"
    options = pg_helpers.rows(db, "SELECT reloptions FROM pg_class WHERE oid = 'tasks'::regclass")
    assert "autovacuum_vacuum_scale_factor=0.01" in options[0]["reloptions"]


@ON_PG
def test_a_newer_schema_is_refused(backend, db):
    pg_helpers.rows(db, "INSERT INTO liteq_migrations (version) VALUES (%s)",
                    (SCHEMA_VERSION + 1,))
    with pytest.raises(DatabaseError, match="upgrade LiteQ"):
        backends.open_backend(db)


@ON_PG
def test_a_search_path_naming_no_existing_schema_is_a_clear_error(db):
    url = pg_helpers.with_query(db, options="-csearch_path=lqt_no_such_schema")
    with pytest.raises(DatabaseError, match="no schema to create the LiteQ tables in"):
        backends.open_backend(url)


# ---- identity -------------------------------------------------------------------------


def test_identity_hides_the_password():
    url = "postgres://app:s3cr%40t-pw@db.example:6432/queue?sslmode=require&password=qpw-99&a=1"
    ident = backends.identity_of(url)
    assert ident == "postgresql://app@db.example:6432/queue?a=1&sslmode=require"
    for secret in ("s3cr", "qpw-99"):
        assert secret not in ident
    assert backends.identity_of("postgresql://u@h/d") == "postgresql://u@h/d"
    assert backends.identity_of("postgresql://:only-pw@h/d") == "postgresql://h/d"


def test_a_password_never_shows_in_errors(monkeypatch):
    monkeypatch.setenv("LITEQ_CONNECT_TIMEOUT", "2")
    url = f"postgresql://root:Very-Secret-77@127.0.0.1:{_free_port()}/test"
    with pytest.raises(DatabaseError) as info:
        backends.open_backend(url)
    shown = str(info.value) + repr(info.value) + str(info.value.__cause__)
    assert "Very-Secret-77" not in shown and "127.0.0.1" in shown
    with pytest.raises(ConfigError) as bad:
        backends.open_backend("postgresql://root:Very-Secret-77@h/d?nonsense_option=1")
    assert "Very-Secret-77" not in str(bad.value) and "nonsense_option" in str(bad.value)


@ON_PG
def test_repr_and_identity_of_an_open_backend(db):
    url = db.replace("root@", "root:pw-in-url-31@")  # trust auth ignores it
    backend = backends.open_backend(url)
    try:
        assert "pw-in-url-31" not in repr(backend) + backend.identity
        assert backend.identity == backends.identity_of(db)
    finally:
        backend.close()


# ---- claim ------------------------------------------------------------------------------


@ON_PG
@pytest.mark.parametrize("queues", [["default"], ["default", "other"]])
def test_the_claim_reads_the_partial_index_in_order(backend, db, queues):
    _many(backend, 3000)
    _many(backend, 300, queue="other", priority=3)
    backend.claim("w", ["default"], 10)
    pg_helpers.rows(db, "ANALYZE tasks")
    plan = "\n".join(r["QUERY PLAN"] for r in pg_helpers.rows(
        db, "EXPLAIN " + pg_tasks.CLAIM, (queues, 4, 4, "w")))
    assert "Index Scan using tasks_claim on tasks" in plan, plan
    assert "Bitmap" not in plan and "Seq Scan" not in plan, plan
    scan = plan.split("Index Scan using tasks_claim")[1]
    assert "Sort" not in scan, plan  # each queue's rows come in claim order


@ON_PG
def test_whole_numbers_and_floats_mix_in_batched_outcomes_and_fires(backend):
    ids = _many(backend, 4)
    backend.claim("w", ["default"], 4)
    t = int(time.time())
    assert backend.record_outcomes("w", done=[(ids[0], "1", t, t + 0.5), (ids[1], "2", t - 1.5, t)],
                                   retry=[(ids[2], "e", t, 30), (ids[3], "e", t, 2.5)]) == ids
    assert backend.get_task(ids[0])["finished_at"] == pytest.approx(t + 0.5)
    sid = backend.upsert_schedule("s", "t", "* * * * *", "{}", None, None, None, None,
                                  "coalesce", None, t)
    options = TaskOptions.build(timeout=5)  # an int
    from liteq.taskspec import NewTask
    new = [NewTask("t", "{}", options, run_at=t), NewTask("t", "{}", options, run_at=t + 0.5)]
    fired = backend.fire_schedule(sid, float(t), t + 60, new)
    assert len(fired) == 2 and backend.get_task(fired[0])["timeout"] == 5.0
    assert backend.fire_schedule(sid, float(t), t + 60, new) is None  # fired once


# ---- enqueue and its notify -----------------------------------------------------------


@ON_PG
def test_delay_is_one_prepared_statement_and_its_notify_reaches_a_listener(
        db, backend, clean_registry, workdir):
    @liteq.task
    def ping(x):
        return x

    ping.delay(0)  # the statement is prepared at its first use
    # (A due-now .delay() within NOTIFY_INTERVAL_S of the last one sends no NOTIFY.)
    time.sleep(2 * NOTIFY_INTERVAL_S)
    listener = psycopg.connect(db, autocommit=True)
    try:
        listener.execute(f'LISTEN "{backend.channel}"')
        conn = backend._session.conn
        with tempfile.TemporaryFile("w+") as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            try:
                task_id = ping.delay(1)
            finally:
                conn.pgconn.untrace()
            trace.seek(0)
            sent = [line.split("\t")[2].split()[0] for line in trace if line.startswith("F\t")]
        # One round trip of the extended protocol, on a prepared statement; no BEGIN/COMMIT.
        assert sent == ["Bind", "Describe", "Execute", "Sync"], sent
        notes = list(listener.notifies(timeout=5, stop_after=1))
    finally:
        listener.close()
    assert [n.channel for n in notes] == [backend.channel]
    payload = json.loads(notes[0].payload)
    assert payload["q"] == "default" and payload["d"] <= 0
    assert backend.get_task(task_id)["status"] == "pending"


@ON_PG
def test_a_burst_of_delays_sends_few_notifies_and_later_ones_still_notify(
        db, backend, clean_registry):
    # PostgreSQL commits notifying transactions one at a time (a server-wide lock):
    # a producer notifies at most once per NOTIFY_INTERVAL_S for tasks due now.
    @liteq.task
    def ping(x):
        return x

    listener = psycopg.connect(db, autocommit=True)
    try:
        listener.execute(f'LISTEN "{backend.channel}"')
        time.sleep(2 * NOTIFY_INTERVAL_S)
        t0 = time.monotonic()
        ids = [ping.delay(i) for i in range(200)]
        spent = time.monotonic() - t0
        later = ping.apply_async(args=(1,), countdown=60)   # a due time: always sent
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=1.0)]
    finally:
        listener.close()
    assert len(ids) == 200 and all(backend.get_task(i)["status"] == "pending" for i in ids)
    now_notes = [n for n in notes if n["d"] <= 0]
    # One per interval begun (the first at once), never one per task.
    assert 1 <= len(now_notes) <= spent / NOTIFY_INTERVAL_S + 2, (len(now_notes), spent)
    assert len(now_notes) < 200
    assert [n for n in notes if n["d"] > 0] and backend.get_task(int(later))["status"] == "pending"


@ON_PG
def test_map_is_one_statement_with_one_notify(backend, db):
    listener = psycopg.connect(db, autocommit=True)
    try:
        listener.execute(f'LISTEN "{backend.channel}"')
        ids = _many(backend, 500, queue="bulk")
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=1.0)]
    finally:
        listener.close()
    assert notes == [{"q": "bulk", "d": 0}]
    assert ids == sorted(ids) and len(set(ids)) == 500
    rows = {r["id"]: r for r in backend.get_tasks(ids)}
    assert [json.loads(rows[i]["payload"])["args"] for i in ids] == [[n] for n in range(500)]
    # One statement: every row has the same creation time (its transaction's now()).
    assert len({r["created_at"] for r in rows.values()}) == 1


@ON_PG
def test_the_wake_channel_reports_due_now_and_due_later_on_this_hosts_clock(backend):
    channel = backend.open_wake_channel(None)
    try:
        assert channel.drain() == (False, None)
        backend.enqueue(_task(delay=30))
        assert _wait_readable(channel)
        before = time.time()
        now_due, later = channel.drain()
        assert not now_due and later == pytest.approx(before + 30, abs=1)
        backend.enqueue(_task())
        assert _wait_readable(channel)
        assert channel.drain() == (True, None)
        backend.notify()
        assert _wait_readable(channel)
        assert channel.drain()[0] is True
    finally:
        channel.close()


@ON_PG
def test_queues_in_other_schemas_have_their_own_channel(backend, db):
    server = pg_helpers.server_url()
    schema, other_url = pg_helpers.create_schema(server)
    other = backends.open_backend(other_url)
    mine = backend.open_wake_channel(None)
    try:
        assert other.channel != backend.channel
        other.enqueue(_task())
        assert not _wait_readable(mine, timeout=0.5)
        assert backend.count_tasks() == 0 and other.count_tasks() == 1
    finally:
        mine.close()
        other.close()
        pg_helpers.drop_schema(server, schema)


def _task(delay=None, queue="default"):
    from liteq.taskspec import NewTask
    return NewTask("t", '{"args":[],"kwargs":{}}', TaskOptions(queue=queue), delay=delay)


# ---- the server's clock -------------------------------------------------------------------

SKEWED_PRODUCER = r"""
import json, sys, time
real = time.time
time.time = lambda: real() + 600  # this host's clock is ten minutes ahead
import liteq

@liteq.task
def later(x):
    return x

ids = [later.apply_async(args=[1], countdown=2), later.schedule(2, 2)]
print(json.dumps({"ids": ids}))
"""


@ON_PG
@pytest.mark.timeout(60)
def test_a_producer_whose_clock_is_ten_minutes_ahead_delays_nothing(db, backend):
    out = subprocess.run([sys.executable, "-c", SKEWED_PRODUCER], capture_output=True,
                         text=True, timeout=30, env=dict(os.environ, LITEQ_DB=db))
    assert out.returncode == 0, out.stderr
    ids = json.loads(out.stdout)["ids"]
    for row in backend.get_tasks(ids):  # both stamped by the server's clock
        assert row["run_at"] - row["created_at"] == pytest.approx(2, abs=0.01)
    assert backend.claim("w", ["default"], 10) == []
    claimed = set()
    deadline = time.monotonic() + 20
    while claimed != set(ids) and time.monotonic() < deadline:
        claimed |= {r["id"] for r in backend.claim("w", ["default"], 10)}
        time.sleep(0.05)
    assert claimed == set(ids), "the tasks did not come due about 2 s later"


@ON_PG
def test_next_due_and_heartbeat_staleness_use_the_servers_clock(backend, db):
    backend.enqueue(_task(delay=40))
    assert backend.next_due(["default"]) == pytest.approx(40, abs=1)
    running = backend.enqueue(_task(queue="q"))
    backend.heartbeat("w1", "h", "q", 1, 1, time.time())
    assert [r["id"] for r in backend.claim("w1", ["q"], 5)] == [running]
    server_now = pg_helpers.rows(db, "SELECT date_part('epoch', now()) AS t")[0]["t"]
    assert backend.list_workers()[0]["last_heartbeat"] == pytest.approx(server_now, abs=2)
    pg_helpers.rows(db, "UPDATE workers SET last_heartbeat = now() - interval '90 s'")
    assert backend.active_workers(60) == []
    assert backend.reclaim(stale_after=120) == []
    assert backend.reclaim(stale_after=60) == [(running, "pending")]
    assert backend.list_workers() == []


# ---- threads and fork ---------------------------------------------------------------------


@ON_PG
def test_threads_share_one_backend_and_one_connection(db, clean_registry):
    @liteq.task
    def work(x):
        return x

    seen, ids, errors = set(), [], []

    def produce(n):
        try:
            seen.add(id(backends.get_backend()))
            ids.extend(work.delay(n * 100 + i) for i in range(50))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(seen) == 1
    assert len(set(ids)) == 400 and backends.get_backend().count_tasks() == 400
    app = pg_helpers.rows(db, "SELECT count(*) AS n FROM pg_stat_activity "
                              "WHERE application_name = current_setting('application_name') "
                              "AND pid <> pg_backend_pid()")
    assert app[0]["n"] == 1


FORKING_APP = r"""
import os, sys
from liteq import backends
from liteq.taskspec import NewTask, TaskOptions

def put(backend):
    return backend.enqueue(NewTask("t", '{"args":[],"kwargs":{}}', TaskOptions()))

parent = backends.get_backend()
put(parent)
before = parent.server_pid
pid = os.fork()
if pid == 0:
    # The child: its own backend; the parent's object, used and closed here, and
    # everything left to the interpreter's exit (atexit, garbage collection).
    put(backends.get_backend())
    put(parent)
    parent.close()
    backends.forget_backends()
    sys.exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert backends.get_backend() is parent and parent.server_pid == before
put(parent)
print(parent.count_tasks())
"""


@ON_PG
@pytest.mark.timeout(60)
def test_a_forked_child_never_touches_the_parents_connection(db):
    out = subprocess.run([sys.executable, "-c", FORKING_APP], capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, LITEQ_DB=db))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4"]


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_postgres_backend_class_is_shared_across_threads():
    assert PostgresBackend.shared_across_threads is True
    assert backends._backend_class("x.db").shared_across_threads is False


# ---- retention and vacuum -------------------------------------------------------------
# On a server whose autovacuum is off, deleting finished tasks vacuums the table once
# its dead rows pass its autovacuum threshold (1,000 plus 1 % of the live rows): 1,100
# tasks (3,300 dead row versions) pass it. Whether the space was reclaimed shows in
# the heap: a second round of the same tasks reuses it instead of doubling it.


def _vacuums(db):
    """Manual VACUUMs of this schema's tasks table so far."""
    return pg_helpers.rows(db, "SELECT vacuum_count FROM pg_stat_user_tables "
                               "WHERE relid = 'tasks'::regclass")[0]["vacuum_count"]


def _heap(db):
    return pg_helpers.rows(db, "SELECT pg_relation_size('tasks') AS n")[0]["n"]


def _autovacuum(db):
    return pg_helpers.rows(db, "SELECT current_setting('autovacuum')::bool AS on")[0]["on"]


def _finished_round(backend, db, count=1100):
    """`count` tasks enqueued, claimed and recorded done now; then any VACUUM the
    outcomes started (with autovacuum off) has ended."""
    _many(backend, count)
    claimed = backend.claim("w", ["default"], count)
    t = time.time()
    assert len(backend.record_outcomes("w", done=[(r["id"], "null", t, t)
                                                  for r in claimed])) == count
    # Ended, and counted in the statistics (which the VACUUM's session reports as it
    # closes, a moment later).
    wait_for(lambda: backend._vacuums.idle() and _vacuums(db) >= backend._vacuums.started, 30,
             "a VACUUM the outcomes started never ended")


@ON_PG
def test_purge_vacuums_the_table_itself_only_when_autovacuum_is_off(backend, db):
    autovacuum = _autovacuum(db)
    _finished_round(backend, db)
    first = _heap(db)
    before = _vacuums(db)
    assert backend.purge(0) == 1100
    if autovacuum:
        assert _vacuums(db) == 0                 # autovacuum's job, not purge's
        return
    assert _vacuums(db) == before + 1            # done before purge returned
    # Inside a batch() (a transaction, where VACUUM cannot run) purge works the same,
    # and the second round fits in the space the first one left.
    _finished_round(backend, db)
    before = _vacuums(db)
    with backend.batch():
        assert backend.purge(0) == 1100
    assert _vacuums(db) == before + 1
    assert _heap(db) <= first * 1.2, (first, _heap(db))


@ON_PG
def test_prune_starts_a_vacuum_in_the_background_only_when_autovacuum_is_off(backend, db):
    autovacuum = _autovacuum(db)
    _finished_round(backend, db)
    first = _heap(db)
    before = _vacuums(db)
    assert backend.prune("done", 0, 1100) == 1100
    if autovacuum:
        assert backend._vacuums.running is None and _vacuums(db) == 0
        return
    # prune returned with the VACUUM sent on a connection of its own; a later prune
    # (the daemon's next turn) collects it once it has ended.
    assert backend._vacuums.running is not None
    wait_for(lambda: backend.prune("done", 0, 1000) == 0 and backend._vacuums.running is None,
             15, "the VACUUM prune started never ended")
    assert backend._vacuums.last_error is None and _vacuums(db) == before + 1
    _finished_round(backend, db)
    assert _heap(db) <= first * 1.2, (first, _heap(db))


@ON_PG
def test_churn_without_deletions_is_vacuumed_when_autovacuum_is_off(backend, db):
    """Tasks claimed and finished, nothing ever deleted (a retention of a day): the
    dead rows they leave are vacuumed all the same, by the outcomes' own look and by
    the retention's prune that deletes nothing."""
    if _autovacuum(db):
        pytest.skip("the server's autovacuum is on: vacuuming is its job")
    rounds = 0
    # The statistics of dead rows reach the server within about a second; a round
    # is 600 tasks (1,200 dead rows), so a few rounds pass the threshold.
    while _vacuums(db) == 0 and rounds < 40:
        _finished_round(backend, db, 600)
        rounds += 1
    assert _vacuums(db) >= 1, f"no VACUUM after {rounds} rounds of 600 tasks"
    assert backend._vacuums.last_error is None
    assert backend.count_tasks(status="done") == rounds * 600   # nothing was deleted


@ON_PG
def test_a_prune_that_deletes_nothing_vacuums_dead_rows_when_autovacuum_is_off(backend, db):
    if _autovacuum(db):
        pytest.skip("the server's autovacuum is on: vacuuming is its job")
    _many(backend, 1500)
    # 1,500 dead row versions left by another session (no outcome counted here).
    pg_helpers.rows(db, "UPDATE tasks SET priority = priority RETURNING id")

    def pruned_and_vacuumed():
        assert backend.prune("done", 86400, 1000) == 0
        return _vacuums(db) >= 1 and backend._vacuums.idle()
    wait_for(pruned_and_vacuumed, 60, "prune never vacuumed the dead rows", interval=0.2)
    assert backend._vacuums.last_error is None
