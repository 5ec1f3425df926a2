"""The daemon fires cron schedules from its own loop, each occurrence once."""

import json
import os
import signal
import subprocess
import sys
import time

from liteq import backends

APP = '''
from liteq import task, register_schedule

@task
def tick():
    return "tick"

register_schedule(tick, "* * * * * */1", name="every-second")
'''


def test_daemon_fires_schedule_every_second(db, workdir):
    app = os.path.join(workdir, "cron_app.py")
    with open(app, "w") as f:
        f.write(APP)
    log = os.path.join(workdir, "daemon.log")
    env = dict(os.environ)  # LITEQ_DB (each backend) and LITEQ_SOCKET from conftest's db
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "liteqd.cli", "--app", app,
                                 "--concurrency", "1", "--log-format", "json"],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        store = backends.get_backend()
        while time.monotonic() < deadline and store.count_tasks(status="done") < 4:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    rows = store.find_tasks(name="tick", limit=100)
    assert len(rows) >= 4, open(log).read()
    # Each occurrence is enqueued once: run_at (the occurrence) never repeats.
    run_ats = [r["run_at"] for r in rows]
    assert len(set(run_ats)) == len(run_ats)
    # And they are one second apart.
    gaps = sorted(b - a for a, b in zip(sorted(run_ats), sorted(run_ats)[1:]))
    assert all(abs(g - 1.0) < 0.01 for g in gaps), gaps
    events = [json.loads(line)["event"] for line in open(log)]
    assert events.count("schedule.fired") >= 4
    # As in task events, the task is `name`; next_run is an ISO time, not epoch seconds.
    fired = [e for e in map(json.loads, open(log)) if e["event"] == "schedule.fired"]
    assert all(e["name"] == "tick" and "task" not in e and "T" in e["next_run"]
               for e in fired), fired[0]
    backends.forget_backends()
