"""A PostgreSQL URL as LiteQ shows it and as it connects with it.

The identity of a queue on PostgreSQL is its URL without the password: it names
the daemon's sockets (liteq.paths hashes it) and appears in logs, process titles
and `liteqctl status`. Everything LiteQ says about the database goes through
`identity()` and `scrub()`, so a password in the URL (or in PGPASSWORD) is never
shown. This module does not import psycopg.
"""

import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from ... import settings

SCHEME = "postgresql://"

# Dead-peer detection on TCP connections (a host that crashed or a network that
# dropped never sends a reset): idle 10 s, then 3 probes 5 s apart. Without
# these a LISTEN connection waits for a notification from a dead server forever,
# and a call waits for its reply for as long as the kernel's defaults (hours).
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
              "keepalives_count": "3"}


def _split(url: str) -> tuple[str | None, str, str]:
    """(userinfo or None, the rest of the authority and path, query or '') of a URL.

    Like libpq, the user info ends at the first '@' before any '/'.
    """
    rest = url.split("://", 1)[1]
    query = ""
    if "?" in rest:
        rest, query = rest.split("?", 1)
    at = rest.find("@")
    slash = rest.find("/")
    if at >= 0 and (slash < 0 or at < slash):
        return rest[:at], rest[at + 1:], query
    return None, rest, query


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """[(raw key=value text, decoded key)] of a query string."""
    return [(part, unquote(part.split("=", 1)[0]))
            for part in query.split("&") if part]


def identity(url: str) -> str:
    """The URL without its password: user, hosts, ports, dbname and the query (sorted,
    minus any password), always with the postgresql:// scheme."""
    userinfo, rest, query = _split(url)
    user = "" if userinfo is None else userinfo.split(":", 1)[0]
    pairs = sorted(raw for raw, key in _query_pairs(query) if key != "password")
    out = SCHEME + (f"{user}@" if user else "") + rest
    return out + ("?" + "&".join(pairs) if pairs else "")


def secrets_of(url: str) -> list[str]:
    """Every form of the password the URL (or PGPASSWORD) holds, longest first."""
    found: set[str] = set()
    userinfo, _, query = _split(url)
    if userinfo is not None and ":" in userinfo:
        found.add(userinfo.split(":", 1)[1])
    for raw, key in _query_pairs(query):
        if key == "password" and "=" in raw:
            found.add(raw.split("=", 1)[1])
    if os.environ.get("PGPASSWORD"):
        found.add(os.environ["PGPASSWORD"])
    found |= {unquote(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def connect_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """What LiteQ adds to the libpq parameters `params` (parsed from the URL).

    connect_timeout: the URL's, else LITEQ_CONNECT_TIMEOUT, else PGCONNECT_TIMEOUT,
    else 5 s, so a call against an unreachable server fails instead of hanging.
    TCP keepalives (KEEPALIVES) unless the URL sets them.
    """
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params and (
            os.environ.get("LITEQ_CONNECT_TIMEOUT") or not os.environ.get("PGCONNECT_TIMEOUT")):
        extra["connect_timeout"] = settings.connect_timeout()
    extra.update({k: v for k, v in KEEPALIVES.items() if k not in params})
    return extra
