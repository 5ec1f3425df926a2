"""The PostgreSQL backend when the server is not there: a killed connection fails one
call and the next one reconnects (also inside a batch, and for the LISTEN channel), an
unreachable server fails within the connect timeout, and a missing psycopg is one clear
line. The throwaway-cluster outage tests (a server restarted under a daemon) belong to
the daemon's suites."""

import json
import os
import select
import socket
import subprocess
import sys
import time

import psycopg
import pytest

import liteq
from support import pg_helpers
from liteq import backends
from liteq.backends.postgres.url import connect_options
from liteq.backends.postgres.connection import Connector
from liteq.errors import ConfigError, DatabaseError, DatabaseLocked, DatabaseUnavailable
from liteq.taskspec import NewTask, TaskOptions

ON_PG = pytest.mark.parametrize("db", ["postgresql"], indirect=True)


def _task():
    return NewTask("t", '{"args":[],"kwargs":{}}', TaskOptions())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- lost connections ------------------------------------------------------------------


@ON_PG
def test_a_killed_connection_fails_one_call_and_the_next_one_reconnects(db, clean_registry):
    @liteq.task
    def job(x):
        return x

    job.delay(1)
    backend = backends.get_backend()
    old = backend.server_pid
    assert pg_helpers.terminate(db, old)
    with pytest.raises(DatabaseUnavailable, match="is unavailable"):
        job.delay(2)
    assert job.delay(3) > 0
    assert backends.get_backend() is backend and backend.server_pid not in (None, old)
    assert [json.loads(r["payload"])["args"] for r in backend.find_tasks()] == [[3], [1]]


@ON_PG
def test_a_connection_killed_inside_a_batch_rolls_the_batch_back(backend, db):
    a, b = backend.enqueue(_task()), backend.enqueue(_task())
    assert [r["id"] for r in backend.claim("w", ["default"], 1)] == [a]
    t = time.time()
    with pytest.raises(DatabaseUnavailable):
        with backend.batch():
            assert backend.record_outcomes("w", done=[(a, "1", t, t)]) == [a]
            pg_helpers.terminate(db, backend.server_pid)
            backend.claim("w", ["default"], 1)
    assert backend.get_task(a)["status"] == "running"   # the outcome was rolled back
    assert backend.get_task(b)["status"] == "pending"
    with backend.batch():  # and the next batch works, on a new connection
        assert backend.record_outcomes("w", done=[(a, "1", t, t)]) == [a]
        assert [r["id"] for r in backend.claim("w", ["default"], 1)] == [b]
    assert backend.get_task(a)["status"] == "done"


@ON_PG
def test_a_failing_statement_keeps_the_connection(backend):
    pid = backend.server_pid
    with pytest.raises(DatabaseError) as info:
        with backend.batch():
            backend.enqueue(_task())
            # An id past bigint: the server refuses the statement (the input rules
            # stop bad task options before any SQL, so they cannot provoke it).
            backend.release("w", [2 ** 70])
    assert not isinstance(info.value, DatabaseUnavailable)
    assert "out of range" in str(info.value)
    assert backend.count_tasks() == 0 and backend.server_pid == pid


@ON_PG
def test_the_wake_channel_reports_a_lost_connection_and_reconnects(backend, db):
    channel = backend.open_wake_channel(None)
    try:
        old_fd, old_pid = channel.fileno(), channel.server_pid
        assert pg_helpers.terminate(db, old_pid)
        assert select.select([channel], [], [], 5)[0]
        with pytest.raises(DatabaseUnavailable):
            channel.drain()
        assert not channel.connected
        channel.reconnect()
        assert channel.connected and channel.server_pid != old_pid and channel.fileno() >= 0
        backend.enqueue(_task())
        assert select.select([channel], [], [], 5)[0]
        assert channel.drain() == (True, None)
    finally:
        channel.close()
    assert channel.fileno() == -1 and old_fd >= 0


@ON_PG
@pytest.mark.timeout(60)
def test_the_daemons_writes_give_up_on_a_lock_held_by_someone_else(backend, db):
    daemon = backends.open_backend(db, daemon=True)
    task_id = backend.enqueue(_task())
    assert [r["id"] for r in daemon.claim("w", ["default"], 1)] == [task_id]
    holder = psycopg.connect(db)  # an operator's open transaction holding the row
    try:
        holder.execute("SELECT * FROM tasks WHERE id = %s FOR UPDATE", (task_id,))
        t = time.time()
        with pytest.raises(DatabaseLocked, match="lock timeout"):
            daemon.record_outcomes("w", done=[(task_id, "1", t, t)])
        holder.rollback()
        assert daemon.record_outcomes("w", done=[(task_id, "1", t, t)]) == [task_id]
    finally:
        holder.close()
        daemon.close()


