"""An app file that starts its own loop at import (liteq 0.2's README snippets end with
`Scheduler(check_interval=60).run()` or `Worker(...).run()`), given to the CLIs that
import apps: each stops at once with one clear line and a non-zero exit, instead of
hanging in the import or starting a second loop.

Real `liteq` and `liteqd` processes on a real SQLite file; the daemons fixture kills
whatever a test started, even when the test fails.
"""

import os
import sqlite3
import textwrap

import pytest

from support.daemon_helpers import PYTHON
from support.processes import wait_for
from support.task_table import count_tasks

BIN = os.path.dirname(PYTHON)
LITEQ = os.path.join(BIN, "liteq")
LITEQD = os.path.join(BIN, "liteqd")

# Long enough for a refused start on a loaded machine; a hang is caught by it.
REFUSE_LIMIT = 30

APPS = {
    # liteq 0.2's README cron snippet, with a per-second schedule so that a second
    # scheduler would enqueue something at once.
    "scheduler_app.py": """
        from liteq import task, register_schedule
        from liteq.scheduler import Scheduler

        @task()
        def cleanup():
            print("cleaning")

        register_schedule(cleanup, "* * * * * *")

        scheduler = Scheduler(check_interval=60)
        scheduler.run()
        """,
    # liteq 0.2's README "run a worker from Python" snippet.
    "worker_app.py": """
        from liteq import task
        from liteq.db import init_db
        from liteq.worker import Worker

        @task()
        def send_email(to):
            return to

        init_db()
        worker = Worker(queues=["default", "emails"], concurrency=2)
        worker.run()
        """,
}

CASES = [
    ("liteq scheduler", "scheduler_app.py", "Scheduler.run()"),
    ("liteqd", "scheduler_app.py", "Scheduler.run()"),
    ("liteqd", "worker_app.py", "Worker.run()"),
    ("liteq worker", "worker_app.py", "Worker.run()"),
]


@pytest.mark.parametrize("command, app_file, call", CASES,
                         ids=[f"{c}-{a[:-3]}" for c, a, _ in CASES])
def test_app_that_runs_a_loop_at_import_is_refused_with_one_line(daemons, command, app_file,
                                                                  call):
    path = daemons.path(app_file)
    with open(path, "w") as f:
        f.write(textwrap.dedent(APPS[app_file]))
    argv = {"liteq scheduler": [LITEQ, "scheduler", "--app", path, "--interval", "1"],
            "liteq worker": [LITEQ, "worker", "--app", path, "--concurrency", "1"],
            "liteqd": [LITEQD, "--app", path, "--concurrency", "1"]}[command]

    res = daemons.run(argv, timeout=REFUSE_LIMIT)

    assert res.returncode != 0, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert app_file in line and call in line, line
    assert "starts its own loop at import" in line, line
    assert 'if __name__ == "__main__":' in line, line
    # Nothing ran: no child was forked, no schedule fired.
    assert "child.spawned" not in res.stdout, res.stdout
    assert _tasks_in(daemons.db) == 0


def test_the_same_file_run_as_a_script_still_runs_its_loop(daemons):
    # The guard is for imports by LiteQ only: `python scheduler_app.py` is what the
    # seed README meant, and it must keep working.
    path = daemons.path("scheduler_app.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(APPS["scheduler_app.py"]))
    proc = daemons.popen([PYTHON, path])
    wait_for(lambda: _tasks_in(daemons.db) > 0, 20,
             message="the script's own scheduler never fired")
    assert proc.poll() is None


def _tasks_in(db):
    """How many tasks the database holds; 0 while the file or its schema is not there."""
    try:
        return count_tasks(db)
    except sqlite3.OperationalError:
        return 0
