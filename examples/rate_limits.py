"""Rate limits: at most so many task starts a second, over every daemon on the database.

`@task(rate_limit="5/s")` lets at most five calls of a task start each second
(Celery's notation: "/s", "/m" or "/min", "/h"), spread evenly in time rather than
five at once; `liteqd --queue-rate sms=2/s` does the same for a whole queue. The
limits are kept in the database and checked inside the claim, so they hold however
many daemons and hosts share the queue. Tasks without a limit are not held back.

Run it:            python examples/rate_limits.py
The same tasks under the daemon, in production style:
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/rate_limits.py --queues default,sms \\
        --queue-rate sms=2/s
"""

import os
import shutil
import tempfile
import time

from liteq import task, wait_for_task


@task(rate_limit="5/s")
def call_partner_api(order: int) -> float:
    """A call to an API that allows five requests a second; returns when it started."""
    return time.time()


@task(queue="sms")
def send_sms(number: str) -> float:
    """An SMS through a gateway that takes two a second (the queue's --queue-rate)."""
    return time.time()


@task()
def resize_image(name: str) -> float:
    """Ordinary work, with no limit."""
    return time.time()


def most_in_a_second(starts: list[float]) -> int:
    """The most starts within any one second."""
    return max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)


def started(ids: list[int]) -> list[float]:
    """When each task started (its result), in order."""
    out: list[float] = []
    for task_id in ids:
        status = wait_for_task(task_id, timeout=30)
        out.append(float(status["result"]))
    return sorted(out)


def main() -> int:
    """Enqueue limited and unlimited tasks, run them, and show when they started."""
    from liteq.launcher import start_daemon

    workdir = tempfile.mkdtemp(prefix="liteq-rates-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "liteqd.sock")
    print(f"database: {os.environ['LITEQ_DB']}")
    try:
        api = [int(h) for h in call_partner_api.map(range(15))]
        sms = [int(h) for h in send_sms.map([f"+1555000{n:04d}" for n in range(6)])]
        images = [int(h) for h in resize_image.map([f"photo{n}.jpg" for n in range(10)])]
        print("enqueued 15 API calls (5/s), 6 SMS (queue sms at 2/s), 10 image resizes")
        with start_daemon(__file__, concurrency=4, queues="default,sms",
                          queue_rate="sms=2/s", log_path=os.path.join(workdir, "d.log")):
            api_starts, sms_starts = started(api), started(sms)
            image_starts = started(images)
        first = min(api_starts + sms_starts + image_starts)
        for label, starts in (("call_partner_api", api_starts), ("send_sms", sms_starts),
                              ("resize_image", image_starts)):
            offsets = " ".join(f"{t - first:.2f}" for t in starts)
            print(f"{label:>16}: started at +{offsets} s")
        # A limit of R a second lets at most R + 2 be claimed in any one second (see the
        # README); a start comes a few ms after its claim, so allow one more.
        ok = most_in_a_second(api_starts) <= 5 + 3 and most_in_a_second(sms_starts) <= 2 + 3
        print(f"at most {most_in_a_second(api_starts)} API calls and "
              f"{most_in_a_second(sms_starts)} SMS in any one second: "
              f"{'within the limits' if ok else 'OVER THE LIMITS'}")
        free = max(image_starts) < max(api_starts)
        print(f"the image resizes did not wait for the limited tasks: {'yes' if free else 'NO'}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("daemon stopped; done." if ok and free else "something went wrong")
    return 0 if ok and free else 1


if __name__ == "__main__":
    raise SystemExit(main())
