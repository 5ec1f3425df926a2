"""`Worker`: run the LiteQ daemon's supervisor in the foreground from Python.

    from liteq.worker import Worker
    Worker(queues=["default", "emails"], concurrency=4).run()

The tasks are the ones already registered in this process (import your task
module first). This is the same supervisor `liteqd` runs: forked children,
time limits, crash recovery; it returns when stopped (SIGTERM or Ctrl-C).
"""

import os

from .app_loader import refuse_loop_at_import


class Worker:
    """A foreground supervisor over this process's registered tasks."""

    def __init__(self, queues=("default",), concurrency=None, timeout=None, db=None,
                 app=None, **options):
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",") if q.strip()]
        self.queues = list(queues)
        self.concurrency = concurrency
        self.timeout = timeout
        self.db = db
        self.app = app
        self.options = options

    def _argv(self):
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
        code = cli.build_supervisor(cfg, load=self.app is not None).run()
        if code:
            raise SystemExit(code)
        return 0
