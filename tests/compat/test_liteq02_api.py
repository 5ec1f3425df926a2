"""liteq 0.2's Python API (PyPI liteq 0.2.1), name by name: every public name,
keyword and dict key of its released code works here, except the ones README.md lists
under "From liteq 0.2" with the reason.

Real SQLite files, real daemons (tests/support/daemon_helpers.py kills every process a test
started), a real FastAPI app.
"""

import json
import subprocess
import textwrap

import pytest

import liteq
from liteq import backends

from support import APPS
from support.daemon_helpers import PYTHON
from support.task_table import put_task, wait_status

# The columns of liteq 0.2's tasks table: its get_task_status() returned dict(row).
SEED_TASK_KEYS = {"id", "name", "payload", "queue", "status", "priority", "attempts",
                  "max_retries", "worker_id", "run_at", "created_at", "started_at",
                  "finished_at", "result", "error", "timeout"}


@pytest.fixture
def seed_tasks(db, clean_registry):
    """Two tasks declared liteq 0.2's way."""
    @liteq.task(queue="emails", timeout=60)
    async def send_email(to: str, subject: str):
        return {"sent": True}

    @liteq.task()
    def add(a, b):
        return a + b

    return send_email, add


# ---- liteq.worker.Worker -------------------------------------------------------------------

def test_worker_takes_the_seeds_task_timeout_keyword(daemons, app):
    # liteq 0.2's Worker(queues, concurrency, task_timeout=None): a time limit for tasks
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
    # liteq 0.2's Worker.run() looped `while not self.shutdown`; a thread that sets the
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
    # payload: the JSON text of the call, as liteq 0.2 stored and returned it.
    assert isinstance(status["payload"], str)
    assert json.loads(status["payload"]) == {"args": ["a@example.com"],
                                             "kwargs": {"subject": "Hi"}}
    # liteq 0.2's liteq.core.get_task_status is the same function.
    from liteq.core import get_task_status
    assert get_task_status(tid) == status

    from liteq.monitoring import get_failed_tasks, get_recent_tasks
    store = backends.get_backend()
    store.claim("w", ["emails"], 1)
    assert store.record_outcomes("w", failed=[(tid, "boom", 1.0, 2.0)]) == [tid]
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
    row = backends.get_backend().get_task(uid)
    assert (row["queue"], row["priority"]) == ("urgent", 7)
    backends.get_backend().cancel(tid)
    assert [s["status"] for s in background.get_all_statuses()] == ["cancelled"]
    # A task that no longer exists is left out, as in liteq 0.2.
    backends.get_backend().purge(-10)
    assert background.get_all_statuses() == []


def test_a_function_that_is_not_a_task_raises_the_seeds_value_error_too(seed_tasks):
    from liteq.fastapi import LiteQBackgroundTasks, enqueue_task

    def plain(x):
        return x

    for call in (lambda: enqueue_task(plain, 1), lambda: LiteQBackgroundTasks().add_task(plain, 1)):
        with pytest.raises(ValueError, match="not a LiteQ task"):   # liteq 0.2's class
            call()
        with pytest.raises(TypeError, match="not a LiteQ task"):    # LiteQ's
            call()
    assert backends.get_backend().count_tasks() == 0


# ---- the package, liteq.core and the @task decorator ----------------------------------------

def test_the_seeds_package_names(db_path):
    import liteq.scheduler
    from liteq import Scheduler, get_task_status, register_schedule, task  # noqa: F401
    assert Scheduler is liteq.scheduler.Scheduler
    assert {"task", "get_task_status", "register_schedule", "Scheduler"} <= set(liteq.__all__)


def test_task_proxy_is_the_task_class_and_registers_when_built(seed_tasks):
    from liteq.core import TASK_REGISTRY, TaskProxy

    send_email, add = seed_tasks
    assert isinstance(send_email, TaskProxy) and isinstance(add, TaskProxy)
    assert not isinstance(len, TaskProxy)

    def resize(path, width):
        return [path, width]

    # liteq 0.2's TaskProxy(fn, name, queue, max_retries, timeout), built by hand.
    proxy = TaskProxy(resize, "resize_image", "images", 2, 30)
    assert TASK_REGISTRY["resize_image"] is proxy
    assert (proxy.fn, proxy.name, proxy.queue, proxy.max_retries, proxy.timeout) == (
        resize, "resize_image", "images", 2, 30)
    assert proxy("a.png", 10) == ["a.png", 10]
    row = backends.get_backend().get_task(proxy.delay("b.png", 20))
    assert (row["name"], row["queue"], row["max_retries"], row["timeout"]) == (
        "resize_image", "images", 2, 30)


