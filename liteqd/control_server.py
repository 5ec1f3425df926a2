"""The control channel: a Unix stream socket speaking newline-delimited JSON.

One request and one reply per line: {"op": "status"} -> {"ok": true, ...};
anything unknown or malformed -> {"ok": false, "error": "..."}, and the daemon
carries on. It runs inside the supervisor's loop, never blocking it: sockets
are non-blocking, lines are capped, replies a client does not read are
dropped with the client, and a connection that does not send a complete
request within REQUEST_TIMEOUT is closed. The last connection slot is kept for
root and the daemon's own user, so an operator can always get in.
"""

from __future__ import annotations

import grp
import json
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from typing import cast

from liteq.paths import claim_socket_path

from .control_ops import READ_ONLY_OPS, ControlError, ControlHost, ControlOps, Reply, Request
from .loop_host import FdHandler
from .plugins import Plugin

__all__ = ["MAX_CONNECTIONS", "MAX_LINE", "ControlError", "ControlServer", "parse_request"]

MAX_LINE = 64 * 1024            # bytes in one request line, its newline not counted
MAX_CONNECTIONS = 128           # the last one only for root and the daemon's own uid
MAX_PENDING_REPLY = 1 << 20     # a client that stops reading is cut off past this
# Seconds a connection has to send a complete request line, from when it connected or
# its previous request was served: a crowd of silent connections cannot hold the
# slots for long.
REQUEST_TIMEOUT = 2.0
MAX_REQUESTS_PER_READ = 64      # keeps one flooding client from hogging a loop turn

_UCRED = struct.Struct("3i")


