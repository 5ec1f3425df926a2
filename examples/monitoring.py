"""Monitoring: the liteq.monitoring functions, printed as plain tables.

A daemon runs a mix of tasks on three queues (images, billing, default),
including a charge that always fails. While they run, and again when they are
finished, the example prints what the monitoring functions return:

    get_queue_stats()      tasks per queue and status
    list_queues()          every queue name in use
    get_recent_tasks(n)    the newest tasks
    get_failed_tasks(n)    the newest failures, with their errors
    get_active_workers()   daemons with a recent heartbeat, and what they run

They only read the database, so any process can call them, daemon or not.

Run it:            python examples/monitoring.py
The same tasks under the daemon, in production style:
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/monitoring.py \\
        --queues images,billing,default --concurrency 2
and watch them with `LITEQ_DB=/tmp/liteq.db liteq monitor` (open the login address it
prints) or `liteqctl status`.
"""

import os
import shutil
import tempfile
import textwrap
import time
from datetime import datetime

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from liteq import TaskHandle, task, wait_for_task
from liteq.monitoring import (get_active_workers, get_failed_tasks, get_queue_stats,
                              get_recent_tasks, list_queues)


@task(queue="images")
def resize_image(image_id: int) -> dict[str, object]:
    """A quick task."""
    time.sleep(0.1)
    return {"image_id": image_id, "size": "800x600"}


@task(queue="billing", max_retries=1, retry_delay=0.2)
def charge_card(order_id: int, amount: float) -> dict[str, float]:
    """Fails for a non-positive amount: retried once, then failed for good."""
    if amount <= 0:
        raise ValueError(f"order {order_id}: amount must be positive, got {amount}")
    time.sleep(0.05)
    return {"order_id": order_id, "charged": amount}


@task()
def export_csv(rows: int) -> dict[str, object]:
    """A slow task, so the first snapshot has something running."""
    time.sleep(1.5)
    return {"rows": rows, "file": "export.csv"}


Row = Mapping[str, Any]


def print_table(rows: Sequence[Row],
                columns: list[tuple[str, Callable[[Row], object]]]) -> None:
    """Print dicts as an aligned text table; columns are (header, function of the row)."""
    cells = [[str(fn(r)) for _, fn in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _) in enumerate(columns)]
    print("    " + "  ".join(h.ljust(w) for (h, _), w in zip(columns, widths)).rstrip())
    print("    " + "  ".join("-" * w for w in widths))
    for c in cells:
        print("    " + "  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
    if not rows:
        print("    (none)")


def clock(iso: str | None) -> str:
    """The time of day of an ISO-8601 timestamp, or '-'."""
    return datetime.fromisoformat(iso).strftime("%H:%M:%S.%f")[:-3] if iso else "-"


def outcome(t: Row) -> str:
    """A task's result or first line of error, shortened."""
    text: str = t["error"].splitlines()[0] if t["error"] else (
        repr(t["result"]) if t["status"] == "done" else "")
    return text if len(text) <= 60 else text[:57] + "..."


def snapshot(title: str, note: str | None = None) -> None:
    """Print every monitoring function's answer."""
    print(f"\n===== {title} =====")
    print("\nget_queue_stats():")
    print_table(get_queue_stats(), [("queue", lambda r: r["queue"]),
                                    ("status", lambda r: r["status"]),
                                    ("count", lambda r: r["count"])])
    print(f"\nlist_queues(): {list_queues()}")
    print("\nget_recent_tasks(limit=6):")
    print_table(get_recent_tasks(limit=6), [
        ("id", lambda t: t["id"]), ("name", lambda t: t["name"]),
        ("queue", lambda t: t["queue"]), ("status", lambda t: t["status"]),
        ("attempts", lambda t: f"{t['attempts']}/{t['max_retries'] + 1}"),
        ("started", lambda t: clock(t["started_at"]) if t["status"] != "pending" else "-"),
        ("result or error", outcome)])
    print("\nget_failed_tasks(limit=5):")
    print_table(get_failed_tasks(limit=5), [
        ("id", lambda t: t["id"]), ("name", lambda t: t["name"]),
        ("attempts", lambda t: t["attempts"]), ("args", lambda t: t["args"]),
        ("error", lambda t: t["error"].splitlines()[0])])
    print("\nget_active_workers():")
    print_table(get_active_workers(), [
        ("worker_id", lambda w: w["worker_id"]), ("queues", lambda w: w["queues"]),
        ("concurrency", lambda w: w["concurrency"]),
        ("active_tasks", lambda w: w["active_tasks"]),
        ("last_heartbeat", lambda w: clock(w["last_heartbeat"]))])
    if note:
        print(textwrap.fill(f"({note})", width=88, initial_indent="    ",
                            subsequent_indent="     "))


def main() -> None:
    """Run a mix of tasks under a daemon and print the monitoring views."""
    from liteq.launcher import start_daemon

    workdir = tempfile.mkdtemp(prefix="liteq-monitoring-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "liteqd.sock")
    print(f"database: {os.environ['LITEQ_DB']}")
    try:
        ids: list[TaskHandle[object]] = [export_csv.delay(rows=5000)]
        ids += resize_image.map(range(1, 7))
        ids += charge_card.starmap([(101, 19.99), (102, -5), (103, 42.0)])
        print(f"enqueued {len(ids)} tasks: 1 export, 6 image resizes, 3 charges "
              f"(order 102 has a bad amount and will fail)")
        print("starting liteqd with 2 worker processes for queues images, billing, default")
        with start_daemon(__file__, queues="images,billing,default", concurrency=2,
                          log_path=os.path.join(workdir, "liteqd.log")):
            time.sleep(0.4)
            snapshot("while the daemon works (0.4 s after it started)",
                     note="a task a worker process holds counts as running, including the "
                          "few queued in each child ahead of time (--prefetch), so "
                          "active_tasks can exceed the concurrency")
            for task_id in ids:
                wait_for_task(task_id, timeout=30)
            snapshot("when every task has finished")
        print("\nafter the daemon stopped, get_active_workers() returns "
              f"{get_active_workers()}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("done.")


if __name__ == "__main__":
    main()
