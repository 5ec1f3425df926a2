"""A TCP proxy in front of a PostgreSQL server that can lose the answer to a statement
(a COMMIT, an INSERT): the network failing after the server did the work but before
the client heard so. The client sees its connection break and cannot tell whether
the statement took effect.

Real sockets and the real wire protocol: the server's messages are read one at a
time (a type byte and a length), and everything else is passed on unchanged. Its
URL turns off SSL and GSS encryption, so every server message is a typed one.
"""

import contextlib
import socket
import struct
import threading

from .pg_helpers import with_query


class AnswerLoser:
    """Forwards connections on 127.0.0.1:`port` to the server on `target_port`.

    arm(tag): the next CommandComplete whose tag starts with `tag` ("COMMIT",
    "INSERT") is not passed on, and that connection is cut at once; `lost` is set
    then. close() ends everything.
    """

    def __init__(self, target_port):
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.armed = threading.Event()
        self.tag = b"COMMIT"
        self.lost = threading.Event()
        self.closing = False
        self.sockets = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def url(self, database="test", user="root", **params) -> str:
        """A libpq URL through the proxy (no SSL, no GSS encryption), with `params`."""
        return with_query(f"postgresql://{user}@127.0.0.1:{self.port}/{database}",
                          sslmode="disable", gssencmode="disable", **params)

    def arm(self, tag="COMMIT"):
        """Lose the answer of the next statement whose command tag starts with `tag`."""
        self.tag = tag.encode()
        self.lost.clear()
        self.armed.set()

    def _accept(self):
        while not self.closing:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
            for target, args in ((self._pass_on, (client, server)),
                                 (self._answers, (server, client))):
                thread = threading.Thread(target=target, args=args, daemon=True)
                thread.start()
                self.threads.append(thread)

    @staticmethod
    def _cut(*socks):
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _pass_on(self, src, dst):
        """Client to server: bytes as they come."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        self._cut(src, dst)

    def _answers(self, server, client):
        """Server to client: message by message, watching for the armed tag."""
        buf = b""
        try:
            while data := server.recv(65536):
                buf += data
                out = b""
                while len(buf) >= 5:
                    kind = buf[:1]
                    (length,) = struct.unpack("!I", buf[1:5])
                    if len(buf) < 1 + length:
                        break
                    message, buf = buf[:1 + length], buf[1 + length:]
                    if kind == b"C" and self.armed.is_set() \
                            and message[5:].startswith(self.tag):
                        self.armed.clear()
                        client.sendall(out)   # what came before the lost answer
                        self._cut(server, client)
                        self.lost.set()
                        return
                    out += message
                if out:
                    client.sendall(out)
        except OSError:
            pass
        self._cut(server, client)

    def close(self):
        """Stop accepting and cut every connection."""
        self.closing = True
        self._cut(self.sock)
        with self.lock:
            socks = list(self.sockets)
        self._cut(*socks)
        for thread in self.threads:
            thread.join(timeout=5)
