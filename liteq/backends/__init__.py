"""Queue backends: where the tasks live. `open_backend()` picks the implementation.

    open_backend("liteq.db")                       # SQLite (the default)
    open_backend("sqlite:///var/lib/app/q.db")     # the same, as a URL
    open_backend("postgresql://app@db/queue")      # PostgreSQL, with liteq[postgres]

Each backend module is imported only when a database of its kind is opened, so
an app on SQLite never loads a PostgreSQL driver.
"""

import contextvars
import os
import threading
from types import ModuleType

from .. import settings
from ..errors import ConfigError
from .base import TASK_STATUSES, Backend, WakeChannel, set_thread_lookup

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


def _check_target(target: object) -> None:
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(f"the database must be a file path or a URL; got {target!r}")
    if "://" in target and not is_postgres(target) \
            and not target.lower().startswith(_SQLITE_SCHEME):
        scheme = target.split("://", 1)[0]
        raise ConfigError(f"unknown database URL scheme {scheme!r} in {target!r}: use a file "
                          f"path, sqlite:///PATH or postgresql://...")


def _postgres() -> ModuleType:
    """The PostgreSQL backend package, imported on first use; a ConfigError of one line
    when psycopg (the liteq[postgres] extra) cannot be imported."""
    try:
        from . import postgres
    except ImportError as exc:
        if (exc.name or "").startswith("liteq"):
            raise  # a LiteQ bug, not a missing extra
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"PostgreSQL support comes with liteq[postgres] ({reason}): "
                          f"pip install 'liteq[postgres]'") from None
    return postgres


def _backend_class(target: str) -> type[Backend]:
    if is_postgres(target):
        cls: type[Backend] = _postgres().PostgresBackend
        return cls
    from .sqlite import SQLiteBackend
    return SQLiteBackend


def identity_of(target: str | None = None) -> str:
    """The identity of the queue `target` names (default LITEQ_DB), without opening it.

    SQLite: the database file's absolute path. PostgreSQL: the URL without its
    password. Control sockets and caches are keyed on it, so every process that
    names the same queue finds the same daemon.
    """
    target = target or settings.db_path()
    _check_target(target)
    if is_postgres(target):
        identity: str = _postgres().identity_of_url(target)
        return identity
    return os.path.abspath(sqlite_path(target))


def may_exist(target: str | None = None) -> bool:
    """False when `target` certainly holds no queue yet (an SQLite file that does not
    exist), so a read-only command need not create one; True otherwise."""
    target = target or settings.db_path()
    _check_target(target)
    if is_postgres(target):
        return True
    return os.path.exists(sqlite_path(target))


def local_dir(target: str | None = None) -> str | None:
    """The directory of the database file, where files that belong with it may be kept
    (SQLite); None for a database on a server (PostgreSQL)."""
    target = target or settings.db_path()
    _check_target(target)
    if is_postgres(target):
        return None
    return os.path.dirname(os.path.abspath(sqlite_path(target)))


def open_backend(target: str | None = None, *, daemon: bool = False) -> Backend:
    """Open the queue database `target` (default LITEQ_DB): a path or a URL.

    daemon=True opens it for liteqd's supervisor, whose writes must never stall its
    supervision loop (a short lock wait, retried by the loop).
    Raises ConfigError for a target it cannot use, DatabaseError when the database
    cannot be opened (DatabaseUnavailable when a server cannot be reached).
    """
    target = target or settings.db_path()
    _check_target(target)
    if is_postgres(target):
        backend: Backend = _postgres().PostgresBackend(target, daemon=daemon)
        return backend
    from .sqlite import SQLiteBackend
    return SQLiteBackend(sqlite_path(target), daemon=daemon)


# Backends are cached per thread (SQLite: a connection is cheap, and threads never
# wait for each other), or per process when their class says shared_across_threads
# (PostgreSQL: one server connection per process). Both caches are per process: a
# forked child opens its own and never closes its parent's.
_local = threading.local()
# The backend of liteq.using(conn): writes go into the app's transaction on `conn`.
borrowed_backend: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "liteq_borrowed_backend", default=None)
_shared: dict[str, Backend] = {}
_shared_pid: int | None = None
_shared_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _shared, _shared_pid, _shared_lock
    _shared, _shared_pid, _shared_lock = {}, os.getpid(), threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _thread_cache(pid: int) -> dict[str, Backend]:
    cache: dict[str, Backend] | None = getattr(_local, "backends", None)
    if cache is None or _local.pid != pid:
        cache = _local.backends = {}
        _local.pid = pid
    return cache


def _shared_backend(target: str, pid: int) -> Backend | None:
    """The process's shared backend for `target`, opened if its class is shared; or None."""
    global _shared, _shared_pid
    with _shared_lock:
        if _shared_pid != pid:
            _shared, _shared_pid = {}, pid
        backend = _shared.get(target)
        if backend is None and _backend_class(target).shared_across_threads:
            backend = _shared[target] = open_backend(target)
        return backend


def get_backend(target: str | None = None) -> Backend:
    """The open backend for `target` (default: LITEQ_DB, read now).

    One per thread (SQLite) or one per process shared by its threads (PostgreSQL);
    never shared with a forked child. Inside `with liteq.using(conn)`, the backend
    writing through `conn` (for LITEQ_DB, or its own target).
    """
    borrowed = borrowed_backend.get()
    if borrowed is not None and (target is None or target == borrowed.target):
        return borrowed
    target = target or settings.db_path()
    pid = os.getpid()
    if _shared_pid == pid:
        backend = _shared.get(target)
        if backend is not None:
            return backend
    cache = _thread_cache(pid)
    backend = cache.get(target)
    if backend is None:
        backend = _shared_backend(target, pid)
        if backend is None:
            backend = cache[target] = open_backend(target)
    return backend


set_thread_lookup(get_backend)


def forget_backends() -> None:
    """Close and drop this thread's cached backends and the process's shared ones
    (after a fork, or when LITEQ_DB changes in tests). A forked child drops what it
    inherited without closing it: the connections are its parent's."""
    global _shared, _shared_pid
    pid = os.getpid()
    cached: dict[str, Backend] = getattr(_local, "backends", None) or {}
    owned = list(cached.values()) if getattr(_local, "pid", None) == pid else []
    with _shared_lock:
        if _shared_pid == pid:
            owned += list(_shared.values())
        _shared, _shared_pid = {}, pid
    for backend in owned:
        try:
            backend.close()
        except Exception:  # closing a broken connection must not hide the caller's work
            pass
    _local.backends = {}
    _local.pid = pid


__all__ = ["Backend", "WakeChannel", "TASK_STATUSES", "open_backend", "get_backend",
           "forget_backends", "identity_of", "is_postgres", "sqlite_path", "may_exist"]
