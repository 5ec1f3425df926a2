"""`liteqctl status --all`: every live daemon on the database, read from the database, so
it shows daemons on other hosts too (here: two daemons with sockets of their own)."""

import json
import os

from support.processes import wait_for
from support.task_table import wait_status


def test_status_all_lists_every_live_daemon_with_its_busy_children(daemons, app):
    a = daemons.start("--concurrency", "2", "--socket", daemons.path("a.sock"))
    b = daemons.start("--concurrency", "1", "--queues", "reports",
                      "--socket", daemons.path("b.sock"))
    marker = daemons.path("started.txt")
    running = app.slow.delay(30, marker)
    wait_for(lambda: os.path.exists(marker), 10, "the slow task never started")

    def listed():
        out = daemons.liteqctl("--db", daemons.db, "status", "--all", "--json")
        assert out.returncode == 0, out.stderr
        rows = {r["pid"]: r for r in json.loads(out.stdout)}
        return rows if {a.pid, b.pid} <= set(rows) and rows[a.pid]["busy"] == 1 else None
    rows = wait_for(listed, 15, "liteqctl status --all never showed both daemons")
    assert rows[a.pid]["concurrency"] == 2 and rows[a.pid]["queues"] == ["default"]
    assert rows[b.pid]["queues"] == ["reports"] and rows[b.pid]["busy"] == 0
    assert all(0 <= r["heartbeat_age_s"] < 5 for r in rows.values())

    text = daemons.liteqctl("--db", daemons.db, "status", "--all")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["HOST", "PID", "QUEUES", "CHILDREN", "BUSY", "HEARTBEAT"]
    assert any(str(a.pid) in line and "default" in line for line in lines[1:])
    assert any(str(b.pid) in line and "reports" in line for line in lines[1:])

    b.stop()
    gone = daemons.liteqctl("--db", daemons.db, "status", "--all", "--json")
    assert b.pid not in {r["pid"] for r in json.loads(gone.stdout)}
    assert wait_status(running, "running")["status"] == "running"
