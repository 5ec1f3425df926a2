"""A daemon's control socket, spoken raw from the test process (newline-delimited JSON)."""

import json
import socket
import time


# ---- the control socket, raw ------------------------------------------------------------------

def connect(path, timeout=10.0):
    """Connect like a patient client: wait while the daemon's accept backlog is full
    (a Unix socket that is not blocking fails with EAGAIN then). Non-blocking result."""
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    while True:
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            if time.monotonic() >= deadline:
                s.close()
                raise
            time.sleep(0.002)
        except OSError:
            s.close()
            raise


class Client:
    """A raw connection to the control socket: JSON lines out, JSON lines in."""

    def __init__(self, path, timeout=5.0):
        self.sock = connect(path, timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self):
        """The next reply line as a dict; ConnectionError on EOF before a full line."""
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"connection closed; unanswered bytes {self.buf[:200]!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, op, **args):
        self.send({"op": op, **args})
        return self.recv()

    def at_eof(self):
        """True when the server closed the connection (after any pending bytes)."""
        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not data:
                return True
            self.buf += data


def request(path, op, **args):
    """One request on a connection of its own; the reply as a dict."""
    with Client(path) as c:
        return c.request(op, **args)
