"""Queue backends: where the tasks live. `open_backend()` picks the implementation.

    open_backend("liteq.db")                       # SQLite (the default)
    open_backend("sqlite:///var/lib/app/q.db")     # the same, as a URL
    open_backend("postgresql://app@db/queue")      # PostgreSQL, with liteq[postgres]

Each backend module is imported only when a database of its kind is opened, so
an app on SQLite never loads a PostgreSQL driver.
"""

import os
import threading

from .. import settings
from ..errors import ConfigError
from .base import TASK_STATUSES, Backend, WakeChannel

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"


def is_postgres(target: str) -> bool:
    """True when `target` is a PostgreSQL URL."""
    return target.lower().startswith(_POSTGRES_SCHEMES)


def sqlite_path(target: str) -> str:
    """The file path of an SQLite target: a plain path, or sqlite:///path
    (sqlite:////abs/path for an absolute one, as SQLAlchemy writes it)."""
    if target.lower().startswith(_SQLITE_SCHEME):
        rest = target[len(_SQLITE_SCHEME):]
        if not rest.startswith("/"):
            raise ConfigError(f"an SQLite URL is sqlite:///PATH; got {target!r}")
        return rest[1:] or "liteq.db"
    return target


def _check_target(target):
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(f"the database must be a file path or a URL; got {target!r}")
    if "://" in target and not is_postgres(target) \
            and not target.lower().startswith(_SQLITE_SCHEME):
        scheme = target.split("://", 1)[0]
        raise ConfigError(f"unknown database URL scheme {scheme!r} in {target!r}: use a file "
                          f"path, sqlite:///PATH or postgresql://...")


def _postgres_unavailable(target):
    return ConfigError("PostgreSQL support comes with liteq[postgres]: "
                       "pip install 'liteq[postgres]'")


def identity_of(target=None) -> str:
    """The identity of the queue `target` names (default LITEQ_DB), without opening it.

    SQLite: the database file's absolute path. Control sockets and caches are
    keyed on it, so every process that names the same queue finds the same daemon.
    """
    target = target or settings.db_path()
    _check_target(target)
    if is_postgres(target):
        raise _postgres_unavailable(target)
    return os.path.abspath(sqlite_path(target))


def may_exist(target=None) -> bool:
    """False when `target` certainly holds no queue yet (an SQLite file that does not
    exist), so a read-only command need not create one; True otherwise."""
    target = target or settings.db_path()
    _check_target(target)
    if is_postgres(target):
        return True
    return os.path.exists(sqlite_path(target))


def open_backend(target=None, *, daemon=False) -> Backend:
    """Open the queue database `target` (default LITEQ_DB): a path or a URL.

    daemon=True opens it for liteqd's supervisor, whose writes must never stall its
    supervision loop (a short lock wait, retried by the loop).
    Raises ConfigError for a target it cannot use, DatabaseError when the database
    cannot be opened.
    """
    target = target or settings.db_path()
    _check_target(target)
    if is_postgres(target):
        raise _postgres_unavailable(target)
    from .sqlite import SQLiteBackend
    return SQLiteBackend(sqlite_path(target), daemon=daemon)


_local = threading.local()


def get_backend(target=None) -> Backend:
    """The calling thread's open backend for `target` (default: LITEQ_DB, read now).

    Cached per thread and per process: a forked child never reuses its parent's
    connection.
    """
    target = target or settings.db_path()
    pid = os.getpid()
    cache = getattr(_local, "backends", None)
    if cache is None or _local.pid != pid:
        cache = _local.backends = {}
        _local.pid = pid
    backend = cache.get(target)
    if backend is None:
        backend = cache[target] = open_backend(target)
    return backend


def forget_backends() -> None:
    """Close and drop this thread's cached backends (after a fork, or when LITEQ_DB
    changes in tests)."""
    cache = getattr(_local, "backends", None) or {}
    if getattr(_local, "pid", None) == os.getpid():
        for backend in cache.values():
            try:
                backend.close()
            except Exception:  # closing a broken connection must not hide the caller's work
                pass
    _local.backends = {}
    _local.pid = os.getpid()


__all__ = ["Backend", "WakeChannel", "TASK_STATUSES", "open_backend", "get_backend",
           "forget_backends", "identity_of", "is_postgres", "sqlite_path", "may_exist"]
