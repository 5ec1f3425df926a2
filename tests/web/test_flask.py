"""liteq.contrib.flask with the real framework: the example app
(examples/flask_app.py, Flask-SQLAlchemy) under Flask's test client, and
`flask --app examples/flask_app.py liteq worker` as the daemon, on both backends
(the app's tables and the queue share the test's database).
"""

import os
import sys
import time

import pytest

import liteq

from support import REPO
from support.daemon_helpers import FAST_ARGS, PYTHON, load_app_module
from support.task_table import count_tasks, task_row, wait_status

FLASK_APP = os.path.join(REPO, "examples", "flask_app.py")


class Shop:
    """The example app in this process, and its worker command."""

    def __init__(self, db, daemons, config=None):
        self.db, self.daemons = db, daemons
        self.module = load_app_module(FLASK_APP)
        self.app = self.module.create_app(config)
        self.app.config["TESTING"] = True
        with self.app.app_context():
            self.module.db.create_all()
        self.client = self.app.test_client()

    def start_worker(self, *flags):
        """`flask liteq worker`, ready."""
        return self.daemons.start(cmd=[PYTHON, "-m", "flask", "--app", FLASK_APP, "liteq",
                                       "worker", "--queues", "default,emails", *FAST_ARGS,
                                       *flags])

    def close(self):
        with self.app.app_context():
            self.module.db.engine.dispose()


@pytest.fixture
def shop(db, daemons):
    made = Shop(db, daemons)
    try:
        yield made
    finally:
        made.close()


def test_a_request_commits_its_order_and_task_and_a_refused_one_neither(db, shop):
    shop.start_worker()
    kept = shop.client.post("/orders", data={"email": "ann@example.com", "total": "42"})
    assert kept.status_code == 200, kept.text
    refused = shop.client.post("/orders", data={"email": "bob@example.com", "total": "1",
                                                "reject": "1"})
    assert refused.status_code == 402
    assert task_row(db, refused.json["task_id"]) is None or \
        refused.json["task_id"] == kept.json["task_id"]   # SQLite may reuse the id
    st = wait_status(kept.json["task_id"], daemons=shop.daemons)
    assert st["status"] == "done", st
    assert st["result"] == f"receipt for order {kept.json['order']} sent to ann@example.com"
    assert count_tasks(db) == 1
    # The task ran in the worker inside the app's context: its commit is the app's row.
    order = shop.client.get(f"/orders/{kept.json['order']}")
    assert order.json["receipt_sent"] is True


def test_the_daemon_never_sees_the_task_before_the_commit(db, shop):
    daemon = shop.start_worker()   # polls every 0.5 s besides its wake-ups
    module = shop.module
    with shop.app.app_context():
        order = module.Order()
        order.email, order.total = "cy@example.com", 5
        with liteq.using(module.db.session):
            module.db.session.add(order)
            module.db.session.flush()
            task_id = module.send_receipt.delay(order.id)
        time.sleep(1.5)
        assert task_row(db, task_id) is None
        assert not daemon.events("task.started")
        module.db.session.commit()
    assert wait_status(task_id, daemons=shop.daemons)["status"] == "done"


def test_a_rollback_leaves_no_task(db, backend, shop):
    module = shop.module
    with shop.app.app_context():
        with liteq.using(module.db.session):
            order = module.Order()
            order.email, order.total = "dee@example.com", 1
            module.db.session.add(order)
            module.db.session.flush()
            task_id = module.send_receipt.delay(1)
            assert liteq.get_task_status(task_id)["status"] == "pending"   # its own view
        module.db.session.rollback()
    assert count_tasks(db) == 0


@pytest.mark.sqlite_only
def test_the_extension_reads_app_config(db, daemons, workdir, monkeypatch):
    other = os.path.join(workdir, "other.db")
    with open(os.path.join(workdir, "lq_flask_extra_tasks.py"), "w") as f:
        f.write("from liteq import task\n\n@task\ndef lq_flask_extra(x):\n    return x\n")
    monkeypatch.syspath_prepend(workdir)
    assert "lq_flask_extra" not in liteq.TASK_REGISTRY
    shop = Shop(db, daemons, config={"LITEQ_DB": other,
                                     "LITEQ_SOCKET": os.path.join(workdir, "o.sock"),
                                     "LITEQ_IMPORTS": ["lq_flask_extra_tasks"]})
    try:
        assert "lq_flask_extra" in liteq.TASK_REGISTRY   # LITEQ_IMPORTS registered it
        assert os.environ["LITEQ_DB"] == other
        assert os.environ["LITEQ_SOCKET"] == os.path.join(workdir, "o.sock")
        assert shop.app.extensions["liteq"] is shop.module.queue
        assert "worker" in shop.app.cli.get_command(None, "liteq").commands
    finally:
        shop.close()
        sys.modules.pop("lq_flask_extra_tasks", None)


def test_flask_liteq_worker_passes_its_flags_to_liteqd(db, shop):
    base = [PYTHON, "-m", "flask", "--app", FLASK_APP, "liteq", "worker"]
    helped = shop.daemons.run(base + ["--help"])
    assert helped.returncode == 0 and "--concurrency" in helped.stdout, helped
    bad = shop.daemons.run(base + ["--concurrency", "many"])
    assert bad.returncode == 2 and "concurrency" in bad.stderr, bad
