"""The daemon end of enqueue wake-ups: a datagram socket beside the control socket."""

import os
import socket

from liteq.errors import ConfigError
from liteq.paths import wake_path


def claim_socket_path(path: str, kind: int) -> None:
    """Make `path` free to bind: remove a dead daemon's socket, refuse a live one's."""
    if not os.path.exists(path):
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            raise ConfigError(f"socket directory {directory} does not exist")
        return
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # left behind by a daemon that died
        return
    except OSError as exc:
        raise ConfigError(f"cannot use socket {path}: {exc}") from None
    finally:
        probe.close()
    raise ConfigError(f"another liteqd is already listening on {path}; stop it first, or give "
                      f"this one its own --socket / LITEQ_SOCKET")


class WakeListener:
    """Wakes the supervisor's claim loop when a producer sends a datagram."""

    def __init__(self, control_socket_path):
        self.path = wake_path(control_socket_path)
        self.sock = None

    def register(self, sup):
        """Bind the wake socket and watch it from the supervisor's loop."""
        claim_socket_path(self.path, socket.SOCK_DGRAM)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o077)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        # Producers run as other users of the same app; a wake-up carries no data.
        os.chmod(self.path, 0o666)
        sock.setblocking(False)
        self.sock = sock
        sup.register_fd(sock, lambda _f, _mask: self._drain(sup))

    def _drain(self, sup):
        now_due, later = False, None
        try:
            while True:
                msg = self.sock.recv(64)
                if msg.startswith(b"d"):
                    try:
                        due = float(msg[1:])
                    except ValueError:
                        now_due = True  # garbage: just look for work
                        continue
                    later = due if later is None else min(later, due)
                else:
                    now_due = True
        except (BlockingIOError, InterruptedError):
            pass
        if now_due:
            sup.wake()
        if later is not None:
            sup.wake(due=later)

    def on_tick(self, sup):
        """Nothing to do per loop iteration."""

    def close(self):
        """Close and remove the socket file."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