class _Conn:
    __slots__ = ("sock", "rbuf", "wbuf", "deadline", "uid", "gid", "pid", "closing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rbuf = b""
        self.wbuf = b""
        self.deadline = time.monotonic() + REQUEST_TIMEOUT  # for its next complete line
        self.closing = False
        try:
            self.pid, self.uid, self.gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        except OSError:
            self.pid, self.uid, self.gid = 0, -1, -1


def _peer_groups(pid: int) -> set[int]:
    """Supplementary group ids of a peer process, from /proc (empty when unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def parse_request(line: bytes) -> tuple[str, Request]:
    """(op, request) of one request line; ControlError (the reply's error) when the line
    is not a JSON object with an "op" string."""
    try:
        parsed: object = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a line of 60,000 "[" would otherwise crash the daemon.
        raise ControlError(f"malformed JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ControlError("a request must be a JSON object like {\"op\": \"ping\"}")
    request = cast(Request, parsed)  # JSON object keys are strings
    op = request.get("op")
    if not isinstance(op, str):
        raise ControlError("missing \"op\" (a string)")
    return op, request


class ControlServer(ControlOps, Plugin):
    """Serves liteqctl, liteq.control and the web panel from inside the supervisor."""

    def __init__(self, path: str, group: str | None = None) -> None:
        self.path = path
        self.group = group
        self.gid: int | None = None
        self.listener: socket.socket | None = None
        self.conns: dict[int, _Conn] = {}
        self._sup: ControlHost | None = None
        self.uid = os.getuid()

    @property
    def sup(self) -> ControlHost:
        """The supervisor served (set by register())."""
        if self._sup is None:
            raise RuntimeError("the control server is not registered with a supervisor")
        return self._sup

    # ---- plugin interface ----------------------------------------------------

    def register(self, sup: ControlHost) -> None:
        """Bind the socket (0600, or 0660 with a group) and watch it from the loop."""
        self._sup = sup
        if len(self.path.encode()) > 107:
            raise OSError(f"control socket path is too long for a Unix socket "
                          f"({len(self.path.encode())} bytes, at most 107): {self.path}; "
                          f"set a shorter --socket / LITEQ_SOCKET")
        squatter = claim_socket_path(self.path, socket.SOCK_STREAM)
        if squatter:
            sup.log.warning("control.socket_replaced", path=self.path, pid=squatter[0],
                            uid=squatter[1], reason="held by another user, not a liteqd")
        if self.group:
            try:
                self.gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise OSError(f"socket group {self.group!r} does not exist") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the file is born 0600: no window where others can connect
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        if self.gid is not None:
            if os.stat(self.path).st_gid != self.gid:  # no chown when it is ours already:
                os.chown(self.path, -1, self.gid)     # the unit's syscall filter denies it
            os.chmod(self.path, 0o660)
        sock.listen(64)
        sock.setblocking(False)
        self.listener = sock
        sup.register_fd(sock, self._on_accept)

    def on_tick(self, sup: ControlHost) -> None:
        """Serve requests left over by the per-read cap; close connections that did not
        send a complete request in time."""
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if self._backlog(conn):
                self._serve_lines(conn)
            elif now >= conn.deadline:
                self._time_out(conn)

    def next_deadline(self) -> float | None:
        """When the first connection runs out of time (keeps the loop's sleep bounded);
        now, when a connection has requests left over by the per-read cap."""
        if not self.conns:
            return None
        if any(self._backlog(c) for c in self.conns.values()):
            return 0.0
        return min(c.deadline for c in self.conns.values())

    @staticmethod
    def _backlog(conn: _Conn) -> bool:
        """Complete request lines not served yet (a client pipelined more than
        MAX_REQUESTS_PER_READ), once the earlier replies are sent. Without this they
        would wait for the client's next write, which never comes if it awaits them."""
        return not conn.closing and not conn.wbuf and b"\n" in conn.rbuf

    def close(self) -> None:
        """Close every connection and remove the socket file."""
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.listener is not None:
            self.sup.unregister_fd(self.listener)
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    # ---- connections -----------------------------------------------------------

    def _on_accept(self, _sock: object, _mask: int) -> None:
        listener = self.listener
        if listener is None:
            return
        for _ in range(64):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and friends: try again next turn
            sock.setblocking(False)
            conn = _Conn(sock)
            if not self._room_for(conn):
                try:
                    sock.send(b'{"ok":false,"error":"too many control connections"}\n')
                except OSError:
                    pass
                sock.close()
                continue
            self.conns[sock.fileno()] = conn
            self.sup.register_fd(sock, self._handler(conn))

    def _handler(self, conn: _Conn) -> FdHandler:
        """The select loop's callback for one connection."""
        return lambda _sock, mask: self._on_ready(conn, mask)

    def _room_for(self, conn: _Conn) -> bool:
        """Whether a new connection may stay: the last free slot is kept for root and
        our own uid (an operator's liteqctl), whoever else crowds the socket."""
        if len(self.conns) < MAX_CONNECTIONS - 1:
            return True
        return len(self.conns) < MAX_CONNECTIONS and conn.uid in (self.uid, 0)

    def _on_ready(self, conn: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and not conn.closing:
            self._on_read(conn)

    def _on_read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_LINE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.rbuf += data
        self._serve_lines(conn)
        # The unfinished line at the end may not outgrow the cap either.
        if not conn.closing and len(conn.rbuf) - conn.rbuf.rfind(b"\n") - 1 > MAX_LINE:
            self._refuse_long_line(conn)

    def _serve_lines(self, conn: _Conn) -> None:
        served = 0
        while b"\n" in conn.rbuf and served < MAX_REQUESTS_PER_READ and not conn.closing:
            line, conn.rbuf = conn.rbuf.split(b"\n", 1)
            if len(line) > MAX_LINE:
                # Checked per line: a long line whose newline came in a later read
                # must not slip through because no single read held too much.
                self._refuse_long_line(conn)
                return
            served += 1
            if line.strip():
                self._reply(conn, self.handle_line(line, conn))
                conn.deadline = time.monotonic() + REQUEST_TIMEOUT

    def _refuse_long_line(self, conn: _Conn) -> None:
        self._reply(conn, {"ok": False, "error": f"request line longer than {MAX_LINE} "
                                                 f"bytes; closing the connection"})
        conn.closing = True
        conn.rbuf = b""
        self._flush(conn)

    def _time_out(self, conn: _Conn) -> None:
        """Close a connection that sent no complete request in time, saying why when
        nothing else is waiting to be sent to it."""
        if not conn.wbuf:
            try:
                conn.sock.send(json.dumps(
                    {"ok": False, "error": f"no complete request line within "
                                           f"{REQUEST_TIMEOUT:g} s; closing the connection"}
                ).encode() + b"\n")
            except OSError:
                pass
        self._close(conn)

    def _reply(self, conn: _Conn, reply: Reply) -> None:
        conn.wbuf += json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"
        if len(conn.wbuf) > MAX_PENDING_REPLY:
            self._close(conn)  # it does not read its replies
            return
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            while conn.wbuf:
                sent = conn.sock.send(conn.wbuf)
                conn.wbuf = conn.wbuf[sent:]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        handler = self._handler(conn)
        if conn.wbuf:
            self.sup.modify_fd(conn.sock, handler,
                               selectors.EVENT_READ | selectors.EVENT_WRITE)
        elif conn.closing:
            self._close(conn)
        else:
            try:
                self.sup.modify_fd(conn.sock, handler, selectors.EVENT_READ)
            except (KeyError, ValueError):
                pass

    def _close(self, conn: _Conn) -> None:
        conn.closing = True  # nothing more is read from or served to it
        self.conns.pop(conn.sock.fileno(), None)
        self.sup.unregister_fd(conn.sock)
        try:
            conn.sock.close()
        except OSError:
            pass

    # ---- requests --------------------------------------------------------------

    def allowed(self, conn: _Conn) -> bool:
        """State-changing ops: our own uid, root, or a member of the configured group."""
        if conn.uid in (self.uid, 0):
            return True
        if self.gid is not None and (conn.gid == self.gid or self.gid in _peer_groups(conn.pid)):
            return True
        return False

    def handle_line(self, line: bytes, conn: _Conn | None = None) -> Reply:
        """Parse one request line and serve it; never raises."""
        try:
            op, request = parse_request(line)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        handler: Callable[[Request], Reply | None] | None = getattr(self, "op_" + op, None)
        if handler is None:
            return {"ok": False, "error": f"unknown op {op!r}; known: "
                                          f"{', '.join(sorted(self.ops()))}"}
        if op not in READ_ONLY_OPS and conn is not None and not self.allowed(conn):
            return {"ok": False, "error": f"permission denied: uid {conn.uid} may not {op}; "
                                          f"only uid {self.uid}, root"
                                          + (f" or group {self.group}" if self.group else "")}
        try:
            reply = handler(request) or {}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in one op must not take the daemon down
            self.sup.log.error("control.error", op=op, error=f"{type(exc).__name__}: {exc}")
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        return {"ok": True, **reply}
