"""liteq 0.2's `from liteq.worker import Worker`: the in-process worker.

It runs the daemon's supervisor in this process, so it lives with the daemon
(liteqd.worker); this module reaches it through liteq.compat, the library's one
lazy door to the daemon, so importing liteq never loads the daemon.
"""
from __future__ import annotations

from typing import Any

from . import compat


def __getattr__(name: str) -> Any:
    # The class is loaded on first use: `from liteq.worker import Worker` asks for it.
    if name == "Worker":
        return compat.worker_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

