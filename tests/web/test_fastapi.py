"""liteq.fastapi in a real FastAPI app, through fastapi.testclient.TestClient."""

import json
import os
import subprocess
import sys
import time
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from liteq import get_task_status, backends, task
from liteq.fastapi import (LiteQBackgroundTasks, TaskEnqueuer, create_task_router,
                           enqueue_task, task_router)

from support import REPO



@pytest.fixture
def send_email(db, clean_registry):
    @task(queue="emails", timeout=60)
    async def send_email(to: str, subject: str):
        return {"sent": True}

    return send_email


@pytest.fixture
def seed_app(send_email):
    """liteq 0.2's README FastAPI example, as shown there (plus the ready router)."""
    app = FastAPI()

    @app.post("/send-email")
    async def api_send_email(to: str, subject: str):
        task_id = send_email.delay(to, subject)
        return {"task_id": task_id}

    @app.post("/send-email-bg")
    async def api_send_email_bg(to: str, background: LiteQBackgroundTasks):
        task_id = background.add_task(send_email, to, "Привет!")
        return {"message": "queued", "task_id": task_id}

    @app.post("/send-email-helper")
    async def api_send_email_helper(to: str):
        task_id = enqueue_task(send_email, to, "Добро пожаловать")
        return {"task_id": task_id}

    app.include_router(task_router)
    return app


def row(task_id):
    return backends.get_backend().get_task(task_id)


def test_the_seed_example_three_ways(seed_app):
    c = TestClient(seed_app)
    one = c.post("/send-email", params={"to": "a@example.com", "subject": "Hi"})
    two = c.post("/send-email-bg", params={"to": "b@example.com"})
    three = c.post("/send-email-helper", params={"to": "c@example.com"})
    assert one.status_code == two.status_code == three.status_code == 200
    assert two.json()["message"] == "queued"
    expected = {one.json()["task_id"]: ["a@example.com", "Hi"],
                two.json()["task_id"]: ["b@example.com", "Привет!"],
                three.json()["task_id"]: ["c@example.com", "Добро пожаловать"]}
    assert len(expected) == 3 and all(isinstance(i, int) for i in expected)
    for task_id, args in expected.items():
        status = get_task_status(task_id)
        assert status["name"] == "send_email" and status["queue"] == "emails"
        assert status["args"] == args and status["kwargs"] == {}
        assert status["status"] == "pending"  # enqueued for liteqd, not run in-process
        assert row(task_id)["timeout"] == 60


def test_the_plain_annotation_adds_no_request_parameters(seed_app):
    params = seed_app.openapi()["paths"]["/send-email-bg"]["post"]["parameters"]
    assert [p["name"] for p in params] == ["to"]


def test_add_task_honours_queue_priority_and_other_options(send_email):
    app = FastAPI()

    @app.post("/urgent")
    def urgent(background: LiteQBackgroundTasks):
        first = background.add_task(send_email, "x@example.com", subject="S", _queue="urgent",
                                    _priority=9)
        later = background.add_task(send_email, "y@example.com", "T", _countdown=300,
                                    _timeout=5, _max_retries=0)
        return {"ids": [first, later], "seen": background.task_ids}

    reply = TestClient(app).post("/urgent").json()
    first, later = reply["ids"]
    assert reply["seen"] == [first, later]
    r1 = row(first)
    assert (r1["queue"], r1["priority"]) == ("urgent", 9)
    assert json.loads(r1["payload"]) == {"args": ["x@example.com"], "kwargs": {"subject": "S"}}
    r2 = row(later)
    assert r2["queue"] == "emails" and r2["priority"] == 0
    assert r2["run_at"] > time.time() + 250
    assert r2["timeout"] == 5 and r2["max_retries"] == 0
    assert json.loads(r2["payload"]) == {"args": ["y@example.com", "T"], "kwargs": {}}

    helper = enqueue_task(send_email, "z@example.com", "U", _queue="bulk", _priority=-1)
    assert (row(helper)["queue"], row(helper)["priority"]) == ("bulk", -1)
    with pytest.raises(ValueError, match="_queue"):
        enqueue_task(send_email, "z@example.com", "U", _queue="")
    with pytest.raises(TypeError, match="_priority"):
        enqueue_task(send_email, "z@example.com", "U", _priority="high")


