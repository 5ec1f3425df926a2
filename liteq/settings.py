"""Library settings read from LITEQ_* environment variables at call time."""

import os

from .errors import ConfigError

SYNC_LEVELS = {"normal": "NORMAL", "full": "FULL", "off": "OFF", "extra": "EXTRA"}


def db_path() -> str:
    """The queue database path: LITEQ_DB, else liteq.db in the working directory."""
    return os.environ.get("LITEQ_DB") or "liteq.db"


def sync_pragma() -> str:
    """The PRAGMA synchronous level chosen by LITEQ_SYNC (normal or full)."""
    raw = os.environ.get("LITEQ_SYNC", "normal").strip().lower()
    if raw not in SYNC_LEVELS:
        raise ConfigError(f"LITEQ_SYNC must be one of {', '.join(SYNC_LEVELS)}; got {raw!r}")
    return SYNC_LEVELS[raw]


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    """Read a number from the environment, with a clear error when it is malformed."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number; got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}; got {raw!r}")
    return value


def busy_timeout() -> float:
    """Seconds a writer waits for the database lock (LITEQ_BUSY_TIMEOUT, default 10)."""
    return env_float("LITEQ_BUSY_TIMEOUT", 10.0)


DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
# The smallest limit that may be set. Payloads of at most a quarter of it fit under
# any limit, so enqueueing them never reads the variable (see serialization).
MIN_MAX_PAYLOAD = 1024


def max_payload() -> int:
    """Largest encoded task payload in bytes that may be enqueued (LITEQ_MAX_PAYLOAD,
    default 16 MiB, at least MIN_MAX_PAYLOAD)."""
    raw = os.environ.get("LITEQ_MAX_PAYLOAD")
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_PAYLOAD
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"LITEQ_MAX_PAYLOAD must be a whole number of bytes "
                          f"(such as 16777216); got {raw!r}")
    value = int(text)
    if value < MIN_MAX_PAYLOAD:
        raise ConfigError(f"LITEQ_MAX_PAYLOAD must be at least {MIN_MAX_PAYLOAD} bytes; "
                          f"got {raw!r}")
    return value


def connect_timeout() -> int:
    """Seconds a PostgreSQL connection attempt may take (LITEQ_CONNECT_TIMEOUT, default 5).

    libpq counts whole seconds (and at least 2); a URL's own connect_timeout wins.
    """
    return max(1, round(env_float("LITEQ_CONNECT_TIMEOUT", 5.0, minimum=1.0)))


NO_DDL_ENV = "LITEQ_NO_DDL"


def no_ddl() -> bool:
    """True when LITEQ_NO_DDL forbids this process to create or migrate the tables
    (a DBA applies `liteq db upgrade` instead); `liteq db upgrade` itself ignores it."""
    raw = os.environ.get(NO_DDL_ENV)
    if raw is None:
        return False
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{NO_DDL_ENV} must be 1 or 0 (true or false); got {raw!r}")
