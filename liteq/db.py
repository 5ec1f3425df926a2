"""liteq 0.2-compatible database entry points: get_conn(), init_db() and DB_PATH.

get_conn() is SQLite-only (liteq 0.2 knew no other database): it returns
a raw sqlite3 connection to the file. Everything else in LiteQ goes through
liteq.backends, which works on PostgreSQL too.

DB_PATH reads LITEQ_DB (default liteq.db); assigning it (`liteq.db.DB_PATH =
"jobs.db"`, as liteq 0.2 users did) sets LITEQ_DB, so every LiteQ call in this
process, and every process it starts, uses that database.
"""

import os
import sys
import types

from . import settings
from .backends import is_postgres, sqlite_path
from .backends.sqlite import open_with_schema
from .errors import ConfigError
import sqlite3


class _DbModule(types.ModuleType):
    @property
    def DB_PATH(self) -> str:  # noqa: N802 (liteq 0.2's name)
        return settings.db_path()

    @DB_PATH.setter
    def DB_PATH(self, path: "str | os.PathLike[str]") -> None:  # noqa: N802
        os.environ["LITEQ_DB"] = os.fspath(path)


sys.modules[__name__].__class__ = _DbModule


def get_conn(path: str | None = None) -> sqlite3.Connection:
    """Open a new connection to the queue database, with the schema in place.

    The path is LITEQ_DB read at each call (default: liteq.db in the working
    directory). The connection works as `with get_conn() as conn:` (commit on
    success); the caller closes it.
    """
    target = path or settings.db_path()
    if is_postgres(target):
        raise ConfigError("liteq.db.get_conn() opens SQLite files only; on PostgreSQL use "
                          "liteq.backends.open_backend()")
    return open_with_schema(sqlite_path(target), isolation_level="")


def init_db(path: str | None = None) -> None:
    """Create (or migrate) the schema. Idempotent; first use does it anyway.

    Works on any backend (a PostgreSQL URL too); the schema is created on open.
    """
    from .backends import open_backend
    open_backend(path).close()
