"""LiteQ in a FastAPI app: three ways to enqueue from an endpoint, and task status.

Run it all at once (a temporary database, a liteqd daemon, this app on a free
port, a few HTTP calls, then everything stops):

    python examples/fastapi_app.py

Or serve it yourself, with a daemon for the same database running the tasks:

    export LITEQ_DB=/tmp/liteq-fastapi.db
    liteqd --app examples/fastapi_app.py --queues default,emails,urgent &
    uvicorn examples.fastapi_app:app --port 8000

and call it:

    curl -X POST 'http://127.0.0.1:8000/send-email?to=ann@example.com&subject=Hello'
    curl -X POST 'http://127.0.0.1:8000/send-email-bg?to=bob@example.com'
    curl -X POST 'http://127.0.0.1:8000/send-email-helper?to=cy@example.com'
    curl -X POST 'http://127.0.0.1:8000/send-email-urgent?to=dee@example.com'
    curl http://127.0.0.1:8000/tasks/1          # the task's status (404 when missing)
"""

import asyncio
import json
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from fastapi import FastAPI

from liteq import task
from liteq.fastapi import LiteQBackgroundTasks, enqueue_task, task_router

app = FastAPI(title="LiteQ + FastAPI example")
app.include_router(task_router)  # GET /tasks/{task_id}


@task(queue="emails", timeout=60)
async def send_email(to: str, subject: str) -> dict[str, object]:
    """Pretend to send an email (runs in a liteqd worker, not in the web server)."""
    await asyncio.sleep(0.1)
    return {"sent": True, "to": to, "subject": subject}


# Way 1: just .delay()
@app.post("/send-email")
async def api_send_email(to: str, subject: str) -> dict[str, int]:
    """Enqueue with the task's own .delay()."""
    task_id = send_email.delay(to, subject)
    return {"task_id": task_id}


# Way 2: a BackgroundTasks-like parameter; add_task() enqueues and returns the id
@app.post("/send-email-bg")
async def api_send_email_bg(to: str, background: LiteQBackgroundTasks) -> dict[str, object]:
    """Enqueue through the LiteQBackgroundTasks parameter."""
    task_id = background.add_task(send_email, to, "Hi!")
    return {"message": "queued", "task_id": task_id}


# Way 3: the helper function
@app.post("/send-email-helper")
async def api_send_email_helper(to: str) -> dict[str, int]:
    """Enqueue with enqueue_task()."""
    task_id = enqueue_task(send_email, to, "Welcome")
    return {"task_id": task_id}


# Per-call options: another queue and a higher priority
@app.post("/send-email-urgent")
async def api_send_email_urgent(to: str, background: LiteQBackgroundTasks) -> dict[str, int]:
    """Enqueue on the "urgent" queue with priority 10 (options start with an underscore)."""
    task_id = background.add_task(send_email, to, "Urgent!", _queue="urgent", _priority=10)
    return {"task_id": task_id}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _call(base: str, method: str, path: str,
          params: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request with the standard library (the example needs no HTTP client
    package): (status code, the JSON reply)."""
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as exc:  # 404 and the like: the reply is still JSON
        return exc.code, json.loads(exc.read())


def _wait_done(base: str, task_id: int, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = _call(base, "GET", f"/tasks/{task_id}")[1]
        if status["status"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def main() -> None:
    """Start a daemon and this app on a temporary database, call it, print what happens."""
    import uvicorn

    from liteq.launcher import start_daemon

    workdir = tempfile.mkdtemp(prefix="liteq-fastapi-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    print(f"database: {os.environ['LITEQ_DB']}")

    print("starting liteqd with 2 worker processes for queues default, emails and urgent ...")
    with start_daemon(__file__, queues="default,emails,urgent", concurrency=2,
                      log_path=os.path.join(workdir, "liteqd.log")):
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit("uvicorn did not start")
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        print(f"the FastAPI app is serving on {base}")
        try:
            calls = [
                ("/send-email", {"to": "ann@example.com", "subject": "Hello"}),
                ("/send-email-bg", {"to": "bob@example.com"}),
                ("/send-email-helper", {"to": "cy@example.com"}),
                ("/send-email-urgent", {"to": "dee@example.com"}),
            ]
            ids: list[int] = []
            for path, params in calls:
                code, reply = _call(base, "POST", path, params)
                if code != 200:
                    raise SystemExit(f"POST {path}: HTTP {code} {reply}")
                ids.append(reply["task_id"])
                print(f"POST {path}: HTTP {code}, enqueued task {reply['task_id']}")
            for task_id in ids:
                status = _wait_done(base, task_id)
                print(f"GET /tasks/{task_id}: {status['status']} on queue "
                      f"{status['queue']} (priority {status['priority']}) -> "
                      f"{status['result']}")
            code, missing = _call(base, "GET", "/tasks/999999")
            print(f"GET /tasks/999999: HTTP {code} ({missing['detail']})")
        finally:
            server.should_exit = True
            thread.join(10)
    print("server and daemon stopped; done.")


if __name__ == "__main__":
    main()
