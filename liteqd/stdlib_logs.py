"""Standard-library logging (uvicorn's, under `liteq monitor`) as LiteQ's structured
events: one JSON object per line, through the structlog set-up of liteqd.logs.

    monitor.request  method, path (its query string left out: a login URL carries
                     the panel's token), status, client
    monitor.log      logger, message (uvicorn's start, stop and errors)
"""

from __future__ import annotations

import logging
import os
from typing import Any

from . import logs

_LEVELS = {"CRITICAL": "critical", "ERROR": "error", "WARNING": "warning", "INFO": "info",
           "DEBUG": "debug"}


class StructlogHandler(logging.Handler):
    """A logging.Handler that logs each record as a structlog event and writes it out."""

    def emit(self, record: logging.LogRecord) -> None:
        """Log `record` as monitor.request (an access line) or monitor.log."""
        try:
            method = getattr(logs.get_logger(), _LEVELS.get(record.levelname, "info"))
            args = record.args
            if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
                client, verb, path, _version, status = args
                method("monitor.request", method=verb, path=str(path).split("?", 1)[0],
                       status=status, client=client)
            else:
                fields: dict[str, Any] = {"logger": record.name,
                                          "message": record.getMessage()}
                if record.exc_info:
                    fields["exc_info"] = record.exc_info
                method("monitor.log", **fields)
            logs.flush()
        except Exception:  # logging must never take the server down
            self.handleError(record)


def route_uvicorn_logs(log_format: str | None = None) -> bool:
    """Make uvicorn's default logging config (used by `liteq monitor`) send every record
    through StructlogHandler to stdout; log_format json, console or auto (default:
    LITEQ_LOG_FORMAT, else auto). False when uvicorn is not installed (the monitor then
    says which extra is missing)."""
    try:
        from uvicorn import config as uvicorn_config
    except ImportError:
        return False
    fmt = (log_format or os.environ.get("LITEQ_LOG_FORMAT") or "auto").lower()
    if fmt not in ("auto", "json", "console"):
        fmt = "auto"
    # uvicorn's levels (the monitor's --log-level) decide what is logged.
    logs.configure(fmt, "debug")
    cfg = uvicorn_config.LOGGING_CONFIG
    # The dict uvicorn.run() takes by default, changed in place (run() holds it).
    cfg["handlers"] = {name: {"()": f"{__name__}.StructlogHandler"}
                       for name in ("default", "access")}
    cfg["formatters"] = {}
    return True
