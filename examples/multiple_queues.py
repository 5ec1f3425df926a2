"""Queues with pools of their own: a flood of slow reports does not delay an email.

Two queues, "emails" (fast, urgent) and "reports" (slow). The daemon runs each
queue in its own pool of worker processes, so however many reports are waiting,
an email only waits for the email pool. For contrast, the same work then runs on
one shared pool, where the email queues up behind the reports.

Run it:            python examples/multiple_queues.py
The same tasks under the daemon, in production style (one pool per queue):
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/multiple_queues.py \\
        --pool emails:emails:1 --pool reports:reports:2
  or one shared pool for both queues:
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/multiple_queues.py \\
        --queues emails,reports --concurrency 3
"""

import os
import shutil
import tempfile
import time
from typing import Any, TypedDict

from liteq import TaskHandle, task
from liteq.monitoring import get_queue_stats

REPORTS = 12          # slow tasks flooding the "reports" queue
REPORT_SECONDS = 0.5  # how long each report takes
EMAILS = 3            # emails sent while the reports are running


class Sent(TypedDict):
    """What send_email returns."""
    to: str
    started: float


@task(queue="emails")
def send_email(to: str) -> Sent:
    """A fast task on the "emails" queue; returns when it started (epoch seconds)."""
    started = time.time()
    time.sleep(0.05)
    return {"to": to, "started": started}


@task(queue="reports")
def build_report(report_id: int, seconds: float) -> dict[str, float]:
    """A slow task on the "reports" queue."""
    started = time.time()
    time.sleep(seconds)
    return {"report_id": report_id, "started": started}


def reports_waiting() -> int:
    """How many reports are pending (no worker has taken them yet), from the queue stats."""
    return sum(int(s["count"]) for s in get_queue_stats()
               if s["queue"] == "reports" and s["status"] == "pending")


def run_scenario(title: str, log_path: str, **daemon_flags: Any) -> float:
    """Flood the reports queue, send a few emails meanwhile, and time the emails."""
    from liteq.launcher import start_daemon

    print(f"\n== {title} ==")
    with start_daemon(__file__, log_path=log_path, **daemon_flags):
        t0 = time.time()
        reports = build_report.starmap((i, REPORT_SECONDS) for i in range(1, REPORTS + 1))
        print(f"enqueued {REPORTS} reports of {REPORT_SECONDS:g} s each")
        time.sleep(0.3)  # let the reports get going
        sent: list[tuple[float, TaskHandle[Sent], int]] = []
        for n in range(1, EMAILS + 1):
            waiting = reports_waiting()
            sent.append((time.time(), send_email.delay(to=f"user{n}@example.com"), waiting))
            time.sleep(0.3)
        waits: list[float] = []
        for enqueued, email, waiting in sent:
            result = email.result(timeout=30)   # typed: a Sent
            waited = result["started"] - enqueued
            waits.append(waited)
            print(f"  email to {result['to']} sent at +{enqueued - t0:.1f} s, "
                  f"{waiting} reports still pending: it started {waited:.3f} s "
                  f"after .delay()")
        for report in reports:
            report.wait(timeout=60)
        print(f"all {REPORTS} reports done after {time.time() - t0:.1f} s; "
              f"emails waited {max(waits):.3f} s at most")
    return max(waits)


def main() -> None:
    """Run the flood twice: with a pool per queue, then with one shared pool."""
    workdir = tempfile.mkdtemp(prefix="liteq-queues-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "liteqd.sock")
    log_path = os.path.join(workdir, "liteqd.log")
    print(f"database: {os.environ['LITEQ_DB']}")
    try:
        own = run_scenario("a pool per queue: emails:emails:1 and reports:reports:2", log_path,
                           pool=["emails:emails:1", "reports:reports:2"])
        shared = run_scenario("one shared pool of 3 for emails and reports", log_path,
                              queues="emails,reports", concurrency=3)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nwith its own pool an email waited at most {own:.3f} s; "
          f"sharing a pool with the reports it waited up to {shared:.3f} s.")
    print("daemon stopped; done.")


if __name__ == "__main__":
    main()
