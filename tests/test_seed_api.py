"""The seed project's Python API (PyPI liteq 0.2.1), name by name: every public name,
keyword and dict key of its released code works here, except the ones README.md lists
under "From the seed project" with the reason.

Real SQLite files, real daemons (tests/daemon_helpers.py kills every process a test
started), a real FastAPI app.
"""

import textwrap

import pytest

from daemon_helpers import APPS, PYTHON, app, daemons, wait_status  # noqa: F401


# ---- liteq.worker.Worker -------------------------------------------------------------------

def test_worker_takes_the_seeds_task_timeout_keyword(daemons, app):
    # The seed's Worker(queues, concurrency, task_timeout=None): a time limit for tasks
    # that set none. Here it kills the task, as liteqd's --timeout does.
    script = daemons.path("run_worker.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(f"""\
            import sys
            sys.path.insert(0, {APPS!r})
            import daemon_app
            from liteq.worker import Worker
            worker = Worker(["default"], 2, task_timeout=1)
            assert worker.task_timeout == 1 and worker.queues == ["default"]
            worker.run()
            """))
    d = daemons.start(cmd=[PYTHON, script])
    tid = app.slow.apply_async((30,), max_retries=0)
    ev = d.wait_event("task.failed", task_id=tid, timeout=20)
    assert ev["timed_out"] is True and "timed out after 1 s" in ev["error"], ev
    st = wait_status(tid, daemons=daemons)
    assert st["status"] == "failed" and "timed out after 1 s" in st["error"], st
    assert d.stop() == 0


def test_worker_shutdown_flag_set_from_another_thread_stops_run(daemons, app):
    # The seed's Worker.run() looped `while not self.shutdown`; a thread that sets the
    # flag stops it gracefully, and run() returns 0.
    script = daemons.path("run_worker.py")
    stop_file = daemons.path("stop-now")
    with open(script, "w") as f:
        f.write(textwrap.dedent(f"""\
            import os, sys, threading, time
            sys.path.insert(0, {APPS!r})
            import daemon_app
            from liteq.worker import Worker
            worker = Worker(["default"], 1)

            def stop_when_told():
                while not os.path.exists({stop_file!r}):
                    time.sleep(0.02)
                worker.shutdown = True

            threading.Thread(target=stop_when_told, daemon=True).start()
            code = worker.run()
            print("run returned", code, worker.shutdown, file=sys.stderr)
            sys.exit(code)
            """))
    d = daemons.start(cmd=[PYTHON, script])
    assert wait_status(app.add.delay(1, 2), daemons=daemons)["result"] == 3
    open(stop_file, "w").close()
    assert d.wait() == 0
    assert d.events("daemon.stopping")[0]["reason"] == "Worker.shutdown"
    assert "run returned 0 True" in d.stderr()
