"""Where a daemon's sockets live, derived from the database path."""

import hashlib
import os

from . import settings

# sun_path holds 108 bytes on Linux, including the terminating NUL.
SUN_PATH_MAX = 107


def socket_path(db_path=None) -> str:
    """The control socket path: LITEQ_SOCKET, else one derived from the database path.

    The derived path sits next to the database (`.NAME.liteqd.sock`), so any
    process that knows LITEQ_DB finds its daemon. When that path is too long for
    a Unix socket, a short one under XDG_RUNTIME_DIR (or /tmp) keyed by a hash of
    the database path is used instead.
    """
    explicit = os.environ.get("LITEQ_SOCKET")
    if explicit:
        return explicit
    db = os.path.abspath(db_path or settings.db_path())
    near = os.path.join(os.path.dirname(db), f".{os.path.basename(db)}.liteqd.sock")
    if len(near.encode()) <= SUN_PATH_MAX - 5:  # room for the ".wake" sibling
        return near
    digest = hashlib.sha1(db.encode()).hexdigest()[:16]
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return os.path.join(base, f"liteqd-{digest}.sock")


def wake_path(control_socket: str) -> str:
    """The datagram socket that receives enqueue wake-ups, beside the control socket."""
    root = control_socket[:-5] if control_socket.endswith(".sock") else control_socket
    return root + ".wake"
