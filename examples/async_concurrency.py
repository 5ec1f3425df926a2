"""Many coroutine tasks in one worker process: `liteqd --async-concurrency N`.

1. 100 `fetch` tasks, each an `async def` that waits 0.2 s (standing in for an
   HTTP call), run on ONE worker process started with --async-concurrency 25:
   up to 25 share its event loop at once, so they finish in about a second
   instead of 20 s one after another.
2. `slow_fetch` has timeout=1 and waits 30 s. At 1 s its coroutine alone is
   cancelled (it fails with TaskTimeout); the worker process and the other
   coroutines go on.
3. `resize` is a plain function: it runs alone in its worker, never beside
   coroutines.

Run it:            python examples/async_concurrency.py
The same tasks under the daemon, in production style:
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/async_concurrency.py \\
        --concurrency 1 --async-concurrency 25
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time

from liteq import current_task, task, wait_for_task


@task
async def fetch(n: int) -> dict[str, float]:
    """Waits 0.2 s on the event loop; returns its window and its worker's pid."""
    start = time.time()
    await asyncio.sleep(0.2)
    return {"n": n, "task_id": current_task.id, "start": start, "end": time.time(),
            "pid": os.getpid()}


@task(timeout=1, max_retries=0)
async def slow_fetch() -> str:
    """Waits 30 s; its time limit is 1 s."""
    await asyncio.sleep(30)
    return "finished (it should not get here)"


@task
def resize(width: int) -> dict[str, float]:
    """A plain function: it runs alone in its worker."""
    start = time.time()
    time.sleep(0.1)
    return {"width": width, "start": start, "end": time.time(), "pid": os.getpid()}


def most_at_once(windows: list[tuple[float, float]]) -> int:
    """The largest number of windows open at the same instant."""
    edges = sorted([(s, 1) for s, _ in windows] + [(e, -1) for _, e in windows])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def main() -> int:
    """Run the tasks under a daemon with one worker process and report what happened."""
    from liteq.launcher import start_daemon

    workdir = tempfile.mkdtemp(prefix="liteq-async-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "liteqd.sock")
    print(f"database: {os.environ['LITEQ_DB']}")
    ok = True
    try:
        print("starting liteqd with 1 worker process and --async-concurrency 25 ...")
        with start_daemon(__file__, concurrency=1, async_concurrency=25,
                          log_path=os.path.join(workdir, "liteqd.log")):
            t0 = time.time()
            slow = slow_fetch.delay()
            ids = [fetch.delay(n) for n in range(100)]
            sized = resize.delay(640)
            results = [wait_for_task(i, timeout=30) for i in ids]
            took = time.time() - t0
            done = [r["result"] for r in results if r["status"] == "done"]
            pids = {d["pid"] for d in done}
            peak = most_at_once([(d["start"], d["end"]) for d in done])
            print(f"\nfetch: {len(done)} of 100 done in {took:.1f} s "
                  f"(one after another: 20 s)")
            print(f"   they ran in {len(pids)} worker process(es); up to {peak} "
                  f"overlapped (the limit is 25)")
            ok &= len(done) == 100 and len(pids) == 1 and 1 < peak <= 25

            s = wait_for_task(slow, timeout=20)
            print(f"\nslow_fetch: {s['status']} ({s['error'].splitlines()[0]})")
            ok &= s["status"] == "failed" and "TaskTimeout: timed out after 1 s" in s["error"]

            r = wait_for_task(sized, timeout=20)
            res = r["result"]
            alone = all(res["end"] <= d["start"] or d["end"] <= res["start"] for d in done)
            print(f"\nresize (a plain function): {r['status']}; "
                  f"ran beside no coroutine: {'yes' if alone else 'NO'}")
            ok &= r["status"] == "done" and alone

            after = wait_for_task(fetch.delay(100), timeout=20)["result"]
            same = after["pid"] in pids
            print(f"\nafter the timeout the same worker process went on: "
                  f"{'yes' if same else 'no'}")
            ok &= same
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\ndaemon stopped; done." if ok else "\nsomething did not go as expected!")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