def test_task_takes_the_seeds_positional_options(db_path, clean_registry):
    @liteq.task("emails", 5)
    def notify(to):
        return to

    @liteq.task("reports", 1, "monthly_report", 30)
    def report():
        return 1

    assert (notify.queue, notify.max_retries, notify.name) == ("emails", 5, "notify")
    assert (report.queue, report.max_retries, report.name, report.timeout) == (
        "reports", 1, "monthly_report", 30)
    with pytest.raises(TypeError, match="queue"):
        liteq.task("emails", queue="other")
    with pytest.raises(TypeError, match="at most 4"):
        liteq.task("q", 1, "n", 2, 3)


def test_schedule_takes_an_iso_string_and_the_run_at_keyword(seed_tasks):
    from datetime import datetime, timedelta

    send_email, add = seed_tasks
    when = datetime(2030, 1, 2, 3, 4, 5, 600000)
    store = backends.get_backend()
    by_text = send_email.schedule(when.isoformat(), "a@example.com", "Hi")
    by_keyword = send_email.schedule(run_at=when, to="b@example.com", subject="Hi")
    with_offset = add.schedule("2030-01-02T03:04:05+00:00", 1, 2)
    assert store.get_task(by_text)["run_at"] == when.timestamp()   # naive: local time
    assert store.get_task(by_keyword)["run_at"] == when.timestamp()
    assert liteq.get_task_status(by_keyword)["kwargs"] == {"to": "b@example.com",
                                                           "subject": "Hi"}
    assert store.get_task(with_offset)["run_at"] == 1893553445.0
    soon = add.schedule(run_at=timedelta(seconds=30), a=1, b=2)
    assert liteq.get_task_status(soon)["kwargs"] == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="'next tuesday'"):
        add.schedule("next tuesday", 1, 2)
    with pytest.raises(TypeError, match="when"):
        add.schedule()


# ---- liteq.db ---------------------------------------------------------------------------------

def test_db_path_reads_and_sets_the_database(db_path, monkeypatch, clean_registry):
    import os
    import liteq.db

    assert liteq.db.DB_PATH == db_path
    other = os.path.join(os.path.dirname(db_path), "other.db")
    monkeypatch.setattr(liteq.db, "DB_PATH", other)   # restored (to LITEQ_DB) afterwards
    assert liteq.db.DB_PATH == other and os.environ["LITEQ_DB"] == other

    @liteq.task()
    def where():
        return 1

    tid = where.delay()
    with liteq.db.get_conn() as conn:
        assert conn.execute("SELECT name FROM tasks WHERE id = ?", (tid,)).fetchone()[0] == \
            "where"
    assert os.path.exists(other)


# ---- liteq.scheduler ------------------------------------------------------------------------

def test_parse_cron_and_calculate_next_run(db_path):
    from datetime import datetime
    from liteq.scheduler import calculate_next_run, parse_cron

    assert parse_cron("*/5 * * * *") == {"minute": "*/5", "hour": "*", "day": "*",
                                         "month": "*", "weekday": "*"}
    assert parse_cron(" 0  9 * * 1 ") == {"minute": "0", "hour": "9", "day": "*",
                                          "month": "*", "weekday": "1"}
    with pytest.raises(ValueError, match="5 fields"):
        parse_cron("* * *")
    with pytest.raises(ValueError):
        parse_cron("61 * * * *")
    start = datetime(2026, 3, 10, 10, 0, 0)
    assert calculate_next_run("0 9 * * *", start) == datetime(2026, 3, 11, 9, 0)
    assert calculate_next_run("*/5 * * * *", start) == datetime(2026, 3, 10, 10, 5)
    assert calculate_next_run("0 */2 * * *", start) == datetime(2026, 3, 10, 12, 0)
    nxt = calculate_next_run("* * * * *")
    assert nxt.tzinfo is None and 0 < (nxt - datetime.now()).total_seconds() <= 60


