"""Where a daemon's sockets live, derived from the identity of its queue."""

import hashlib
import os
import socket

from .errors import ConfigError

# sun_path holds 108 bytes on Linux, including the terminating NUL.
SUN_PATH_MAX = 107


def socket_path(identity=None) -> str:
    """The control socket path: LITEQ_SOCKET, else one derived from the queue's identity
    (default: the queue LITEQ_DB names; see liteq.backends.identity_of).

    For a database file the path sits next to it (`.NAME.liteqd.sock`), so any
    process that knows LITEQ_DB finds its daemon. Otherwise, or when that path is
    too long for a Unix socket, a short one under XDG_RUNTIME_DIR (or /tmp) keyed
    by a hash of the identity is used instead.
    """
    explicit = os.environ.get("LITEQ_SOCKET")
    if explicit:
        return explicit
    if identity is None:
        from .backends import identity_of
        identity = identity_of()
    if identity.startswith("/"):
        near = os.path.join(os.path.dirname(identity),
                            f".{os.path.basename(identity)}.liteqd.sock")
        if len(near.encode()) <= SUN_PATH_MAX - 5:  # room for the ".wake" sibling
            return near
    digest = hashlib.sha1(identity.encode()).hexdigest()[:16]
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return os.path.join(base, f"liteqd-{digest}.sock")


def wake_path(control_socket: str) -> str:
    """The datagram socket that receives enqueue wake-ups, beside the control socket."""
    root = control_socket[:-5] if control_socket.endswith(".sock") else control_socket
    return root + ".wake"


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
