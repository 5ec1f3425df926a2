"""systemd's side of the tests: a NOTIFY_SOCKET listener and a unit-file reader.

Shared by tests/deployment/ and the PostgreSQL outage tests, which check what a daemon
tells systemd.
"""

import socket
import time

import pytest


class NotifyListener:
    """The test's NOTIFY_SOCKET: a bound AF_UNIX datagram socket collecting messages."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages = []   # (monotonic time received, {KEY: value}, raw bytes)

    def close(self):
        self.sock.close()

    def _receive(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            raw = self.sock.recv(65536)
        except socket.timeout:
            return False
        fields = {}
        for line in raw.decode().split("\n"):
            if "=" in line:
                key, value = line.split("=", 1)
                fields[key] = value
        self.messages.append((time.monotonic(), fields, raw))
        return True

    def collect(self, seconds):
        """Receive for `seconds`; returns the messages received meanwhile."""
        start = len(self.messages)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())
        return self.messages[start:]

    def wait(self, key, value=None, after=0, timeout=15.0):
        """The index of the first message from `after` on with KEY (=value)."""
        deadline = time.monotonic() + timeout
        i = after
        while True:
            while i < len(self.messages):
                fields = self.messages[i][1]
                if key in fields and (value is None or fields[key] == value):
                    return i
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {key}={value} notification within {timeout} s; got "
                            f"{[m[2] for m in self.messages[after:]][-20:]}")
            self._receive(left)


def parse_unit(path):
    """{key: [values]} of a unit file (sections flattened; comments skipped)."""
    out = {}
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line[0] in "#;" or line.startswith("["):
                continue
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out
