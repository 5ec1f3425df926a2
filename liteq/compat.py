"""The library's only door to the daemon (liteqd), opened lazily.

liteq is what an app imports to define and enqueue tasks; liteqd runs them. The
library never imports the daemon, except here and only when asked: liteq 0.2 code
runs tasks in-process with `from liteq.worker import Worker`, and the `liteq`
command's daemon subcommands (worker, scheduler's logs, monitor's logs, completion)
and the framework commands (manage.py liteqd, flask liteq worker) run daemon code.
An app that only enqueues never reaches these functions, so it never loads
psutil, setproctitle or structlog.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def _daemon(module: ModuleType) -> Any:
    # liteqd is not wholly annotated yet: its functions are used as Any here.
    return module


def daemon_cli() -> Any:
    """liteqd.cli: the daemon's command (main, catch_stop_signals, ...)."""
    return _daemon(importlib.import_module("liteqd.cli"))


def daemon_config() -> Any:
    """liteqd.config: the daemon's flags and settings (build_parser, from_args, ...)."""
    return _daemon(importlib.import_module("liteqd.config"))


def route_uvicorn_logs() -> None:
    """Send a web server's own log lines through the daemon's structured events."""
    _daemon(importlib.import_module("liteqd.stdlib_logs")).route_uvicorn_logs()


def run_daemon(argv: list[str], prog: str) -> int:
    """Run liteqd in this process with `argv` (its own flags); returns its exit code."""
    return int(daemon_cli().main(argv, prog=prog))


def completion_main(argv: list[str], prog: str) -> int:
    """`liteq completion bash|zsh`: print the completion script of the three commands."""
    return int(_daemon(importlib.import_module("liteqd.completion")).main(argv, prog=prog))


def scheduler_main(argv: list[str] | None = None) -> int:
    """`liteq scheduler --app tasks.py`: fire the app's cron schedules, with the
    daemon's structured logs; returns the exit code."""
    return int(_daemon(importlib.import_module("liteqd.scheduler_cmd")).main(argv))


def worker_class() -> Any:
    """liteq 0.2's in-process Worker, which now lives in liteqd.worker."""
    return _daemon(importlib.import_module("liteqd.worker")).Worker


def __getattr__(name: str) -> Any:
    # `from liteq.compat import Worker` loads the daemon only when asked for.
    if name == "Worker":
        return worker_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
