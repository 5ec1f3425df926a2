"""Timeouts and retries: a stuck task is killed, a flaky one succeeds on its 3rd try.

1. stuck_task has timeout=1 and sleeps 30 s (after starting a `sleep 30`
   subprocess). At 1 s the worker raises TaskTimeout inside it; the attempt
   fails with "timed out after 1 s", the worker process kills the subprocess and
   exits, and the daemon starts a fresh one in its place.
2. stubborn_task also has timeout=1 but catches TaskTimeout and keeps sleeping.
   The supervisor then kills the worker's whole process tree (SIGKILL) at the
   hard limit, the time limit plus --kill-grace (0.5 s here).
3. flaky_task fails twice (it counts its attempts in a file) and succeeds on
   its third attempt; LiteQ retries it after retry_delay seconds.

Neither timed-out task is retried (max_retries=0); with retries left, a timed
out attempt is retried like any other failure.

Run it:            python examples/timeouts_and_retries.py
The same tasks under the daemon, in production style:
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/timeouts_and_retries.py \\
        --concurrency 3 --kill-grace 0.5
"""

import json
import os
import shutil
import subprocess
import tempfile
import time

from liteq import TaskTimeout, task, wait_for_task


def _record_processes(pid_file: str, extra: "subprocess.Popen[bytes]") -> None:
    """Write this worker's pid and the subprocess's, with their start times."""
    import psutil

    me = psutil.Process()
    with open(pid_file, "w") as f:
        json.dump({"worker process": [me.pid, me.create_time()],
                   "its `sleep 30` subprocess": [extra.pid,
                                                 psutil.Process(extra.pid).create_time()]}, f)


@task(timeout=1, max_retries=0)
def stuck_task(pid_file: str) -> str:
    """Hangs for 30 s; its time limit is 1 s."""
    child = subprocess.Popen(["sleep", "30"])
    _record_processes(pid_file, child)
    time.sleep(30)
    return "finished (it should not get here)"


@task(timeout=1, max_retries=0)
def stubborn_task(pid_file: str) -> str:
    """Ignores the soft time limit, so only the supervisor's SIGKILL stops it."""
    child = subprocess.Popen(["sleep", "30"])
    _record_processes(pid_file, child)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            time.sleep(deadline - time.time())
        except TaskTimeout:
            pass  # a badly behaved task: swallow it and carry on
    return "finished (it should not get here)"


@task(max_retries=3, retry_delay=0.2, retry_backoff=1.0)
def flaky_task(counter_file: str) -> str:
    """Fails on its first two attempts, succeeds on the third."""
    with open(counter_file, "a+") as f:
        f.seek(0)
        attempt = len(f.read().splitlines()) + 1
        f.write(f"{time.time()}\n")
    if attempt < 3:
        raise ConnectionError(f"attempt {attempt}: the service is not answering")
    return f"succeeded on attempt {attempt}"


def gone(pid: int, started: float) -> bool:
    """True when the process has exited (a zombie, or a new process reusing the pid,
    counts as gone)."""
    import psutil

    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - started) > 0.01 or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def report_processes(pid_file: str) -> bool:
    """Print whether the worker and its subprocess are gone (waiting up to 3 s)."""
    with open(pid_file) as f:
        procs: dict[str, tuple[int, float]] = json.load(f)
    deadline = time.time() + 3
    while time.time() < deadline and not all(gone(*p) for p in procs.values()):
        time.sleep(0.05)
    for role, (pid, started) in procs.items():
        print(f"   {role} {pid}: {'gone' if gone(pid, started) else 'STILL RUNNING'}")
    return all(gone(*p) for p in procs.values())


def main() -> int:
    """Run the three tasks under a daemon and report what happened to each."""
    from liteq.launcher import start_daemon

    workdir = tempfile.mkdtemp(prefix="liteq-timeouts-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "liteqd.sock")
    print(f"database: {os.environ['LITEQ_DB']}")
    ok = True
    try:
        stuck_pids = os.path.join(workdir, "stuck.json")
        stubborn_pids = os.path.join(workdir, "stubborn.json")
        counter = os.path.join(workdir, "flaky-attempts.txt")
        print("starting liteqd with 3 worker processes and --kill-grace 0.5 ...")
        with start_daemon(__file__, concurrency=3, kill_grace=0.5,
                          log_path=os.path.join(workdir, "liteqd.log")) as daemon:
            t0 = time.time()
            stuck = stuck_task.delay(stuck_pids)
            stubborn = stubborn_task.delay(stubborn_pids)
            flaky = flaky_task.delay(counter)
            print("enqueued stuck_task (timeout 1 s, sleeps 30 s), stubborn_task "
                  "(timeout 1 s, ignores it) and flaky_task (fails twice)")

            for title, task_id, pid_file in (("stuck_task", stuck, stuck_pids),
                                             ("stubborn_task", stubborn, stubborn_pids)):
                s = wait_for_task(task_id, timeout=20)
                print(f"\n{title}: {s['status']} after {time.time() - t0:.1f} s, "
                      f"attempts {s['attempts']}/{s['max_retries'] + 1}")
                print(f"   error: {s['error'].splitlines()[0]}")
                ok &= s["status"] == "failed" and "timed out after 1 s" in s["error"]
                ok &= report_processes(pid_file)

            s = wait_for_task(flaky, timeout=20)
            print(f"\nflaky_task: {s['status']} after {s['attempts']} attempts "
                  f"(max_retries {s['max_retries']}) -> {s['result']!r}")
            with open(counter) as f:
                times = [float(line) for line in f]
            for n, t in enumerate(times, 1):
                outcome = "succeeded" if n == len(times) and s["status"] == "done" \
                    else "failed: ConnectionError, retried after retry_delay 0.2 s"
                print(f"   attempt {n} at +{t - times[0]:.2f} s {outcome}")
            ok &= s["status"] == "done" and s["attempts"] == 3

            print("\nwhat the daemon logged (its JSON log, abridged):")
            ready = False
            for e in daemon.events():
                ready = ready or e["event"] == "daemon.ready"
                if e["event"] in ("task.timed_out", "task.retrying", "task.failed",
                                  "task.succeeded", "child.exited") or \
                        (e["event"] == "child.spawned" and ready):
                    detail = {k: e[k] for k in ("name", "attempt", "error", "timed_out",
                                                "limit_s", "retry_in_s", "pid", "how",
                                                "reason") if k in e}
                    print(f"   {e['event']:<15} {detail}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\ndaemon stopped; done." if ok else "\nsomething did not go as expected!")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
