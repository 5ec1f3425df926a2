"""LiteQ in a Flask app with Flask-SQLAlchemy: an order and its receipt task commit
together, in the session's transaction.

Run it all at once (a temporary database, `flask liteq worker` as the daemon, this
app on a local server, a few HTTP calls, then everything stops):

    python examples/flask_app.py

Or serve it yourself (LITEQ_DB: an SQLite file, or a postgresql:// URL; the app's
tables and the queue share that database):

    export LITEQ_DB=/tmp/shop.db
    flask --app examples/flask_app.py liteq worker --queues default,emails &
    flask --app examples/flask_app.py run
    curl -X POST -d email=ann@example.com -d total=42 http://127.0.0.1:5000/orders
"""

import json
import logging
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

from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.serving import make_server

import liteq
from liteq.contrib.flask import LiteQ


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
queue = LiteQ()


class Order(db.Model):  # type: ignore[name-defined,misc]
    """One order of the shop."""

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
    total: Mapped[int]
    receipt_sent: Mapped[bool] = mapped_column(default=False)


@queue.task(queue="emails", max_retries=3)
def send_receipt(order_id: int) -> str:
    """Send the order's receipt (pretend) and mark it sent; runs in a worker, inside
    the app's context, so db.session works."""
    order = db.session.get_one(Order, order_id)
    order.receipt_sent = True
    db.session.commit()
    return f"receipt for order {order.id} sent to {order.email}"


def sqlalchemy_url(target: str) -> str:
    """The SQLAlchemy URL of LiteQ's database: the same PostgreSQL database through
    psycopg 3, or the same SQLite file."""
    if target.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + target.split("://", 1)[1]
    if target.startswith("sqlite:///"):
        return target
    return "sqlite:///" + os.path.abspath(target)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app (Flask's CLI finds this factory): its tables and the queue in LITEQ_DB."""
    app = Flask(__name__)
    target = os.environ.get("LITEQ_DB") or "liteq.db"
    settings: dict[str, Any] = {"LITEQ_DB": target,
                                "SQLALCHEMY_DATABASE_URI": sqlalchemy_url(target)}
    settings.update(config or {})
    for key, value in settings.items():
        app.config[key] = value
    db.init_app(app)
    queue.init_app(app)
    app.add_url_rule("/orders", view_func=create_order, methods=["POST"])
    app.add_url_rule("/orders/<int:order_id>", view_func=order_status)
    return app


def create_order() -> tuple[dict[str, Any], int]:
    """POST email, total: the order and its send_receipt task, in one transaction."""
    order = Order()
    order.email, order.total = request.form["email"], int(request.form["total"])
    with liteq.using(db.session):
        db.session.add(order)
        db.session.flush()                      # the order's id
        task_id = send_receipt.delay(order.id)
        if request.form.get("reject") == "1":   # payment refused: neither exists
            db.session.rollback()
            return {"error": "payment refused", "task_id": task_id}, 402
        db.session.commit()                     # both exist
    return {"order": order.id, "task_id": task_id}, 200


def order_status(order_id: int) -> tuple[dict[str, Any], int]:
    """GET: the order and whether its receipt was sent."""
    order = db.session.get(Order, order_id)
    if order is None:
        return {"error": "no such order"}, 404
    return {"order": order.id, "receipt_sent": order.receipt_sent}, 200


def _call(base: str, path: str, data: dict[str, str] | None = None) -> tuple[int, Any]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(base + path, data=body, timeout=10) as reply:
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _start_worker(workdir: str) -> "subprocess.Popen[bytes]":
    """`flask --app examples/flask_app.py liteq worker` in the background, once ready."""
    log_path = os.path.join(workdir, "liteqd.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", os.path.abspath(__file__), "liteq",
             "worker", "--queues", "default,emails", "--concurrency", "2",
             "--log-format", "json"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        with open(log_path) as f:
            if '"daemon.ready"' in f.read():
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            with open(log_path) as f:
                raise SystemExit(f"flask liteq worker did not start:\n{f.read()}")
        time.sleep(0.05)


def main() -> None:
    """Set up the shop on a temporary database, serve it, place orders, show the tasks."""
    workdir = tempfile.mkdtemp(prefix="liteq-flask-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "shop.db"))
    os.environ.setdefault("LITEQ_SOCKET", os.path.join(workdir, "liteqd.sock"))
    app = create_app()
    with app.app_context():
        db.create_all()
    print(f"database: {os.environ['LITEQ_DB']}")
    worker = _start_worker(workdir)
    print("flask liteq worker: ready")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # no line per request
    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        code, kept = _call(base, "/orders", {"email": "ann@example.com", "total": "42"})
        print(f"POST /orders: HTTP {code}, order {kept['order']}, task {kept['task_id']}")
        code, refused = _call(base, "/orders",
                              {"email": "bob@example.com", "total": "7", "reject": "1"})
        gone = liteq.get_task_status(refused["task_id"])
        print(f"POST /orders (payment refused): HTTP {code}; its task "
              f"{refused['task_id']}: {gone} (rolled back with the order)")
        status = liteq.wait_for_task(kept["task_id"], timeout=20)
        print(f"send_receipt: {status['status']} -> {status['result']!r}")
        code, order = _call(base, f"/orders/{kept['order']}")
        print(f"GET /orders/{kept['order']}: receipt_sent={order['receipt_sent']}")
    finally:
        server.shutdown()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)
    print("server and worker stopped; done.")


if __name__ == "__main__":
    main()
