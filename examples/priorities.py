"""Priorities: the higher a task's priority, the sooner it runs.

Tasks are enqueued in a mixed-up order with different priorities while no
worker can take them, then one worker process runs them one at a time. The
order they start in follows priority (highest first), and within one priority
it is first come, first served.

A priority comes from @task(priority=...), or per call from
.apply_async(priority=...), or per batch from .map/.starmap(priority=...).

Part 1 enqueues while the daemon is not running; part 2 pauses the queue of a
running daemon (liteq.control.pause, like `liteqctl pause default`), enqueues,
and resumes it.

Run it:            python examples/priorities.py
The same tasks under the daemon, in production style:
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/priorities.py --concurrency 1
"""

import os
import shutil
import tempfile
import time
from typing import Any

from liteq import get_task_status, task, wait_for_task


@task()
def job(label: str) -> dict[str, Any]:
    """An ordinary task (priority 0 unless the call says otherwise)."""
    started = time.time()
    time.sleep(0.05)
    return {"label": label, "started": started}


@task(priority=20)
def alert(message: str) -> dict[str, Any]:
    """A task whose every call has priority 20."""
    started = time.time()
    time.sleep(0.05)
    return {"label": f"alert: {message}", "started": started}


def enqueue_mix() -> list[int]:
    """Enqueue ten tasks in a mixed-up order; returns their ids in enqueue order."""
    ids: list[int] = []
    ids += job.starmap([("newsletter-1",), ("newsletter-2",)])          # priority 0
    ids.append(job.apply_async(["password-reset-1"], priority=10))
    ids.append(job.apply_async(["invoice-17"], priority=5))
    ids.append(job.delay("newsletter-3"))                               # priority 0
    ids.append(alert.delay("disk almost full"))                         # priority 20
    ids.append(job.apply_async(["invoice-18"], priority=5))
    ids += job.map(["cleanup-1", "cleanup-2"], priority=-5)
    ids.append(job.apply_async(["password-reset-2"], priority=10))
    return ids


def status_of(task_id: int) -> str:
    """The status of a task this example enqueued (so it exists)."""
    status = get_task_status(task_id)
    assert status is not None
    return str(status["status"])


def show_order(ids: list[int]) -> bool:
    """Wait for the tasks, print them in the order they started, and check that
    the order follows priority; returns True when it does."""
    rows: list[tuple[float, int, int, str]] = []
    for position, task_id in enumerate(ids, 1):
        status = wait_for_task(task_id, timeout=30)
        rows.append((status["result"]["started"], status["priority"], position,
                     status["result"]["label"]))
    rows.sort()
    first = rows[0][0]
    print("  run    started  priority  enqueued  task")
    for n, (started, priority, position, label) in enumerate(rows, 1):
        offset, order = f"+{started - first:.3f} s", f"#{position}"
        print(f"  {n:>3}  {offset:>9}  {priority:>8}  {order:>8}  {label}")
    # Expected: priority high to low, and enqueue order within a priority.
    expected = sorted(rows, key=lambda r: (-r[1], r[2]))
    ok = [r[3] for r in rows] == [r[3] for r in expected]
    print("  the order follows priority (ties: first enqueued runs first): "
          f"{'yes' if ok else 'NO'}")
    return ok


def main() -> int:
    """Enqueue with the daemon stopped, then with the queue paused; show both orders."""
    from liteq import control
    from liteq.launcher import start_daemon

    workdir = tempfile.mkdtemp(prefix="liteq-priorities-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "liteqd.sock")
    print(f"database: {os.environ['LITEQ_DB']}")
    log_path = os.path.join(workdir, "liteqd.log")
    try:
        print("\n== part 1: enqueue while no daemon runs ==")
        ids = enqueue_mix()
        print(f"enqueued {len(ids)} tasks; all are "
              f"{', '.join(sorted({status_of(i) for i in ids}))}")
        print("starting liteqd with 1 worker process ...")
        with start_daemon(__file__, concurrency=1, log_path=log_path):
            ok1 = show_order(ids)

            print("\n== part 2: pause the queue of a running daemon, enqueue, resume ==")
            reply = control.pause("default")
            print(f"paused queues: {reply['paused']}")
            ids = enqueue_mix()
            time.sleep(0.3)
            print(f"enqueued {len(ids)} tasks; 0.3 s later they are still "
                  f"{', '.join(sorted({status_of(i) for i in ids}))}")
            reply = control.resume("default")
            print(f"resumed; paused queues now: {reply['paused']}")
            ok2 = show_order(ids)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\ndaemon stopped; done." if ok1 and ok2 else "\nthe order did NOT follow priority!")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
