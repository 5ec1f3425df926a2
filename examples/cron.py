"""Cron schedules: a task every 2 seconds, fired by the daemon.

register_schedule() stores a schedule in the database, once per name: calling
it again at every import (as this file does) keeps one row, and changes it in
place when the expression or arguments change. liteqd fires due schedules in
its main loop, each occurrence exactly once even with several daemons on one
database, and runs the tasks like any other.

Cron expressions are croniter's: five fields (minute hour day month weekday),
plus an optional sixth for SECONDS, so "* * * * * */2" means every 2 seconds.

The example runs a daemon until it has seen 3 fires (about 5 seconds), prints
each fire as it happens,
and lists the schedules (list_schedules()) before and after.

Run it:            python examples/cron.py
The same schedules under the daemon, in production style (importing this file
registers them):
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/cron.py --concurrency 1
"""

import os
import shutil
import tempfile
import time
from datetime import datetime
from typing import Any

from liteq import register_schedule, task

if __name__ == "__main__":
    # Run as a script: use a temporary database (unless LITEQ_DB is set), before
    # the registrations below write to one. Under liteqd, LITEQ_DB is its --db.
    WORKDIR = tempfile.mkdtemp(prefix="liteq-cron-")
    os.environ.setdefault("LITEQ_DB", os.path.join(WORKDIR, "liteq.db"))
    os.environ["LITEQ_SOCKET"] = os.path.join(WORKDIR, "liteqd.sock")

WANTED_FIRES = 3    # stop after this many fires (about 5 s) ...
MAX_SECONDS = 8.0   # ... or after this long, whichever comes first


@task()
def heartbeat(service: str) -> dict[str, Any]:
    """Runs every 2 seconds; returns when it ran."""
    return {"service": service, "ran_at": time.time()}


@task()
def nightly_backup() -> dict[str, str]:
    """Runs at 02:00 every day (it will not fire during the demo)."""
    return {"backup": "done"}


# At import, in every process: still one schedule per name.
register_schedule(heartbeat, "* * * * * */2", "api", name="heartbeat-every-2s")
register_schedule(nightly_backup, "0 2 * * *")


def hms(ts: float) -> str:
    """Local time of day with milliseconds."""
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def when(ts: float | None) -> str:
    """Local date and time, or 'never'."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "never"


def print_schedules() -> None:
    from liteq.scheduler import list_schedules

    for s in list_schedules():
        print(f"  {s['name']:<20} {s['cron_expr']:<15} task={s['task_name']:<15} "
              f"args={s['args']!s:<7} next={when(s['next_run_ts'])}  "
              f"last={when(s['last_run_ts'])}"
              f"  {'enabled' if s['enabled'] else 'disabled'}")


def main() -> int:
    """Run the daemon for WANTED_FIRES fires and print each one."""
    from liteq.launcher import start_daemon
    from liteq.monitoring import get_recent_tasks

    print(f"database: {os.environ['LITEQ_DB']}")
    print("schedules registered (list_schedules()):")
    print_schedules()
    seen: set[int] = set()
    fires: list[float] = []
    try:
        print(f"starting liteqd with 1 worker process until {WANTED_FIRES} fires ...")
        with start_daemon(__file__, concurrency=1,
                          log_path=os.path.join(WORKDIR, "liteqd.log")) as daemon:
            ready_at = time.time()
            t_end = time.time() + MAX_SECONDS
            while time.time() < t_end and len(fires) < WANTED_FIRES:
                for t in reversed(get_recent_tasks(limit=20)):
                    if t["name"] == "heartbeat" and t["status"] == "done" and \
                            t["id"] not in seen:
                        seen.add(t["id"])
                        due = datetime.fromisoformat(t["run_at"]).timestamp()
                        ran = t["result"]["ran_at"]
                        fires.append(ran)
                        note = " (it came due while the daemon was starting)" \
                            if due < ready_at else ""
                        print(f"  fire #{len(fires)}: task {t['id']} due {hms(due)}, "
                              f"ran at {hms(ran)} ({(ran - due) * 1000:.0f} ms later) "
                              f"-> {t['result']['service']!r}{note}")
                time.sleep(0.05)
            fired = [e for e in daemon.events() if e["event"] == "schedule.fired"]
        print(f"the daemon ran for {time.time() - ready_at:.1f} s: {len(fires)} fires seen, "
              f"{len(fired)} schedule.fired events in its log")
        if len(fires) > 1:
            gaps = [b - a for a, b in zip(fires, fires[1:])]
            print(f"time between fires: {', '.join(f'{g:.2f} s' for g in gaps)}")
        print("schedules now (list_schedules()):")
        print_schedules()
    finally:
        shutil.rmtree(WORKDIR, ignore_errors=True)
    print("done." if fires else "no fire seen!")
    return 0 if fires else 1


if __name__ == "__main__":
    raise SystemExit(main())
