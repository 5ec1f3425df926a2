"""Workflows: a chain of dependent tasks, a unique task, cancelling a running task,
and a global concurrency limit.

Run it:            python examples/workflows.py
The same tasks under the daemon, in production style:
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/workflows.py --concurrency 4
"""

import os
import tempfile
import time

from liteq import cancel_task, chain, current_task, task, wait_for_task


@task()
def fetch(url: str) -> str:
    """Step 1 of the chain: pretend to download a page."""
    time.sleep(0.1)
    return f"<html>{url}</html>"


@task()
def count_chars() -> int:
    """Step 2: read step 1's result (the task this one depends on)."""
    (page,) = current_task.parent_results()
    return len(str(page))


@task()
def report() -> str:
    """Step 3: read step 2's result."""
    (chars,) = current_task.parent_results()
    return f"the page has {chars} characters"


@task()
def rebuild_index(shop: str) -> str:
    """A task enqueued with a unique_key: one at a time per shop."""
    time.sleep(0.2)
    return f"index of {shop} rebuilt"


@task()
def long_export() -> str:
    """A task that runs until it is cancelled: TaskCancelled is raised inside it
    (catch it to clean up, then let it go on)."""
    time.sleep(60)
    return "finished"


@task(concurrency=1)
def resize_image(n: int) -> list[float]:
    """At most one of these runs at a time, whatever the daemons' sizes."""
    started = time.time()
    time.sleep(0.2)
    return [started, time.time()]


def main() -> None:
    """Start a daemon on a temporary database, run the four workflows, print them."""
    from liteq.launcher import start_daemon

    workdir = tempfile.mkdtemp(prefix="liteq-workflows-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    print(f"database: {os.environ['LITEQ_DB']}")

    print("starting liteqd with 4 worker processes ...")
    with start_daemon(__file__, concurrency=4, log_path=os.path.join(workdir, "liteqd.log")):
        print("1. chain(fetch, count_chars, report): each step waits for the one before")
        handles = chain(fetch.s("https://example.com"), count_chars.s(), report.s())
        last = wait_for_task(handles[-1], timeout=20)
        for handle in handles:
            status = handle.status()
            assert status is not None
            print(f"   task {handle} {status.name}: {status.status} -> {status.result!r}")

        print("2. a unique task: the same key twice while it is pending or running: one task")
        first = rebuild_index.apply_async(("shop-1",), unique_key="rebuild:shop-1")
        second = rebuild_index.apply_async(("shop-1",), unique_key="rebuild:shop-1")
        print(f"   first id {first}, second id {second}: "
              f"{'the same task' if first == second else 'two tasks'}")
        first.wait(timeout=20)

        print("3. cancelling a running task")
        export = long_export.delay()
        deadline = time.time() + 20
        while (st := export.status()) is not None and st.status != "running" \
                and time.time() < deadline:
            time.sleep(0.05)
        now = export.status()
        print(f"   task {export} long_export is {now.status if now else None}; "
              f"cancel_task -> {cancel_task(export)}")
        status = export.wait(timeout=20)
        print(f"   task {export} long_export: {status.status} ({status.error})")

        print("4. @task(concurrency=1): three resizes, never two at once")
        resizes = [resize_image.delay(n) for n in range(3)]
        spans = sorted(handle.result(timeout=20) for handle in resizes)
        overlap = any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
        print(f"   ran one after another: {'no' if overlap else 'yes'}")
    print(f"chain result: {last['result']!r}")
    print("daemon stopped; done.")


if __name__ == "__main__":
    main()