def test_error_messages_and_causes_are_scrubbed_of_the_password():
    connector = Connector("postgresql://u:Pass-Word-9@h/d")
    cause = psycopg.OperationalError("libpq said Pass-Word-9 and more")
    error = connector.error(cause, gone=True)
    assert isinstance(error, DatabaseUnavailable)
    assert "Pass-Word-9" not in str(error) and "Pass-Word-9" not in str(cause)
    assert "postgresql://u@h/d" in str(error)


# ---- unreachable servers -------------------------------------------------------------------


@pytest.fixture
def unreachable(monkeypatch, workdir, clean_registry):
    """Point LITEQ_DB at a URL; returns a task to .delay() against it."""
    def use(url):
        monkeypatch.setenv("LITEQ_DB", url)
        monkeypatch.setenv("LITEQ_SOCKET", os.path.join(workdir, "liteqd.sock"))
        backends.forget_backends()

        @liteq.task
        def job():
            return None
        return job
    yield use
    backends.forget_backends()


@pytest.mark.timeout(60)
def test_delay_against_a_port_where_nothing_listens_raises_database_error(unreachable):
    job = unreachable(f"postgresql://root@127.0.0.1:{_free_port()}/test")
    with pytest.raises(DatabaseError, match="is unavailable") as info:
        job.delay()
    assert isinstance(info.value, DatabaseUnavailable)


@pytest.mark.timeout(30)  # without a connect timeout psycopg would wait 130 s
def test_delay_against_a_server_that_never_answers_gives_up_at_the_connect_timeout(
        unreachable, monkeypatch):
    with socket.socket() as silent:  # accepts TCP connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("LITEQ_CONNECT_TIMEOUT", "2")
        job = unreachable(f"postgresql://root@127.0.0.1:{silent.getsockname()[1]}/test")
        with pytest.raises(DatabaseUnavailable, match="timeout"):
            job.delay()


def test_the_connect_timeout_comes_from_the_url_then_liteq_then_libpq(monkeypatch):
    for name in ("LITEQ_CONNECT_TIMEOUT", "PGCONNECT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    assert connect_options({})["connect_timeout"] == 5
    assert "connect_timeout" not in connect_options({"connect_timeout": "9"})
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")  # libpq reads it itself
    assert "connect_timeout" not in connect_options({})
    monkeypatch.setenv("LITEQ_CONNECT_TIMEOUT", "3")
    assert connect_options({})["connect_timeout"] == 3
    monkeypatch.setenv("LITEQ_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="LITEQ_CONNECT_TIMEOUT"):
        connect_options({})


def test_sqlite_never_says_unavailable(workdir):
    with pytest.raises(DatabaseError) as info:
        backends.open_backend(os.path.join(workdir, "no", "such", "dir", "q.db"))
    assert not isinstance(info.value, DatabaseUnavailable)


# ---- imports ---------------------------------------------------------------------------------

NO_PSYCOPG = r"""
import sys

class NoPsycopg:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0].startswith("psycopg"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoPsycopg())
import liteq
from liteq import backends
from liteq.errors import ConfigError

@liteq.task
def job():
    return None

for call in (job.delay, backends.identity_of):
    try:
        call()
    except ConfigError as exc:
        print(repr(str(exc)))
"""


def test_a_postgresql_url_without_psycopg_is_one_clear_line():
    out = subprocess.run([sys.executable, "-c", NO_PSYCOPG], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, LITEQ_DB="postgresql://u@h/d"))
    assert out.returncode == 0, out.stderr
    messages = [eval(line) for line in out.stdout.splitlines()]  # noqa: S307 - our own repr
    assert len(messages) == 2, out.stdout
    for message in messages:
        assert "\n" not in message and "pip install 'liteq[postgres]'" in message


ENQUEUE_ONLY = r"""
import json, sys
import liteq
import liteq.monitoring as monitoring

@liteq.task
def plain(x):
    return x

ids = [plain.delay(1), plain.schedule(60, 2)] + plain.map([3, 4])
assert liteq.get_task_status(ids[0])["status"] == "pending"
liteq.cancel_task(ids[1])
monitoring.get_queue_stats()
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True)
def test_an_app_that_only_enqueues_loads_only_its_own_driver(db):
    out = subprocess.run([sys.executable, "-c", ENQUEUE_ONLY], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"psutil", "structlog", "setproctitle", "croniter"}
    assert ("psycopg" in loaded) == db.startswith("postgresql://")
