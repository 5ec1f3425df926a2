"""Bulk: enqueue 100,000 tasks in one go, then watch a daemon drain them.

.map(items) and .starmap(argument tuples) enqueue many calls of one task in a
single transaction with a single wake-up, far faster than a .delay() per call.
Here 100,000 calls go in as chunks of 10,000 (each chunk one transaction), with
a progress bar; then a daemon with 2 worker processes runs them all while a
second progress bar follows the queue draining. Both rates are printed.

The progress bars update in place on a terminal; otherwise (a pipe, a CI log)
they print plain lines.

Run it:            python examples/bulk.py
The same tasks under the daemon, in production style:
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/bulk.py --concurrency 2
"""

import os
import shutil
import sys
import tempfile
import time

from liteq import TaskHandle, task

TOTAL = 100_000
CHUNK = 10_000


@task()
def add(x: int, y: int) -> int:
    """A tiny task: the point is the volume."""
    return x + y


class ProgressBar:
    """A text progress bar on stdout: redrawn in place on a terminal, plain lines
    (one per tenth) otherwise."""

    def __init__(self, label: str, total: int, width: int = 40) -> None:
        self.label, self.total, self.width = label, total, width
        self.tty = sys.stdout.isatty()
        self.t0 = time.perf_counter()
        self.last_tenth = -1

    def update(self, done: int) -> None:
        elapsed = time.perf_counter() - self.t0
        frac = done / self.total if self.total else 1.0
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.tty:
            filled = int(frac * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            sys.stdout.write(f"\r{self.label} [{bar}] {frac:6.1%} {done:>7,}/{self.total:,} "
                             f"{rate:>9,.0f}/s")
            sys.stdout.flush()
        elif int(frac * 10) > self.last_tenth:
            self.last_tenth = int(frac * 10)
            print(f"{self.label.strip()}: {frac:6.1%}  {done:>7,}/{self.total:,}  "
                  f"after {elapsed:5.2f} s", flush=True)

    def finish(self) -> float:
        if self.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()
        return time.perf_counter() - self.t0


def count_by_status() -> dict[str, int]:
    """{status: count} over the whole queue, from liteq.monitoring."""
    from liteq.monitoring import get_queue_stats

    counts: dict[str, int] = {}
    for row in get_queue_stats():
        counts[row["status"]] = counts.get(row["status"], 0) + int(row["count"])
    return counts


def main() -> int:
    """Enqueue TOTAL tasks with a progress bar, then drain them with a daemon."""
    from liteq.launcher import start_daemon

    workdir = tempfile.mkdtemp(prefix="liteq-bulk-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "liteqd.sock")
    print(f"database: {os.environ['LITEQ_DB']}")
    try:
        print(f"enqueueing {TOTAL:,} tasks with add.starmap(), {CHUNK:,} per transaction:")
        bar = ProgressBar("enqueue", TOTAL)
        ids: list[TaskHandle[int]] = []
        for start in range(0, TOTAL, CHUNK):
            ids += add.starmap((i, i) for i in range(start, min(start + CHUNK, TOTAL)))
            bar.update(len(ids))
        seconds = bar.finish()
        print(f"enqueued {len(ids):,} tasks (ids {ids[0]}..{ids[-1]}) in {seconds:.2f} s: "
              f"{len(ids) / seconds:,.0f} tasks/s")

        print("starting liteqd with 2 worker processes to drain the queue:")
        with start_daemon(__file__, concurrency=2,
                          log_path=os.path.join(workdir, "liteqd.log")):
            bar = ProgressBar("drain  ", TOTAL)
            deadline = time.monotonic() + 120
            while True:
                counts = count_by_status()
                finished = counts.get("done", 0) + counts.get("failed", 0)
                bar.update(finished)
                if finished >= TOTAL or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            seconds = bar.finish()
        print(f"drained {finished:,} tasks in {seconds:.2f} s: {finished / seconds:,.0f} tasks/s "
              f"(done {counts.get('done', 0):,}, failed {counts.get('failed', 0):,})")
        last: int = ids[-1].result(timeout=10)   # typed: add returns an int
        print(f"the last task, add({TOTAL - 1}, {TOTAL - 1}), returned {last}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ok = counts.get("done", 0) == TOTAL
    print("daemon stopped; done." if ok else "not every task was done!")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
