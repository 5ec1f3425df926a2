"""Where a daemon's sockets live, derived from the identity of its queue.

One rule, used by liteqd, liteqctl, the web panel and every `.delay()`, so that a
process that knows only the database finds its daemon (see socket_path). Default
sockets go only where other users cannot create files, so nobody can take a
daemon's socket name before it starts.
"""

import hashlib
import os
import pwd
import socket
import stat
import struct

from .errors import ConfigError

# sun_path holds 108 bytes on Linux, including the terminating NUL.
SUN_PATH_MAX = 107
# The system runtime directory the shipped systemd units create (RuntimeDirectory=liteq).
RUNTIME_DIR = "/run/liteq"
_UCRED = struct.Struct("3i")


def socket_path(identity: str) -> str:
    """The control socket path of the queue `identity` (liteq.backends.identity_of
    gives a queue's). The first that applies:

    1. LITEQ_SOCKET.
    2. /run/liteq/liteqd-HASH.sock, when /run/liteq exists and this process may enter it.
    3. For a database file in a directory other users cannot write:
       `.NAME.liteqd.sock` next to it (when that is short enough for a socket).
    4. liteqd-HASH.sock in this user's private runtime directory (private_dir()).

    HASH is the first 16 hex digits of the SHA-1 of the identity.
    """
    explicit = os.environ.get("LITEQ_SOCKET")
    if explicit:
        return explicit
    name = f"liteqd-{hashlib.sha1(identity.encode()).hexdigest()[:16]}.sock"
    if os.path.isdir(RUNTIME_DIR) and os.access(RUNTIME_DIR, os.X_OK):
        return os.path.join(RUNTIME_DIR, name)
    if identity.startswith("/"):
        directory = os.path.dirname(identity)
        near = os.path.join(directory, f".{os.path.basename(identity)}.liteqd.sock")
        if len(near.encode()) <= SUN_PATH_MAX - 5 and not _writable_by_others(directory):
            return near  # room above for the ".wake" sibling
    return os.path.join(private_dir(), name)


def runtime_dir_refused() -> bool:
    """Whether /run/liteq exists but this user may not enter it (not in its group), so
    socket_path() looked elsewhere and a daemon there cannot be reached."""
    return os.path.isdir(RUNTIME_DIR) and not os.access(RUNTIME_DIR, os.X_OK)


def private_dir() -> str:
    """This user's own directory for sockets: $XDG_RUNTIME_DIR; else /run/user/UID
    when it is ours; else /run for root; else /tmp/liteq-UID (made 0700 by the
    daemon, and used only while it is ours and private)."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.environ["XDG_RUNTIME_DIR"]
    uid = os.getuid()
    user_run = f"/run/user/{uid}"
    try:
        if os.stat(user_run).st_uid == uid:
            return user_run
    except OSError:
        pass
    return "/run" if uid == 0 else f"/tmp/liteq-{uid}"


def _writable_by_others(directory: str) -> bool:
    """Whether any user may create files in `directory` (world-writable, like /tmp)."""
    try:
        return bool(os.stat(directory).st_mode & stat.S_IWOTH)
    except OSError:
        return False


def wake_path(control_socket: str) -> str:
    """The datagram socket that receives enqueue wake-ups, beside the control socket."""
    root = control_socket[:-5] if control_socket.endswith(".sock") else control_socket
    return root + ".wake"


def _prepare_private_dir(directory: str) -> None:
    """Create our /tmp/liteq-UID fallback (0700), and refuse it when someone else made
    it first or it is open to others: a socket there could be replaced or read."""
    uid = os.getuid()
    if directory != f"/tmp/liteq-{uid}":
        return
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise ConfigError(
            f"socket directory {directory} is not a private directory of uid {uid} (owner "
            f"uid {st.st_uid}, mode {stat.filemode(st.st_mode)}); another user may have "
            f"created it. Set XDG_RUNTIME_DIR or LITEQ_SOCKET to a directory of your own")


def listener_of(path: str, kind: int) -> tuple[int | None, int] | None:
    """(pid, uid) of the process listening on the Unix socket `path`; None when
    nothing listens there (no file, a dead daemon's socket, or not a socket).

    A stream listener is known by SO_PEERCRED; a datagram socket tells nothing of
    its peer, so its file's owner (who bound it) stands in, with pid None.
    Raises OSError for any other failure to connect (permission denied, ...).
    """
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
        if kind != socket.SOCK_STREAM:
            return None, os.lstat(path).st_uid
        pid: int
        uid: int
        pid, uid, _gid = _UCRED.unpack(
            probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        return pid, uid
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    finally:
        probe.close()


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def claim_socket_path(path: str, kind: int) -> tuple[int | None, int] | None:
    """Make `path` free to bind: remove a dead daemon's socket, refuse a live daemon's.

    A listener is taken for another liteqd only when it runs as root or as our own
    user (SO_PEERCRED). One owned by another user is a squatter: its file is removed
    when the directory lets us (the squatter's (pid, uid) is returned, for the
    caller to log), otherwise the error says who holds the path. Returns None when
    nobody else held it.
    """
    directory = os.path.dirname(path) or "."
    _prepare_private_dir(directory)
    if not os.path.isdir(directory):
        raise ConfigError(f"socket directory {directory} does not exist")
    if not os.path.lexists(path):
        return None
    try:
        holder = listener_of(path, kind)
    except OSError as exc:
        raise ConfigError(f"cannot use socket {path}: {exc}") from None
    if holder is not None and holder[1] in (0, os.getuid()):
        pid = f" (pid {holder[0]})" if holder[0] else ""
        raise ConfigError(f"another liteqd is already listening on {path}{pid}; stop it "
                          f"first, or give this one its own --socket / LITEQ_SOCKET")
    try:
        os.unlink(path)  # left behind by a daemon that died, or a squatter's
        return holder
    except OSError as exc:
        who = (f"a process of {_user_name(holder[1])} (pid {holder[0] or '?'}), not a "
               f"liteqd of this user" if holder else "a file this user cannot remove")
        raise ConfigError(f"socket path {path} is held by {who} ({exc.strerror}); remove it "
                          f"or set --socket / LITEQ_SOCKET to a directory other users "
                          f"cannot write") from None
