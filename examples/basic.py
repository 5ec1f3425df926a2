"""The basics: a sync task and an async task, enqueued and checked.

Run it:            python examples/basic.py
The same tasks under the daemon, in production style:
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/basic.py --concurrency 2
"""

import asyncio
import os
import tempfile
import time

from liteq import TaskHandle, task


@task()
def send_email(to: str, subject: str) -> str:
    """A sync task: pretend to send an email."""
    time.sleep(0.2)
    return f"email sent to {to}: {subject}"


@task(queue="reports", max_retries=5)
def generate_report(report_id: int) -> dict[str, object]:
    """A task on another queue, with more retries."""
    time.sleep(0.3)
    return {"report_id": report_id, "status": "ready"}


@task()
async def fetch_data(url: str) -> dict[str, object]:
    """An async task: runs on the worker child's event loop."""
    await asyncio.sleep(0.1)
    return {"url": url, "bytes": 1234}


def main() -> None:
    """Start a daemon on a temporary database, run three tasks, print what happens."""
    from liteq.launcher import start_daemon

    workdir = tempfile.mkdtemp(prefix="liteq-basic-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    print(f"database: {os.environ['LITEQ_DB']}")

    # .delay() is checked against the function by mypy and pyright, and returns a
    # TaskHandle: the task id (an int) that can also wait for the typed result.
    email: TaskHandle[str] = send_email.delay(to="user@example.com", subject="Hello!")
    report = generate_report.delay(report_id=123)
    fetch = fetch_data.delay(url="https://api.example.com")
    handles: list[TaskHandle[object]] = [email, report, fetch]
    for handle in handles:
        status = handle.status()
        assert status is not None
        print(f"enqueued task {handle} ({status.name}, queue {status.queue}): "
              f"{status['status']}")

    print("starting liteqd with 2 worker processes for queues default and reports ...")
    with start_daemon(__file__, queues="default,reports", concurrency=2,
                      log_path=os.path.join(workdir, "liteqd.log")):
        for handle in handles:
            status = handle.wait(timeout=20)
            print(f"task {handle} {status.name}: {status.status} after "
                  f"{status.attempts}/{status.max_retries + 1} attempt(s) -> "
                  f"{status.result!r}")
        sent: str = email.result()  # typed: the function's return value
        print(f"email.result() -> {sent!r}")
    print("daemon stopped; done.")


if __name__ == "__main__":
    main()
