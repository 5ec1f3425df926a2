"""Wake-ups as datagrams: from producers to the daemon, over a socket beside its
control socket (the SQLite backend's wake-up channel).

After an enqueue commits, the producer sends a small datagram to the daemon's
wake socket so a waiting task starts at once instead of at the next poll:
b"w" for a task due now, or b"d<epoch seconds>" for one due later, so the
daemon can sleep until then without asking the database. It never blocks and
never fails the enqueue.

The socket is connected once and reused, so a send costs a few microseconds.
When no daemon listens, connecting is retried at most every RETRY_S seconds,
so an app without a daemon pays almost nothing; a daemon that starts claims
everything due at start-up anyway.
"""

import atexit
import os
import socket
import time

from ...paths import claim_socket_path, socket_path, wake_path
from ..base import WakeChannel

RETRY_S = 0.5
THROTTLE_S = 0.001
MAX_HINTS = 1024   # distinct cancel hints kept from one drain


class _Waker:
    __slots__ = ("sock", "next_try", "target", "last_now", "announced")

    def __init__(self, target: str) -> None:
        self.sock: socket.socket | None = None
        self.next_try = 0.0
        self.target = target
        self.last_now = -1.0     # monotonic time of the last "due now" wake-up sent
        self.announced = 0.0     # the earliest future due time already sent

    def nudge(self, due: float | None) -> None:
        """Send what the daemon does not know yet; skip what it cannot miss.

        A "due now" wake-up within THROTTLE_S of the previous one is skipped: the
        daemon claims again THROTTLE_S * 2 after each wake-up it gets, which picks
        up the skipped tasks. A later due time is sent only when it is earlier than
        one already announced; the daemon looks up the next due time from the
        database each time a known one passes.
        """
        wall = time.time()
        if due is None or due <= wall:
            t = time.monotonic()
            if t - self.last_now < THROTTLE_S:
                return
            self.last_now = t
            self.send(b"w")
        elif self.announced <= wall or due < self.announced:
            self.announced = due
            self.send(b"d%.6f" % due)

    def send(self, message: bytes, again: bool = True) -> None:
        """Send one datagram, connecting first if needed; never raises."""
        if self.sock is None:
            t = time.monotonic()
            if t < self.next_try:
                return
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(self.target)
            except OSError:
                sock.close()
                self.next_try = t + RETRY_S
                return
            self.sock = sock
        try:
            self.sock.send(message)
        except BlockingIOError:
            pass  # its queue is full: wake-ups are pending already
        except OSError:
            # The daemon went away or restarted (a new socket file): reconnect and send
            # once more now, or a restarted daemon would miss this wake-up until its poll.
            self.sock.close()
            self.sock = None
            if again:
                self.send(message, again=False)


_pid: int | None = None
_wakers: dict[tuple[str | None, str | None], _Waker] = {}


@atexit.register
def _close_all() -> None:
    # Close the cached sockets before interpreter shutdown collects them.
    for waker in _wakers.values():
        if waker.sock is not None:
            waker.sock.close()
            waker.sock = None


def wake(identity: str | None, due: float | None = None) -> None:
    """Nudge the daemon serving the queue `identity` about a task due at `due`
    (epoch seconds; None = now). Silently does nothing when no daemon listens (or no
    queue is named: a SQLite backend always has its file's path)."""
    global _pid, _wakers
    if identity is None:
        return
    pid = os.getpid()
    if pid != _pid:  # a forked child must not share its parent's sockets
        _pid, _wakers = pid, {}
    key = (identity, os.environ.get("LITEQ_SOCKET"))
    waker = _wakers.get(key)
    if waker is None:
        waker = _wakers[key] = _Waker(wake_path(socket_path(identity)))
    waker.nudge(due)


def send_cancel(identity: str | None, task_id: int) -> None:
    """Tell the daemon serving `identity` that running task `task_id` was cancelled
    (b"c<id>"); skipped when no daemon listens (its poll finds it)."""
    wake(identity)  # make sure a waker (and its socket) exists for this queue
    waker = _wakers.get((identity, os.environ.get("LITEQ_SOCKET")))
    if waker is not None:
        waker.send(b"c%d" % int(task_id))


def share_like(path: str, like: str | None) -> None:
    """Give the socket file `path` the write access the file `like` grants: rw for
    its owner, and for its group or others only when they may write `like`, with
    `like`'s group. Owner-only when `like` is None or cannot be read."""
    mode = 0o600
    gid = None
    if like is not None:
        try:
            st = os.stat(like)
        except OSError:
            st = None
        if st is not None:
            mode |= (0o060 if st.st_mode & 0o020 else 0) | (0o006 if st.st_mode & 0o002 else 0)
            gid = st.st_gid
    if gid is not None and mode & 0o060 and os.stat(path).st_gid != gid:
        try:
            os.chown(path, -1, gid)  # only when needed: the unit's syscall filter denies it
        except PermissionError:
            mode &= ~0o060           # not our group: the group's producers rely on the poll
    os.chmod(path, mode)


class DatagramChannel(WakeChannel):
    """The daemon's end: a datagram socket bound beside the control socket.

    Who may send to it is who may write the database `like` (its owner, and its
    group or others when they may write it): a wake-up or a cancel hint from anyone
    else is refused by the kernel. A cancel hint is only acted on once the database
    says the task is cancelled (liteqd.wake_listener).
    """

    def __init__(self, control_socket: str, like: str | None = None) -> None:
        self.path = wake_path(control_socket)
        claim_socket_path(self.path, socket.SOCK_DGRAM)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)  # born 0600: nobody else in before its mode is set
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        try:
            share_like(self.path, like)
        except OSError:
            sock.close()
            os.unlink(self.path)
            raise
        sock.setblocking(False)
        self.sock: socket.socket | None = sock
        self.last_count = 0   # datagrams the last drain read (a backlog means a flood)

    def fileno(self) -> int:
        """The socket's descriptor."""
        assert self.sock is not None, "the channel is closed"
        return self.sock.fileno()

    def drain(self) -> tuple[bool, float | None]:
        """Read every datagram: (due_now, earliest later due time or None).

        A flood of cancel hints for one task counts once (cancelled() holds each id
        once); at most MAX_HINTS distinct ids are kept per drain, the rest are left to
        the daemon's poll of the database.
        """
        now_due, later = False, None
        hints: set[int] = set()
        self.last_count = 0
        assert self.sock is not None, "the channel is closed"
        try:
            while True:
                msg = self.sock.recv(64)
                self.last_count += 1
                if msg.startswith(b"c"):
                    try:
                        task_id = int(msg[1:])
                    except ValueError:
                        continue
                    if task_id not in hints and len(hints) < MAX_HINTS:
                        hints.add(task_id)
                        self._note_cancel(task_id)
                    continue
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
        return now_due, later

    def close(self) -> None:
        """Close and remove the socket file."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
