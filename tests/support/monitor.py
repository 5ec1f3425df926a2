"""A real `liteq monitor` process for the web tests, on a free port, reaped with the
test's other processes."""

import contextlib
import http.client
import re
import socket
import subprocess
import sys

from .processes import wait_for

PYTHON = sys.executable


# ---- the web panel ----------------------------------------------------------------------

class Monitor:
    """A real `liteq monitor` process on a free port, started through `daemons` (a
    Daemons, which kills it afterwards) with extra ARGS; its stderr goes to a file."""

    def __init__(self, daemons, *args, env=None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.err_path = daemons.path(f"monitor-{self.port}.err")
        with open(self.err_path, "wb") as err:
            self.proc = daemons.popen([PYTHON, "-m", "liteq.cli", "monitor", "--port",
                                       str(self.port), *args], env=env,
                                      stdout=subprocess.DEVNULL, stderr=err)

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def stderr(self):
        """What it printed so far (its log)."""
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_listening(self):
        """Wait until it accepts connections (fail, showing its stderr, if it exits)."""
        def up():
            assert self.proc.poll() is None, f"liteq monitor exited:\n{self.stderr()}"
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return True
            return False
        wait_for(up, 20, lambda: f"liteq monitor is not listening:\n{self.stderr()}")
        return self

    def login_url(self):
        """The login URL it printed (None when it printed none)."""
        found = re.search(r"Open this address to log in: (http://\S+)", self.stderr())
        return found.group(1) if found else None

    def request(self, path, method="GET", headers=None, body=None):
        """(status, headers as a list of (name, value), body text); no redirects followed."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read().decode()
        finally:
            conn.close()
