"""`liteq monitor` logs its server's events as JSON lines on stdout, like liteqd: a real
`liteq monitor` process, real HTTP requests. (The panel itself is tests/web/test_panel*.py.)"""

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest

from support.daemon_helpers import PYTHON
from support.processes import kill_group, wait_for

pytest.importorskip("uvicorn")
pytestmark = pytest.mark.sqlite_only

LITEQ = os.path.join(os.path.dirname(PYTHON), "liteq")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_monitor_logs_json_events_without_the_token(db, workdir):
    from liteq import backends
    backends.open_backend(db).close()
    port = _free_port()
    out_path = os.path.join(workdir, "monitor.out")
    with open(out_path, "w") as out:
        proc = subprocess.Popen([LITEQ, "monitor", "--port", str(port), "--db", db,
                                 "--token", "s3cret-token", "--log-level", "info"],
                                stdout=out, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(base + "/metrics") is not None or proc.poll() is not None, 30,
                 "the monitor never answered")
        assert proc.poll() is None, proc.communicate()
        _get(base + "/?token=s3cret-token")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            kill_group(proc)
        proc.stderr.close()
    text = open(out_path).read()
    events = [json.loads(line) for line in text.splitlines()]   # every line is JSON
    names = [e["event"] for e in events]
    assert "monitor.log" in names and "monitor.request" in names
    requests = [e for e in events if e["event"] == "monitor.request"]
    assert {"method", "path", "status", "client", "timestamp", "level"} <= set(requests[0])
    assert "/" in [e["path"] for e in requests]
    assert "s3cret-token" not in text           # a login URL's query is never logged
