"""What a flood of wake-up datagrams costs the supervisor (a script; pytest does not
collect it).

    .venv/bin/python tests/benchmarks/bench_wake_flood.py [--count 27000] [--seconds 3] [--json]

A real liteqd (SQLite, concurrency 1) runs one long task. This process, allowed to
write the database and so its wake-up socket, sends --count datagrams evenly over
--seconds from a non-blocking socket (what does not fit in the socket's queue is
refused, as for any sender): once "c<id>" cancel hints naming the running task,
once "w" wake-ups. Prints the supervisor's CPU seconds over the flood, the
datagrams sent and refused, and whether the task survived (a hint is not a cancel).
"""

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # run from a checkout without installing

from liteq.paths import wake_path  # noqa: E402

from bench_latency import Daemon, use_db  # noqa: E402  (this file's folder)

APP = '''
import time
from liteq import task


@task(name="bench_flood_sleep", max_retries=0)
def sleep(seconds):
    time.sleep(seconds)
'''


def flood(target, message, count, seconds):
    """(sent, refused): `count` datagrams over `seconds`, evenly spaced."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sent = refused = 0
    start = time.monotonic()
    try:
        for i in range(count):
            due = start + seconds * i / count
            while time.monotonic() < due:
                pass
            try:
                sock.sendto(message, target)
                sent += 1
            except OSError:
                refused += 1
    finally:
        sock.close()
    return sent, refused


def run(kind, count, seconds):
    workdir = tempfile.mkdtemp(prefix="lq-flood-")
    try:
        app_path = os.path.join(workdir, "flood_app.py")
        with open(app_path, "w") as f:
            f.write(APP)
        db, sock = os.path.join(workdir, "q.db"), os.path.join(workdir, "d.sock")
        daemon = Daemon(workdir, app_path, db, sock, concurrency=1)
        try:
            store = use_db(db, sock)
            task_id = _enqueue(app_path, seconds * 3 + 10)
            deadline = time.monotonic() + 30
            while store.get_task(task_id)["status"] != "running":
                if time.monotonic() > deadline:
                    raise SystemExit("the task did not start")
                time.sleep(0.05)
            supervisor = psutil.Process(daemon.proc.pid)
            before = sum(supervisor.cpu_times()[:2])
            message = b"c%d" % task_id if kind == "cancel" else b"w"
            sent, refused = flood(wake_path(sock), message, count, seconds)
            time.sleep(0.5)  # what is queued still gets read
            cpu = sum(supervisor.cpu_times()[:2]) - before
            status = store.get_task(task_id)["status"]
        finally:
            daemon.kill()
        return {"kind": kind, "sent": sent, "refused": refused,
                "supervisor_cpu_s": round(cpu, 3), "task_status": status}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_app = {}


def _enqueue(app_path, seconds):
    """sleep.delay(seconds), the app imported here once (task names are global)."""
    if "module" not in _app:
        import importlib.util
        spec = importlib.util.spec_from_file_location("bench_flood_app", app_path)
        _app["module"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_app["module"])
    return _app["module"].sleep.delay(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=27000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [run(kind, args.count, args.seconds) for kind in ("cancel", "wake")]
    if args.json:
        print(json.dumps(results))
        return
    print(f"bench_wake_flood: {args.count} datagrams over {args.seconds:g} s, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for r in results:
        print(f"  {r['kind']:<7} sent {r['sent']:>6,}  refused {r['refused']:>6,}  supervisor "
              f"CPU {r['supervisor_cpu_s']:.3f} s  task {r['task_status']}")


if __name__ == "__main__":
    main()
