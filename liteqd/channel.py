"""One child's channel: its socket, what waits to be sent on it, and the tasks it holds.

The in-flight list changes only here: tasks are added when they are sent, and
taken when the child answers for them (a result, a hand-back) or is gone.
The supervisor never waits on a child: what the socket does not take at once (a
big argument, a child busy with a long task behind its prefetch) stays in the
outbox and is written as the socket drains, from where it stopped.
"""

import collections
import selectors
import socket
from collections.abc import Callable, Iterable

from . import protocol
from .pool import TaskRun

# Called with True to watch the socket for writes too, False for reads only; returns
# False when the socket is no longer watched.
Watch = Callable[[bool], bool]


class ChildChannel:
    """The supervisor's end of one child's socket pair, and the tasks sent on it."""

    def __init__(self, sock: socket.socket, watch: Watch) -> None:
        self.sock = sock
        self.reader = protocol.LineReader()
        self.outbox: collections.deque[memoryview] = collections.deque()
        self.inflight: collections.deque[TaskRun] = collections.deque()
        self.watching_writes = False
        self.eof = False
        self.watch = watch   # changes what the loop watches the socket for

    # ---- the tasks it holds ------------------------------------------------------

    def hand(self, runs: Iterable[TaskRun], messages: list[protocol.Message]) -> bool:
        """Add tasks to those the child holds and send their messages; False when the
        child is gone (its exit hands them back)."""
        self.inflight.extend(runs)
        return self.send(messages)

    def take(self, task_id: int) -> TaskRun | None:
        """Take the task out of those the child holds; None when it holds no such task."""
        for run in self.inflight:
            if run.id == task_id:
                self.inflight.remove(run)
                return run
        return None

    def take_head(self, task_id: int) -> TaskRun | None:
        """Take the first task (the one a one-task child ran); None when the child holds
        nothing, or its first task is not `task_id` (then it is dropped all the same)."""
        run = self.inflight.popleft() if self.inflight else None
        return run if run is not None and run.id == task_id else None

    def take_all(self) -> list[TaskRun]:
        """Take every task the child holds."""
        runs = list(self.inflight)
        self.inflight.clear()
        return runs

    # ---- socket I/O --------------------------------------------------------------

    def send(self, messages: Iterable[protocol.Message]) -> bool:
        """Queue messages and write what the socket takes now; False when the child is gone."""
        self.outbox.append(memoryview(protocol.encode(messages)))
        return self.flush()

    def flush(self) -> bool:
        """Write as much of the outbox as the socket takes; False when the child is gone."""
        outbox = self.outbox
        while outbox:
            try:
                sent = self.sock.send(outbox[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                outbox.clear()
                self._watch_writes(False)
                return False
            if sent == len(outbox[0]):
                outbox.popleft()
            else:
                outbox[0] = outbox[0][sent:]
        self._watch_writes(bool(outbox))
        return True

    def _watch_writes(self, on: bool) -> None:
        if self.watching_writes == on or self.sock.fileno() < 0:
            return
        if self.watch(on):
            self.watching_writes = on

    def receive(self) -> list[protocol.Message] | None:
        """The messages the socket holds now; None once nothing more is there (`eof`
        tells whether it ever will be). Raises ValueError when the child sent
        something that is not a message."""
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return None
        return self.reader.feed(data)

    def close_writes(self) -> None:
        """Shut our sending side: an idle child sees end of file and exits."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def selector_watch(selector: selectors.BaseSelector, sock: socket.socket,
                   data: object) -> Watch:
    """A Watch that changes what `selector` watches `sock` for."""
    def watch(on: bool) -> bool:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            selector.modify(sock, events, data)
        except (KeyError, ValueError):
            return False  # no longer watched (its end of the socket was closed)
        return True
    return watch
