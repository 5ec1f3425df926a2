"""`Worker`: run the LiteQ daemon's supervisor in the foreground from Python.

    from liteq.worker import Worker
    Worker(queues=["default", "emails"], concurrency=4).run()

The tasks are the ones already registered in this process (import your task
module first). This is the same supervisor `liteqd` runs: forked children,
time limits, crash recovery; it returns when stopped (SIGTERM or Ctrl-C, or
`worker.shutdown = True` from another thread, as in liteq 0.2).
"""

import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from liteq.app_loader import refuse_loop_at_import

from .plugins import Plugin


if TYPE_CHECKING:
    from .supervisor import Supervisor


class _StopRequest(Plugin):
    """A supervisor plugin: a byte on its socket pair asks for a graceful stop.

    Lets another thread stop the loop (`worker.shutdown = True`) without a signal:
    the write wakes the supervisor's select() at once.
    """

    def __init__(self) -> None:
        self.receiver, self.sender = socket.socketpair()
        self.receiver.setblocking(False)
        self.sender.setblocking(False)

    def register(self, sup: "Supervisor") -> None:
        """Watch the socket from the supervisor's loop."""
        sup.register_fd(self.receiver, lambda _f, _mask: self._stop(sup))

    def _stop(self, sup: "Supervisor") -> None:
        try:
            while self.receiver.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        sup.request_stop(reason="Worker.shutdown")

    def request(self) -> None:
        """Ask for the stop; safe from any thread, at any time."""
        try:
            self.sender.send(b"x")
        except OSError:
            pass  # closed (the loop has ended) or full (a request is pending)

    def on_tick(self, sup: "Supervisor") -> None:
        """Nothing to do per loop iteration."""

    def close(self) -> None:
        """Close both ends."""
        self.receiver.close()
        self.sender.close()


class Worker:
    """A foreground supervisor over this process's registered tasks.

    Worker(queues, concurrency, task_timeout) is liteq 0.2's signature;
    task_timeout is liteq 0.2's name for timeout (the time limit, in seconds, of
    tasks that set none).
    """

    def __init__(self, queues: str | Iterable[str] = ("default",), concurrency: int | None = None,
                 timeout: float | None = None, db: str | None = None, app: str | None = None,
                 *, task_timeout: float | None = None, **options: Any) -> None:
        if task_timeout is not None:
            if timeout is not None and timeout != task_timeout:
                raise TypeError(f"give timeout or task_timeout (the same setting), not both: "
                                f"{timeout!r} and {task_timeout!r}")
            timeout = task_timeout
        if isinstance(queues, str):
            queues = queues.split(",")
        self.queues = [q.strip() for q in queues if q.strip()]
        self.concurrency = concurrency
        self.timeout = timeout
        self.db = db
        self.app = app
        self.options = options
        self.worker_id: str | None = None  # the daemon's id in the workers table, while run() runs
        self._shutdown = False
        self._stop_request: _StopRequest | None = None

    @property
    def task_timeout(self) -> float | None:
        """liteq 0.2's name for `timeout`."""
        return self.timeout

    @property
    def shutdown(self) -> bool:
        """True once a stop was asked for. Setting it to True (from any thread) stops
        a running run() gracefully, as liteq 0.2's flag did; set before run(), run()
        returns at once."""
        return self._shutdown

    @shutdown.setter
    def shutdown(self, value: bool) -> None:
        self._shutdown = bool(value)
        stop = self._stop_request
        if self._shutdown and stop is not None:
            stop.request()

    def _argv(self) -> list[str]:
        argv = ["--app", self.app or "(this process)", "--queues", ",".join(self.queues)]
        if self.concurrency is not None:
            argv += ["--concurrency", str(self.concurrency)]
        if self.timeout is not None:
            argv += ["--timeout", str(self.timeout)]
        if self.db is not None:
            argv += ["--db", self.db]
        for key, value in self.options.items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        return argv

    def run(self) -> int:
        """Run until stopped; returns 0 after a graceful stop.

        Failures raise, so a script that ends with .run() fails visibly: a bad
        setting or an app with no tasks raises ConfigError, a database that cannot
        be used DatabaseError, and a daemon that stops on an error (children that
        keep failing to start) SystemExit with its non-zero exit code. Reached
        while liteqd or `liteq` imports the app, it raises AppStartsLoop (a
        ConfigError): there it would block the import forever.
        """
        refuse_loop_at_import("Worker.run()")
        # The daemon's modules (psutil, structlog, ...) load only when a worker runs.
        from liteqd import cli, config

        args = config.build_parser(prog="Worker").parse_args(self._argv())
        cfg = config.resolve(args, environ={k: v for k, v in os.environ.items()
                                            if k not in ("LITEQ_APP",)})
        if self._shutdown:
            return 0
        sup = cli.build_supervisor(cfg, load=self.app is not None)
        stop = _StopRequest()
        sup.plugins.append(stop)
        self.worker_id = sup.worker_id
        self._stop_request = stop
        try:
            if self._shutdown:  # asked for between the check above and now
                stop.request()
            code = sup.run()
        finally:
            self._stop_request = None
            self.worker_id = None
        if code:
            raise SystemExit(code)
        return 0