def test_every_depends_form_gives_a_fresh_enqueuer(send_email):
    app = FastAPI()

    @app.post("/annotated")
    async def annotated(bg: Annotated[LiteQBackgroundTasks, Depends()]):
        return {"id": bg.add_task(send_email, "a", "1"), "type": type(bg).__name__}

    @app.post("/class-default")
    async def class_default(bg: TaskEnqueuer = Depends()):
        return {"id": bg.add_task(send_email, "b", "2"), "type": type(bg).__name__}

    @app.post("/depends-alias")
    def depends_alias(bg: TaskEnqueuer = Depends(LiteQBackgroundTasks)):
        return {"id": bg.add_task(send_email, "c", "3"), "type": type(bg).__name__}

    @app.post("/untyped")
    def untyped(bg=Depends(LiteQBackgroundTasks)):
        return {"id": bg.add_task(send_email, "d", "4"), "type": type(bg).__name__}

    c = TestClient(app)
    for path, who in (("/annotated", "a"), ("/class-default", "b"), ("/depends-alias", "c"),
                      ("/untyped", "d")):
        reply = c.post(path)
        assert reply.status_code == 200, (path, reply.text)
        assert reply.json()["type"] == "TaskEnqueuer"
        assert get_task_status(reply.json()["id"])["args"][0] == who
        # No stray query parameters from the dependency's signature.
        assert not app.openapi()["paths"][path]["post"].get("parameters")


def test_the_router_serves_status_and_404(seed_app, send_email):
    c = TestClient(seed_app)
    task_id = send_email.delay("r@example.com", "Status")
    reply = c.get(f"/tasks/{task_id}")
    assert reply.status_code == 200
    body = reply.json()
    assert body["id"] == task_id and body["status"] == "pending"
    assert body["args"] == ["r@example.com", "Status"]
    assert set(body) >= {"id", "name", "queue", "status", "priority", "attempts",
                         "max_retries", "result", "error", "created_at", "finished_at"}
    missing = c.get("/tasks/987654")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no task with id 987654"}
    assert c.get("/tasks/abc").status_code == 422


def test_create_task_router_with_another_prefix_and_auth(send_email):
    from fastapi import Header, HTTPException

    def need_key(x_key: str = Header(default="")):
        if x_key != "k":
            raise HTTPException(status_code=403, detail="no")

    app = FastAPI()
    app.include_router(create_task_router("/jobs", dependencies=[Depends(need_key)]))
    c = TestClient(app)
    task_id = send_email.delay("j@example.com", "Jobs")
    assert c.get(f"/jobs/{task_id}").status_code == 403
    assert c.get(f"/jobs/{task_id}", headers={"x-key": "k"}).json()["id"] == task_id


def test_a_function_that_is_not_a_task_is_a_type_error(send_email):
    async def plain(to, subject):
        return None

    with pytest.raises(TypeError, match=r"plain is not a LiteQ task: decorate it with @task"):
        enqueue_task(plain, "a", "b")
    with pytest.raises(TypeError, match="not a LiteQ task"):
        TaskEnqueuer().add_task(send_email.fn, "a", "b")  # the undecorated function
    with pytest.raises(TypeError, match="not a LiteQ task"):
        enqueue_task("send_email", "a", "b")

    app = FastAPI()

    @app.post("/oops")
    async def oops(background: LiteQBackgroundTasks):
        return {"id": background.add_task(plain, "a", "b")}

    with pytest.raises(TypeError, match="not a LiteQ task"):
        TestClient(app).post("/oops")
    assert backends.get_backend().count_tasks() == 0


def test_import_liteq_loads_no_web_stack(db):
    code = ("import sys, liteq, liteq.monitoring, liteq.control, liteq.status\n"
            "heavy = ('fastapi', 'starlette', 'prometheus_client', 'jinja2', 'uvicorn')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
            "import liteq.fastapi\n"
            "print('fastapi' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    assert out == ["[]", "True"]


def test_the_example_runs_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LITEQ_DB", "LITEQ_SOCKET")}
    env["TMPDIR"] = "/tmp"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "fastapi_app.py")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "POST /send-email-bg: HTTP 200, enqueued task 2" in out
    assert "GET /tasks/4: done on queue urgent (priority 10)" in out
    assert "GET /tasks/999999: HTTP 404" in out
    assert "server and daemon stopped; done." in out
