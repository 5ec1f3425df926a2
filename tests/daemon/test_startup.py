"""Start-up as an operator meets it: errors that end the daemon with one line instead of
retrying for ever, a stop signal while starting, a warning for queues no pool serves,
and a liteqctl that reports a failed reload, ends quietly when its reader goes, and
never creates a database.

Every daemon is a real `python -m liteqd.cli` subprocess (tests/support/daemon_helpers.py),
killed in teardown; PostgreSQL refusals use the shared server where they need no
change to it, and a throwaway cluster (tests/support/pg_cluster.py) for passwords and
privileges.
"""

import json
import os
import signal
import subprocess
from urllib.parse import urlsplit, urlunsplit

import pytest

from support import pg_helpers
from support.daemon_helpers import LITEQCTL, PYTHON, TempDaemons, running
from support.processes import wait_for

APP_SOURCE = '''
from liteq import task

@task(max_retries=0)
def add(a, b):
    return a + b
'''

# Imports slowly: a stop signal reaches liteqd while it is still loading the app.
SLOW_APP_SOURCE = '''
import os, time
from liteq import task

open(os.environ["STARTED_MARK"], "w").close()
time.sleep(120)

@task
def never():
    pass
'''

QUEUES_APP_SOURCE = '''
from liteq import task

@task
def send_email(to):
    return to

@task(queue="reports")
def generate_report(n):
    return n

@task(queue="emails")
def newsletter(n):
    return n
'''


def _write(directory, name, source):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(source)
    return path


@pytest.fixture
def lq(db_path, workdir, monkeypatch):
    """TempDaemons of a small app (written to `workdir`) on an SQLite file."""
    app = _write(workdir, "startup_app.py", APP_SOURCE)
    with running(TempDaemons(workdir, app, db=db_path), monkeypatch) as ds:
        yield ds


def _exit_of(d, timeout=60):
    """The daemon's exit code and its stderr lines."""
    code = d.wait(timeout)
    return code, d.stderr().strip().splitlines()


def _url_with(url, user=None, password=None, database=None):
    parts = urlsplit(url)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    user = user or parts.username
    auth = user + (f":{password}" if password else "")
    path = "/" + database if database else parts.path
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}", path=path))


# ---- PostgreSQL refusals end the daemon ------------------------------------------------

@pytest.mark.parametrize("wrong, needle", [
    ({"database": "liteq_no_such_db"}, 'database "liteq_no_such_db" does not exist'),
    ({"user": "liteq_no_such_role"}, 'role "liteq_no_such_role" does not exist'),
])
def test_a_wrong_database_or_role_exits_1_with_one_line_on_stderr(lq, wrong, needle):
    url = _url_with(pg_helpers.server_url(), **wrong)
    d = lq.daemon(db=url, ready=False)
    code, err = _exit_of(d)
    assert code == 1, d.dump()
    assert len(err) == 1 and err[0].startswith("liteqd: error:") and needle in err[0], err


def test_a_wrong_password_or_a_role_without_connect_exits_1(lq, throwaway_pg):
    cluster = throwaway_pg
    cluster.sql("CREATE ROLE app LOGIN PASSWORD 'right-secret'")
    cluster.sql("CREATE ROLE outsider LOGIN")
    cluster.sql("REVOKE CONNECT ON DATABASE test FROM PUBLIC")
    # Passwords for `app` over TCP; root keeps trust for the cluster's own helpers.
    hba = os.path.join(cluster.data, "pg_hba.conf")
    with open(hba) as f:
        rules = f.read()
    with open(hba, "w") as f:
        f.write("host all app 127.0.0.1/32 scram-sha-256\n" + rules)
    cluster.sql("SELECT pg_reload_conf()")
    wrong_password = _url_with(cluster.url, user="app", password="wrong-secret")
    for url, needle in ((wrong_password, 'password authentication failed for user "app"'),
                        (_url_with(cluster.url, user="outsider"),
                         'permission denied for database "test"')):
        d = lq.daemon(db=url, ready=False)
        code, err = _exit_of(d)
        assert code == 1, d.dump()
        assert len(err) == 1 and needle in err[0], err
        assert "wrong-secret" not in d.stderr() + "".join(d.log_lines())


# ---- a stop signal while starting --------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_during_startup_exits_0_with_a_log_line(lq, sig):
    mark = lq.path("started")
    app = _write(lq.tmp, "slow_app.py", SLOW_APP_SOURCE)
    d = lq.make("--db", lq.db, "--socket", lq.sock, "--log-format", "json", app=app,
                fast=False, env={"STARTED_MARK": mark}).start()
    wait_for(lambda: os.path.exists(mark) or not d.alive(), 30, "the app never started importing")
    assert d.alive(), d.dump()
    d.send(sig)
    assert d.wait(30) == 0, d.dump()
    stopped = d.events("daemon.stopped")
    assert len(stopped) == 1 and stopped[0]["reason"] == f"{sig.name} during start-up", d.dump()
    assert d.stderr() == ""


# ---- queues nobody serves -------------------------------------------------------------------

