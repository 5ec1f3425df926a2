"""The LiteQ monitor panel (`liteq monitor`), installed by the `web` extra.

    liteq monitor --port 5151                  # http://127.0.0.1:5151/
    liteq monitor --host 0.0.0.0 --token "$(openssl rand -hex 16)"

From Python, `run_monitor(host="127.0.0.1", port=5151)` (liteq 0.2's name) serves it
the same way. Or mount it in your own ASGI server:

    from liteq.web import create_app
    app = create_app(db="/var/lib/app/liteq.db", token="...")

See liteq.web.app for the pages and liteq.web.security for the access rules.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app as create_app

__all__ = ["create_app", "run_monitor"]


def run_monitor(host: str = "127.0.0.1", port: int = 5151) -> int:
    """Serve the panel until stopped, as `liteq monitor --host HOST --port PORT` does
    (liteq 0.2's entry point); returns the exit code."""
    from .cli import main
    return main(["--host", str(host), "--port", str(port)])


def __getattr__(name: str) -> Any:
    # Lazy, so that `liteq monitor` can explain a missing extra instead of failing
    # on import.
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
