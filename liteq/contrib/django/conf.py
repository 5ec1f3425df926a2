"""Which queue database a Django project's LiteQ uses.

In order: settings.LITEQ_DB; the LITEQ_DB environment variable; else Django's own
database (settings.LITEQ_DATABASE, default "default"): the same PostgreSQL database
(LiteQ's tables beside the project's, and liteq.using(connection) enqueues in the
request's transaction), or, for SQLite, a file of its own, liteq.db beside Django's
(so the daemon never waits on the project's write lock). Other engines need LITEQ_DB.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urlencode

from ...errors import ConfigError

# OPTIONS of Django's PostgreSQL backend that are Django's own, not libpq parameters.
_DJANGO_OPTIONS = {"isolation_level", "server_side_binding", "pool", "assume_role",
                   "cursor_factory", "context", "prepare_threshold"}


def _settings() -> Any:
    from django.conf import settings
    return settings


def database_alias() -> str:
    """The Django database alias LiteQ follows (settings.LITEQ_DATABASE, "default")."""
    return str(getattr(_settings(), "LITEQ_DATABASE", "default"))


def postgres_url(params: dict[str, Any]) -> str:
    """A libpq URL for a Django PostgreSQL DATABASES entry (the password included,
    which LiteQ never shows)."""
    user = quote(str(params.get("USER") or ""), safe="")
    password = str(params.get("PASSWORD") or "")
    auth = user + (":" + quote(password, safe="") if password else "")
    host = str(params.get("HOST") or "")
    query: dict[str, str] = {}
    if host.startswith("/"):          # a Unix socket directory
        query["host"] = host
        host = ""
    port = str(params.get("PORT") or "")
    netloc = (auth + "@" if auth else "") + host + (":" + port if port and host else "")
    if port and not host:
        query["port"] = port
    for key, value in (params.get("OPTIONS") or {}).items():
        if key not in _DJANGO_OPTIONS and isinstance(value, (str, int, float)):
            query[key] = str(value)
    name = quote(str(params.get("NAME") or ""), safe="")
    return f"postgresql://{netloc}/{name}" + ("?" + urlencode(query) if query else "")


def django_database(alias: str) -> str | None:
    """Django's database `alias` as LiteQ would name it: a PostgreSQL URL, an SQLite
    file's absolute path; None for an in-memory SQLite database or another engine."""
    from django.db import connections
    try:
        params = connections.settings[alias]
    except KeyError:
        raise ConfigError(f"settings.DATABASES has no {alias!r} database "
                          f"(settings.LITEQ_DATABASE)") from None
    engine = str(params.get("ENGINE", ""))
    if engine.endswith(("postgresql", "postgresql_psycopg2", "postgis")):
        return postgres_url(params)
    if engine.endswith("sqlite3"):
        name = str(params.get("NAME") or "")
        if not name or name == ":memory:" or "mode=memory" in name:
            return None
        return os.path.abspath(name)
    return None


def database_target(alias: str | None = None) -> str:
    """The LiteQ target that Django's database `alias` gives: its own PostgreSQL URL,
    or for SQLite the file liteq.db beside Django's. ConfigError otherwise."""
    from django.db import connections
    alias = alias or database_alias()
    theirs = django_database(alias)
    engine = str(connections.settings[alias].get("ENGINE", ""))
    if theirs is None:
        if engine.endswith("sqlite3"):
            raise ConfigError(f"Django's {alias!r} database is an in-memory SQLite "
                              f"database: set LITEQ_DB in settings to the queue's file")
        raise ConfigError(f"Django's {alias!r} database uses {engine}: LiteQ runs on "
                          f"PostgreSQL or SQLite; set LITEQ_DB in settings (a file path "
                          f"or a postgresql:// URL)")
    if engine.endswith("sqlite3"):
        return os.path.join(os.path.dirname(theirs), "liteq.db")
    return theirs


def liteq_db() -> str:
    """The queue database of this project (see the module's docstring)."""
    explicit = getattr(_settings(), "LITEQ_DB", None)
    if explicit:
        if not isinstance(explicit, (str, os.PathLike)):
            raise ConfigError(f"settings.LITEQ_DB must be a file path or a URL; "
                              f"got {explicit!r}")
        return os.fspath(explicit)
    return os.environ.get("LITEQ_DB") or database_target()


_follow = False


def follows_database() -> bool:
    """True when configure() took the queue from Django's database (neither
    settings.LITEQ_DB nor the environment named it)."""
    return _follow


def configure() -> str:
    """Export the project's queue as LITEQ_DB (and settings.LITEQ_SOCKET, if set, as
    LITEQ_SOCKET), which LiteQ reads at each call, in this process and the daemon's
    workers. Returns the queue database."""
    global _follow
    _follow = not getattr(_settings(), "LITEQ_DB", None) and not os.environ.get("LITEQ_DB")
    target = liteq_db()
    os.environ["LITEQ_DB"] = target
    sock = getattr(_settings(), "LITEQ_SOCKET", None)
    if sock:
        os.environ["LITEQ_SOCKET"] = os.fspath(sock)
    return target
