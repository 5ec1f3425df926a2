"""The LiteQ monitor panel (`liteq monitor`), installed by the `web` extra.

    liteq monitor --port 5151                  # http://127.0.0.1:5151/
    liteq monitor --host 0.0.0.0 --token "$(openssl rand -hex 16)"

Or mount it in your own ASGI server:

    from liteq.web import create_app
    app = create_app(db="/var/lib/app/liteq.db", token="...")

See liteq.web.app for the pages and liteq.web.security for the access rules.
"""

__all__ = ["create_app"]


def __getattr__(name):
    # Lazy, so that `liteq monitor` can explain a missing extra instead of failing
    # on import.
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
