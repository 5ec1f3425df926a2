"""The seed project's Python API (PyPI liteq 0.2.1), name by name: every public name,
keyword and dict key of its released code works here, except the ones README.md lists
under "From the seed project" with the reason.

Real SQLite files, real daemons (tests/daemon_helpers.py kills every process a test
started), a real FastAPI app.
"""

import json
import textwrap

import pytest

import liteq
from liteq import storage

from daemon_helpers import APPS, PYTHON, app, daemons, wait_status  # noqa: F401

# The columns of the seed's tasks table: its get_task_status() returned dict(row).
SEED_TASK_KEYS = {"id", "name", "payload", "queue", "status", "priority", "attempts",
                  "max_retries", "worker_id", "run_at", "created_at", "started_at",
                  "finished_at", "result", "error", "timeout"}


@pytest.fixture
def seed_tasks(db_path, clean_registry):
    """Two tasks declared the seed's way."""
    @liteq.task(queue="emails", timeout=60)
    async def send_email(to: str, subject: str):
        return {"sent": True}

    @liteq.task()
    def add(a, b):
        return a + b

    return send_email, add


# ---- liteq.worker.Worker -------------------------------------------------------------------

def test_worker_takes_the_seeds_task_timeout_keyword(daemons, app):
    # The seed's Worker(queues, concurrency, task_timeout=None): a time limit for tasks
    # that set none. Here it kills the task, as liteqd's --timeout does.
    script = daemons.path("run_worker.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(f"""\
            import sys
            sys.path.insert(0, {APPS!r})
            import daemon_app
            from liteq.worker import Worker
            worker = Worker(["default"], 2, task_timeout=1)
            assert worker.task_timeout == 1 and worker.queues == ["default"]
            worker.run()
            """))
    d = daemons.start(cmd=[PYTHON, script])
    tid = app.slow.apply_async((30,), max_retries=0)
    ev = d.wait_event("task.failed", task_id=tid, timeout=20)
    assert ev["timed_out"] is True and "timed out after 1 s" in ev["error"], ev
    st = wait_status(tid, daemons=daemons)
    assert st["status"] == "failed" and "timed out after 1 s" in st["error"], st
    assert d.stop() == 0


def test_worker_shutdown_flag_set_from_another_thread_stops_run(daemons, app):
    # The seed's Worker.run() looped `while not self.shutdown`; a thread that sets the
    # flag stops it gracefully, and run() returns 0.
    script = daemons.path("run_worker.py")
    stop_file = daemons.path("stop-now")
    with open(script, "w") as f:
        f.write(textwrap.dedent(f"""\
            import os, sys, threading, time
            sys.path.insert(0, {APPS!r})
            import daemon_app
            from liteq.worker import Worker
            worker = Worker(["default"], 1)

            def stop_when_told():
                while not os.path.exists({stop_file!r}):
                    time.sleep(0.02)
                worker.shutdown = True

            threading.Thread(target=stop_when_told, daemon=True).start()
            code = worker.run()
            print("run returned", code, worker.shutdown, file=sys.stderr)
            sys.exit(code)
            """))
    d = daemons.start(cmd=[PYTHON, script])
    assert wait_status(app.add.delay(1, 2), daemons=daemons)["result"] == 3
    open(stop_file, "w").close()
    assert d.wait() == 0
    assert d.events("daemon.stopping")[0]["reason"] == "Worker.shutdown"
    assert "run returned 0 True" in d.stderr()


# ---- get_task_status() and the dicts built like it --------------------------------------

def test_get_task_status_has_every_key_of_the_seed(seed_tasks):
    send_email, add = seed_tasks
    tid = send_email.delay("a@example.com", subject="Hi")
    status = liteq.get_task_status(tid)
    assert SEED_TASK_KEYS <= set(status), SEED_TASK_KEYS - set(status)
    # payload: the JSON text of the call, as the seed stored and returned it.
    assert isinstance(status["payload"], str)
    assert json.loads(status["payload"]) == {"args": ["a@example.com"],
                                             "kwargs": {"subject": "Hi"}}
    # The seed's liteq.core.get_task_status is the same function.
    from liteq.core import get_task_status
    assert get_task_status(tid) == status

    from liteq.monitoring import get_failed_tasks, get_recent_tasks
    store = storage.get_store()
    store.claim("w", ["emails"], 1)
    assert store.record_outcomes("w", failed=[(tid, "boom", 1.0, 2.0)]) == 1
    for rows in (get_recent_tasks(limit=5), get_failed_tasks(limit=5)):
        assert SEED_TASK_KEYS <= set(rows[0]) and rows[0]["payload"] == status["payload"]


# ---- liteq.fastapi.LiteQBackgroundTasks ------------------------------------------------------

def test_background_tasks_get_task_status_and_get_all_statuses(seed_tasks):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from liteq.fastapi import LiteQBackgroundTasks

    send_email, add = seed_tasks
    app = FastAPI()

    @app.post("/two")
    async def two(background: LiteQBackgroundTasks):
        first = background.add_task(send_email, "a@example.com", "Hi")
        second = background.add_task(add, 1, 2)
        status = background.get_task_status(first)
        return {"ids": [first, second], "task_ids": background.task_ids,
                "tasks": background.tasks, "status": status,
                "all": background.get_all_statuses()}

    client = TestClient(app)
    reply = client.post("/two").json()
    first, second = reply["ids"]
    assert reply["task_ids"] == reply["tasks"] == [first, second]
    assert reply["status"]["id"] == first and reply["status"]["status"] == "pending"
    assert SEED_TASK_KEYS <= set(reply["status"])
    assert [s["id"] for s in reply["all"]] == [first, second]
    assert [s["name"] for s in reply["all"]] == ["send_email", "add"]
    # Still no request parameters from the dependency.
    assert not app.openapi()["paths"]["/two"]["post"].get("parameters")


def test_background_tasks_built_by_hand_as_in_the_seed(seed_tasks):
    from liteq.fastapi import LiteQBackgroundTasks

    send_email, add = seed_tasks
    background = LiteQBackgroundTasks()
    tid = background.add_task(add, 2, 3)
    assert background.get_task_status(tid)["queue"] == "default"
    assert background.get_task_status(999999) is None
    # queue= and priority= are the defaults of this object's add_task calls.
    urgent = LiteQBackgroundTasks(queue="urgent", priority=7)
    uid = urgent.add_task(send_email, "b@example.com", "Now")
    row = storage.get_store().get_task(uid)
    assert (row["queue"], row["priority"]) == ("urgent", 7)
    storage.get_store().cancel(tid)
    assert [s["status"] for s in background.get_all_statuses()] == ["cancelled"]
    # A task that no longer exists is left out, as in the seed.
    storage.get_store().purge(-10)
    assert background.get_all_statuses() == []


def test_a_function_that_is_not_a_task_raises_the_seeds_value_error_too(seed_tasks):
    from liteq.fastapi import LiteQBackgroundTasks, enqueue_task

    def plain(x):
        return x

    for call in (lambda: enqueue_task(plain, 1), lambda: LiteQBackgroundTasks().add_task(plain, 1)):
        with pytest.raises(ValueError, match="not a LiteQ task"):   # the seed's class
            call()
        with pytest.raises(TypeError, match="not a LiteQ task"):    # LiteQ's
            call()
    assert storage.get_store().count_tasks() == 0