def test_tasks_on_queues_no_pool_serves_get_one_warning_naming_them(lq):
    app = _write(lq.tmp, "queues_app.py", QUEUES_APP_SOURCE)
    d = lq.start("--db", lq.db, "--socket", lq.sock, "--log-format", "json", app=app, fast=False)
    warned = d.events("app.unserved_queues")
    assert len(warned) == 1, d.dump()
    assert warned[0]["level"] == "warning"
    assert warned[0]["queues"] == ["emails", "reports"]
    assert warned[0]["tasks"] == {"emails": ["newsletter"], "reports": ["generate_report"]}
    assert "--queues default,emails,reports" in warned[0]["hint"]
    assert d.stop() == 0

    served = lq.start("--db", lq.db, "--socket", lq.sock, "--log-format", "json",
                      "--queues", "default,reports,emails", app=app, fast=False)
    assert served.events("app.unserved_queues") == []


# ---- --app ----------------------------------------------------------------------------------

def test_an_app_that_names_a_directory_says_it_is_a_directory(lq):
    res = lq.run([PYTHON, "-m", "liteqd.cli", "--app", lq.tmp, "--db", lq.db])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"app {lq.tmp!r} is a directory" in lines[0], res.stderr
    assert "does not exist" not in res.stderr


# ---- liteqctl --------------------------------------------------------------------------------

BROKEN_APP_LINE = "\ndef broken(:\n"


def test_liteqctl_reload_exits_1_with_the_reason_when_the_app_fails_to_load(lq):
    d = lq.daemon("--concurrency", "1")
    workers = d.worker_pids()
    with open(lq.app_path, "a") as f:
        f.write(BROKEN_APP_LINE)
    res = lq.liteqctl("--socket", lq.sock, "reload")
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "reload failed" in lines[0] and "SyntaxError" in lines[0], lines
    assert res.stdout == ""
    # The daemon keeps serving with the code it had, with the same child.
    assert lq.liteqctl("--socket", lq.sock, "ping").returncode == 0
    assert d.worker_pids() == workers
    assert len(d.events("daemon.reload_failed")) == 1

    with open(lq.app_path, "w") as f:
        f.write(APP_SOURCE)
    res = lq.liteqctl("--socket", lq.sock, "reload")
    assert res.returncode == 0 and "reloaded" in res.stdout, (res.stdout, res.stderr)


def _liteqctl_into_a_closed_pipe(lq, *args):
    """Run liteqctl with its stdout a pipe whose reader has already gone."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = lq.popen([LITEQCTL, "--socket", lq.sock, *args], stdout=w,
                     stderr=subprocess.PIPE)
    finally:
        os.close(w)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"liteqctl {args} did not finish")
    return p.returncode, err.decode()


def test_liteqctl_ends_quietly_like_other_tools_when_its_reader_goes(lq):
    d = lq.daemon("--concurrency", "1")
    for args in (["status", "--json"], ["status"], ["ping"], ["schedules", "--json"]):
        code, err = _liteqctl_into_a_closed_pipe(lq, *args)
        assert (code, err) == (-signal.SIGPIPE, ""), args
    # The request was made before the output was lost: the daemon stops.
    code, err = _liteqctl_into_a_closed_pipe(lq, "shutdown")
    assert (code, err) == (-signal.SIGPIPE, "")
    assert d.wait(30) == 0


@pytest.mark.parametrize("args", [["status", "--all"], ["status", "--all", "--json"],
                                  ["cancel", "1"], ["schedules"]],
                         ids=["status-all", "status-all-json", "cancel", "schedules"])
def test_liteqctl_never_creates_a_database(lq, args):
    missing = os.path.join(lq.tmp, "liteq.db")
    env = {"LITEQ_DB": None, "LITEQ_SOCKET": None}
    res = lq.run([LITEQCTL, *args], env=env)
    assert res.returncode != 0, (res.stdout, res.stderr)
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0], lines
    assert "no database" in lines[0] or "does not exist" in lines[0], lines
    assert not [n for n in os.listdir(lq.tmp) if n.startswith("liteq.db")]


@pytest.mark.parametrize("message, code", [
    ('connection to server at "h", port 5432 failed: FATAL:  database "x" does not exist',
     "3D000"),
    ('connection to server at "h", port 5432 failed: FATAL:  password authentication '
     'failed for user "app"', "28P01"),
    ('connection to server at "h", port 5432 failed: fe_sendauth: no password supplied',
     "28P01"),
    ('connection to server at "h", port 5432 failed: FATAL:  role "x" does not exist', "28000"),
    ('connection to server at "h", port 5432 failed: FATAL:  no pg_hba.conf entry for host '
     '"10.0.0.2", user "app", database "q", no encryption', "28000"),
    ('connection to server at "h", port 5432 failed: FATAL:  permission denied for database '
     '"q" DETAIL:  User does not have CONNECT privilege.', "42501"),
    # Waited for: the server is starting, stopping, full, or not there.
    ('connection to server at "h", port 5432 failed: FATAL:  the database system is '
     'starting up', None),
    ('connection to server at "h", port 5432 failed: FATAL:  the database system is '
     'shutting down', None),
    ('connection to server at "h", port 5432 failed: FATAL:  sorry, too many clients '
     'already', None),
    ('connection to server at "h", port 5432 failed: Connection refused', None),
    ('connection to server at "h", port 5432 failed: timeout expired', None),
])
def test_which_connect_failures_are_final(message, code):
    from liteq.backends.postgres.connection import refusal_code
    assert refusal_code(message) == code
