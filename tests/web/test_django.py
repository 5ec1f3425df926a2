"""liteq.contrib.django with the real framework: the example shop's project
(examples/django_app), `python manage.py liteqd` as the daemon, `manage.py
runserver` serving real HTTP requests, and a Django process driven line by line
(tests/apps/django_driver.py) to hold a transaction open. On both backends: on
PostgreSQL Django's database is the test's schema and LiteQ's queue is in it; on
SQLite the project's file holds the queue too (its settings say so), or, with
SHOP_LITEQ_OWN_FILE, LiteQ has a file of its own and delay_on_commit() waits for
Django's commit.
"""

import json
import os
import select
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from support import REPO
from support.daemon_helpers import FAST_ARGS, PYTHON
from support.processes import wait_for
from support.task_table import count_tasks, task_row

EXAMPLE = os.path.join(REPO, "examples", "django_app")
MANAGE = os.path.join(EXAMPLE, "manage.py")
DRIVER = os.path.join(REPO, "tests", "apps", "django_driver.py")
REPLY_TIMEOUT = 30.0


class Driver:
    """A Django process of the shop, answering one JSON line per command."""

    def __init__(self, shop):
        self.proc = shop.daemons.popen([PYTHON, DRIVER], env=shop.env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            pytest.fail(f"the Django driver gave no answer to {command!r}:\n"
                        f"{self.proc.stderr.read()}")
        return json.loads(line)


class Shop:
    """The example project set up on the test's database."""

    def __init__(self, db, daemons, own_file=False):
        self.daemons = daemons
        self.env = {"LITEQ_DB": None, "SHOP_DATA_DIR": daemons.workdir,
                    "DJANGO_SETTINGS_MODULE": "mysite.settings"}
        if db.startswith("postgresql://"):
            self.env["SHOP_DATABASE_URL"] = db
            self.queue = db
        elif own_file:
            self.env["SHOP_LITEQ_OWN_FILE"] = "1"
            self.queue = os.path.join(daemons.workdir, "liteq.db")
        else:
            self.queue = os.path.join(daemons.workdir, "shop.sqlite3")
        self.driver = Driver(self)
        assert self.driver.ask("migrate") == "ok"

    def start_daemon(self, *flags):
        """`python manage.py liteqd` for the shop's queues, ready."""
        return self.daemons.start(cmd=[PYTHON, MANAGE, "liteqd", "--queues", "default,emails",
                                       *FAST_ARGS, *flags], env=self.env)

    def wait_done(self, task_id, timeout=20.0):
        """The task's row once it is done (or failed)."""
        return wait_for(lambda: (lambda r: r if r and r["status"] in ("done", "failed")
                                 else None)(task_row(self.queue, task_id)), timeout,
                        lambda: f"task {task_id} not done: {task_row(self.queue, task_id)}\n"
                                f"{self.daemons.dump()}")


@pytest.fixture
def shop(db, daemons):
    return Shop(db, daemons)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(base, path, data):
    body = urllib.parse.urlencode(data).encode()
    try:
        with urllib.request.urlopen(base + path, data=body, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _runserver(shop):
    """`manage.py runserver` on a free port; returns its base URL once it answers."""
    port = _free_port()
    err = open(shop.daemons.path("runserver.err"), "wb")
    shop.daemons.popen([PYTHON, MANAGE, "runserver", "--noreload", f"127.0.0.1:{port}"],
                       env=shop.env, stdout=err, stderr=subprocess.STDOUT)
    err.close()

    def answers():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False
    wait_for(answers, 30, lambda: "runserver did not start:\n" +
             open(shop.daemons.path("runserver.err")).read())
    return f"http://127.0.0.1:{port}"


def test_a_request_commits_the_order_with_its_task_and_a_refused_one_neither(db, shop):
    shop.start_daemon()
    base = _runserver(shop)
    code, kept = _post(base, "/orders", {"email": "ann@example.com", "total": "42"})
    assert code == 200, kept
    code, refused = _post(base, "/orders", {"email": "bob@example.com", "total": "1",
                                            "reject": "1"})
    assert code == 402 and refused["task_id"] is not None
    row = shop.wait_done(kept["task_id"])
    assert row["status"] == "done", row
    assert task_row(shop.queue, refused["task_id"]) is None
    assert count_tasks(shop.queue) == 1


def test_the_daemon_never_sees_the_task_before_the_commit(db, shop):
    daemon = shop.start_daemon()   # polls every 0.5 s besides its wake-ups
    driver = shop.driver
    assert driver.ask("begin") == "ok"
    order = driver.ask("order ann@example.com")
    task_id = driver.ask("using")
    time.sleep(1.5)
    assert task_row(shop.queue, task_id) is None
    assert not daemon.events("task.started")
    assert driver.ask("commit") == "ok"
    row = shop.wait_done(task_id)
    assert row["status"] == "done"
    assert daemon.events("task.succeeded", task_id=task_id)
    assert driver.ask("settings")["shares"] is True
    assert order >= 1


def test_a_rollback_leaves_no_task(db, shop):
    driver = shop.driver
    for command in ("begin", "order ann@example.com"):
        driver.ask(command)
    dropped = [driver.ask("using"), driver.ask("later")]
    assert all(isinstance(i, int) for i in dropped)   # both written in the transaction
    assert driver.ask("rollback") == "ok"
    assert count_tasks(shop.queue) == 0
    shop.start_daemon()
    for command in ("begin", "order cy@example.com"):
        driver.ask(command)
    task_id = driver.ask("later")
    driver.ask("commit")
    assert shop.wait_done(task_id)["status"] == "done"
    assert count_tasks(shop.queue) == 1


@pytest.mark.sqlite_only
def test_delay_on_commit_with_a_queue_file_of_its_own(db, daemons):
    shop = Shop(db, daemons, own_file=True)
    driver = shop.driver
    settings = driver.ask("settings")
    assert settings == {"LITEQ_DB": shop.queue, "shares": False}
    shop.start_daemon()
    for command in ("begin", "order ann@example.com"):
        driver.ask(command)
    assert driver.ask("later") is None      # enqueued by Django's on-commit hook
    driver.ask("rollback")
    for command in ("begin", "order bob@example.com"):
        driver.ask(command)
    assert driver.ask("later") is None
    time.sleep(1.0)
    assert count_tasks(shop.queue) == 0     # the transaction is still open
    driver.ask("commit")
    row = wait_for(lambda: (lambda rows: rows[0] if rows and rows[0]["status"] == "done"
                            else None)(_all_tasks(shop.queue)), 20,
                   lambda: f"no task done\n{daemons.dump()}")
    assert "sent to bob@example.com" in row["result"]
    assert count_tasks(shop.queue) == 1


def _all_tasks(target):
    from support.task_table import all_tasks
    return all_tasks(target)


def test_autodiscover_imports_each_apps_tasks_module(db, shop):
    found = shop.driver.ask("discovered")
    assert found["modules"] == ["shop.tasks"]
    assert any(name.endswith("send_receipt") for name in found["tasks"]), found


def test_liteq_using_outside_an_atomic_block_is_refused(db, shop):
    message = shop.driver.ask("using-autocommit")
    assert "autocommit" in message and "transaction.atomic" in message, message


def test_manage_py_liteqd_passes_its_flags_to_liteqd(db, shop):
    helped = shop.daemons.run([PYTHON, MANAGE, "liteqd", "--help"], env=shop.env)
    assert helped.returncode == 0 and "--concurrency" in helped.stdout, helped
    bad = shop.daemons.run([PYTHON, MANAGE, "liteqd", "--concurrency", "many"], env=shop.env)
    assert bad.returncode == 2 and "concurrency" in bad.stderr, bad


def test_the_postgres_url_of_a_django_database():
    from liteq.contrib.django.conf import postgres_url
    url = postgres_url({"NAME": "shop", "USER": "app", "PASSWORD": "s@cret", "HOST": "db",
                        "PORT": "5433", "OPTIONS": {"sslmode": "require",
                                                    "server_side_binding": True}})
    assert url == "postgresql://app:s%40cret@db:5433/shop?sslmode=require"
    assert postgres_url({"NAME": "shop", "HOST": "/run/postgresql"}) == \
        "postgresql:///shop?host=%2Frun%2Fpostgresql"


def test_manage_py_liteqd_reimports_the_tasks_on_sighup(db, shop):
    import signal
    daemon = shop.start_daemon()
    daemon.send(signal.SIGHUP)
    daemon.wait_event("daemon.reloading")
    driver = shop.driver
    for command in ("begin", "order ann@example.com"):
        driver.ask(command)
    task_id = driver.ask("using")
    driver.ask("commit")
    assert shop.wait_done(task_id)["status"] == "done"
    assert not daemon.events("daemon.reload_failed"), daemon.dump()


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_manage_py_test_writes_the_tasks_in_the_test_database(db, daemons):
    """Django's test runner creates its own database: the queue follows it there."""
    import uuid

    from support import pg_helpers
    name = f"lqt_django_{uuid.uuid4().hex[:8]}"
    env = {"LITEQ_DB": None, "SHOP_DATABASE_URL": pg_helpers.server_url(),
           "SHOP_TEST_DB_NAME": name, "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    try:
        done = daemons.run([PYTHON, MANAGE, "test", "shop", "--noinput", "-v", "2"],
                           env=env, cwd=EXAMPLE, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "Ran 1 test" in done.stderr and "skipped" not in done.stderr, done.stderr
    finally:
        import psycopg
        with psycopg.connect(pg_helpers.server_url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