def test_register_schedule_keywords_and_list_schedules_keys_of_the_seed(db_path,
                                                                       clean_registry):
    from liteq.scheduler import list_schedules, register_schedule

    @liteq.task()
    def cleanup(days):
        return days

    sid = register_schedule(cleanup, "*/5 * * * *", queue="default", enabled=True, days=7)
    [row] = list_schedules()
    assert {"id", "task_name", "cron_expr", "payload", "queue", "enabled", "last_run",
            "next_run", "created_at"} <= set(row)
    assert (row["id"], row["task_name"], row["queue"], row["enabled"]) == (
        sid, "cleanup", "default", True)
    assert json.loads(row["payload"]) == {"args": [], "kwargs": {"days": 7}}

    def undecorated():
        return 1

    # liteq 0.2 raised ValueError for what it could not schedule; LiteQ also refuses a
    # function without @task (README: "From liteq 0.2").
    for bad in (42, undecorated):
        with pytest.raises(ValueError, match="not a LiteQ task"):
            register_schedule(bad, "*/5 * * * *")
    assert len(list_schedules()) == 1


def test_scheduler_running_flag_reads_and_stops_the_loop(db_path):
    import threading
    import time
    from liteq.scheduler import Scheduler

    sched = Scheduler(check_interval=60)
    assert sched.running is False
    thread = threading.Thread(target=sched.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not sched.running:
        assert time.monotonic() < deadline, "the scheduler never started"
        time.sleep(0.01)
    sched.running = False            # liteq 0.2's way to stop it
    thread.join(10)
    assert not thread.is_alive() and sched.running is False


# ---- liteq.monitoring -------------------------------------------------------------------------

def test_active_workers_list_their_queues_as_the_seed_did(db_path):
    import os
    import time
    from liteq.monitoring import get_active_workers

    backends.get_backend().heartbeat("w1", "host", "default,emails", 4, os.getpid(), time.time())
    [worker] = get_active_workers()
    assert worker["queues"] == ["default", "emails"]
    assert {"worker_id", "hostname", "queues", "concurrency", "last_heartbeat",
            "active_tasks"} <= set(worker)


# ---- the monitor's JSON API (liteq 0.2's liteq/web.py) ------------------------------------------

@pytest.fixture
def panel_tasks(db):
    """A done, a failed and a pending task, and a live worker row; returns their ids."""
    import os
    import time

    store = backends.get_backend()
    done = put_task(store, "add", '{"args":[1,2],"kwargs":{}}')
    failed = put_task(store, "send_email", '{"args":["a@x.org"],"kwargs":{}}', queue="emails")
    assert len(store.claim("w1", ["default", "emails"], 2)) == 2
    t = time.time()
    store.record_outcomes("w1", done=[(done, "3", t - 1, t)], failed=[(failed, "boom", t - 1, t)])
    pending = put_task(store, "add", '{"args":[3,4],"kwargs":{}}')
    store.heartbeat("w1", "host", "default,emails", 2, os.getpid(), t)
    return {"done": done, "failed": failed, "pending": pending}


def _panel(**options):
    from starlette.testclient import TestClient
    from liteq.web import create_app
    return TestClient(create_app(**options), base_url="http://127.0.0.1")


def test_the_seeds_json_reads(panel_tasks):
    c = _panel()
    overview = c.get("/api/overview").json()
    assert {k: overview[k] for k in ("total_pending", "total_running", "total_failed",
                                     "total_done", "total_queues", "active_workers")} == {
        "total_pending": 1, "total_running": 0, "total_failed": 1, "total_done": 1,
        "total_queues": 2, "active_workers": 1}
    recent = c.get("/api/tasks", params={"limit": 2}).json()
    assert [t["id"] for t in recent] == [panel_tasks["pending"], panel_tasks["failed"]]
    assert SEED_TASK_KEYS <= set(recent[0])
    assert len(c.get("/api/tasks").json()) == 3
    failed = c.get("/api/failed-tasks").json()
    assert [t["id"] for t in failed] == [panel_tasks["failed"]] and failed[0]["error"] == "boom"
    queues = c.get("/api/queues").json()
    assert {(q["queue"], q["status"], q["count"]) for q in queues} == {
        ("default", "done", 1), ("default", "pending", 1), ("emails", "failed", 1)}
    [worker] = c.get("/api/workers").json()
    assert worker["worker_id"] == "w1" and worker["queues"] == ["default", "emails"]
    assert worker["active_tasks"] == 0
    assert c.get("/api/tasks", params={"limit": "many"}).status_code == 400


def test_the_seeds_json_actions_under_the_panels_rules(panel_tasks):
    # liteq 0.2's POST /api/tasks/{id}/retry and /cancel, answered {"status": "success"}.
    # Like every action of the panel they need the Bearer token (scripts) or the CSRF
    # token; a bare cross-site POST is refused (README: "From liteq 0.2").
    store = backends.get_backend()
    c = _panel(token="s3cret")
    bearer = {"authorization": "Bearer s3cret"}
    reply = c.post(f"/api/tasks/{panel_tasks['failed']}/retry", headers=bearer)
    assert reply.status_code == 200 and reply.json()["status"] == "success", reply.text
    assert store.get_task(panel_tasks["failed"])["status"] == "pending"
    reply = c.post(f"/api/tasks/{panel_tasks['pending']}/cancel", headers=bearer)
    assert reply.json()["status"] == "success"
    assert store.get_task(panel_tasks["pending"])["status"] == "cancelled"
    # Guarded as in the panel: a done task is neither retried nor cancelled.
    reply = c.post(f"/api/tasks/{panel_tasks['done']}/cancel", headers=bearer)
    assert reply.status_code == 409 and reply.json()["status"] == "error"
    assert store.get_task(panel_tasks["done"])["status"] == "done"
    assert c.post("/api/tasks/999999/retry", headers=bearer).status_code == 404
    assert c.post(f"/api/tasks/{panel_tasks['done']}/retry").status_code == 401

    open_panel = _panel()
    assert open_panel.post(f"/api/tasks/{panel_tasks['pending']}/retry").status_code == 403
    open_panel.get("/")  # sets the CSRF cookie
    csrf = {"x-csrf-token": open_panel.cookies.get("liteq_csrf")}
    reply = open_panel.post(f"/api/tasks/{panel_tasks['pending']}/retry", headers=csrf)
    assert reply.json()["status"] == "success"
    assert store.get_task(panel_tasks["pending"])["status"] == "pending"


def test_run_monitor_serves_the_panel(daemons, panel_tasks):
    import socket
    import urllib.request

    from support.processes import wait_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "seed-api-test-token"
    proc = daemons.popen([PYTHON, "-c", f"from liteq.web import run_monitor; "
                                        f"run_monitor(port={port})"],
                         env={"LITEQ_MONITOR_TOKEN": token},
                         stderr=subprocess.PIPE, text=True)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/overview",
                                     headers={"Authorization": f"Bearer {token}"})

    def overview():
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                return json.load(resp)
        except OSError:
            assert proc.poll() is None, proc.communicate()
            return None
    data = wait_for(overview, 20, message="run_monitor never answered")
    assert data["total_done"] == 1 and data["total_failed"] == 1


# ---- the version ---------------------------------------------------------------------------

def test_one_version_above_every_seed_release_everywhere():
    # liteq 0.2's last release is 0.2.1 and its code calls itself 0.3.0: pip must see an
    # upgrade. liteq.__version__ is the one source; the metadata and CLIs read it.
    import os
    from importlib.metadata import version

    version_tuple = tuple(int(p) for p in liteq.__version__.split("."))
    assert version_tuple > (0, 3, 0)
    assert version("liteq") == liteq.__version__
    bin_dir = os.path.dirname(PYTHON)
    for cmd in (["liteq", "--version"], ["liteqd", "--version"], ["liteqctl", "--version"]):
        out = subprocess.run([os.path.join(bin_dir, cmd[0]), *cmd[1:]], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, (cmd, out.stderr)
        assert out.stdout.strip() == f"{cmd[0]} {liteq.__version__}", (cmd, out.stdout)
