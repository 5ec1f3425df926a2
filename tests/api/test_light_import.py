"""An app that only enqueues pays for none of the daemon's dependencies.

SQLite only (pytestmark): the probe app uses liteq 0.2's liteq.db.get_conn/init_db,
which are SQLite's.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.sqlite_only

HEAVY = ("psutil", "structlog", "setproctitle", "croniter")

ENQUEUE_ONLY = r"""
import json, sys
import liteq
from liteq import task, get_task_status
import liteq.monitoring as monitoring
from liteq.db import get_conn, init_db

@task
def plain(x):
    return x

@task(queue="emails", max_retries=5, timeout=30, priority=2)
async def coro(to, subject=None):
    return to

init_db()
ids = [plain.delay(1), coro.delay("a@example.com", subject="hi"), plain.schedule(60, 2),
       plain.apply_async(args=[3], countdown=5, priority=9)]
ids += plain.map([4, 5]) + coro.starmap([("b@example.com",)])
assert all(get_task_status(i)["status"] == "pending" for i in ids)
assert get_task_status(10**9) is None
monitoring.get_queue_stats(); monitoring.get_recent_tasks(limit=5); monitoring.list_queues()
monitoring.get_failed_tasks(limit=5); monitoring.get_active_workers()
liteq.cancel_task(ids[0]); liteq.retry_task(ids[0]); liteq.purge_tasks(3600)
try:
    liteq.wait_for_task(ids[1], timeout=0.05)
except liteq.WaitTimeout:
    pass
with get_conn() as conn:
    conn.execute("SELECT COUNT(*) FROM tasks").fetchone()
EXTRA
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"heavy": heavy, "ids": ids}))
"""


def _run(db_path, extra=""):
    code = ENQUEUE_ONLY.replace("HEAVY", repr(HEAVY)).replace("EXTRA", extra)
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=os.path.dirname(db_path))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_enqueue_only_app_imports_no_daemon_dependencies(db_path):
    out = _run(db_path)
    print("heavy modules loaded:", out["heavy"])
    assert out["heavy"] == []
    assert len(out["ids"]) == 7


def test_the_check_detects_a_heavy_import(db_path):
    # The same probe sees a daemon dependency when one is loaded, so the test above
    # would notice liteq pulling one in.
    out = _run(db_path, extra="import psutil")
    assert "psutil" in out["heavy"]


def test_import_liteq_loads_no_web_framework(db_path):
    # liteq.using() recognises SQLAlchemy and Django objects by their class's module:
    # `import liteq` (and liteq.using) imports neither, nor Flask.
    code = ("import sys, json, liteq; liteq.using; "
            "print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('django', 'flask', 'sqlalchemy', 'flask_sqlalchemy'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(db_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
