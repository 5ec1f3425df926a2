"""The seed-compatible database entry points: get_conn() and init_db()."""

from . import settings
from .storage import ensure_schema, open_connection


def get_conn(path=None):
    """Open a new connection to the queue database, with the schema in place.

    The path is LITEQ_DB read at each call (default: liteq.db in the working
    directory). The connection works as `with get_conn() as conn:` (commit on
    success); the caller closes it.
    """
    conn = open_connection(path or settings.db_path(), isolation_level="")
    try:
        ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def init_db(path=None) -> None:
    """Create (or migrate) the schema. Idempotent; first use does it anyway."""
    conn = get_conn(path)
    conn.close()
