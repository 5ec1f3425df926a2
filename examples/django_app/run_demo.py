"""The example shop, all at once: a temporary database, `python manage.py liteqd`,
the Django app on a local WSGI server, a few HTTP calls, then everything stops.

    python examples/django_app/run_demo.py

Or run it yourself, from examples/django_app/:

    python manage.py migrate
    python manage.py liteqd --queues default,emails &
    python manage.py runserver
    curl -X POST -d email=ann@example.com -d total=42 http://127.0.0.1:8000/orders
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

HERE = os.path.dirname(os.path.abspath(__file__))


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _call(base: str, path: str, data: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request (POST when `data` is given): (status, the JSON reply)."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(base + path, data=body, timeout=10) as reply:
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _start_daemon(workdir: str) -> tuple["subprocess.Popen[bytes]", str]:
    """`python manage.py liteqd` in the background; returns it once it is ready."""
    log_path = os.path.join(workdir, "liteqd.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "liteqd", "--queues", "default,emails",
             "--concurrency", "2", "--log-format", "json"],
            cwd=HERE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        with open(log_path) as f:
            if '"daemon.ready"' in f.read():
                return proc, log_path
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            with open(log_path) as f:
                raise SystemExit(f"manage.py liteqd did not start:\n{f.read()}")
        time.sleep(0.05)


def main() -> None:
    """Set up the shop on a temporary database, serve it, place orders, show the tasks."""
    workdir = tempfile.mkdtemp(prefix="liteq-django-")
    os.environ["SHOP_DATA_DIR"] = workdir
    os.environ.setdefault("LITEQ_SOCKET", os.path.join(workdir, "liteqd.sock"))
    target = os.environ.pop("LITEQ_DB", "")
    if target.startswith("postgresql://"):
        os.environ["SHOP_DATABASE_URL"] = target   # Django's database, and LiteQ's
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    sys.path.insert(0, HERE)

    import django
    from django.core.management import call_command
    django.setup()   # liteq.contrib.django: LITEQ_DB, and shop/tasks.py is imported
    call_command("migrate", verbosity=0)
    print(f"queue database: {os.environ['LITEQ_DB']}")

    import liteq
    from mysite.wsgi import application

    daemon, log_path = _start_daemon(workdir)
    print("python manage.py liteqd: ready")
    server = make_server("127.0.0.1", 0, application, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        code, kept = _call(base, "/orders", {"email": "ann@example.com", "total": "42"})
        print(f"POST /orders: HTTP {code}, order {kept['order']}, task {kept['task_id']}")
        code, rejected = _call(base, "/orders",
                               {"email": "bob@example.com", "total": "7", "reject": "1"})
        gone = liteq.get_task_status(rejected["task_id"])
        print(f"POST /orders (payment refused): HTTP {code}; its task "
              f"{rejected['task_id']}: {gone} (rolled back with the order)")
        code, later = _call(base, "/orders/later", {"email": "cy@example.com", "total": "5"})
        print(f"POST /orders/later: HTTP {code}, order {later['order']}, task {later['task_id']}")
        for task_id in (kept["task_id"], later["task_id"]):
            status = liteq.wait_for_task(task_id, timeout=20)
            print(f"send_receipt: {status['status']} -> {status['result']!r}")
        code, order = _call(base, f"/orders/{kept['order']}")
        print(f"GET /orders/{kept['order']}: receipt_sent={order['receipt_sent']}")
    finally:
        server.shutdown()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(5)
    print("server and daemon stopped; done.")


if __name__ == "__main__":
    main()
