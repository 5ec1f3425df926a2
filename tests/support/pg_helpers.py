"""The PostgreSQL server the tests use, and one throwaway schema per test.

LITEQ_TEST_POSTGRES names the server (a libpq URL). Without it the tests try the
project's standard server, postgresql://root@127.0.0.1:5432/test, and skip the
PostgreSQL cases (with one reason) when it does not answer. With it set, a server
that does not answer, or a missing psycopg, fails the PostgreSQL cases instead:
CI sets it so that nothing is skipped silently.

Each test gets a schema of its own (lqt_<hex>), named in the URL it is given
(libpq's options=-csearch_path), and dropped afterwards with any connection
still using it (they carry the schema's name as application_name).
"""

import os
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

DEFAULT_URL = "postgresql://root@127.0.0.1:5432/test"
ENV = "LITEQ_TEST_POSTGRES"

_checked = {}


def server_url():
    """The server's URL, or pytest.skip/pytest.fail with the reason it cannot be used."""
    url = os.environ.get(ENV)
    required = bool(url)
    url = url or DEFAULT_URL
    if url not in _checked:
        _checked[url] = _probe(url)
    problem = _checked[url]
    if problem:
        if required:
            pytest.fail(f"{ENV}={url}: {problem}")
        pytest.skip(f"PostgreSQL cases skipped: {problem} (set {ENV} to require them)")
    return url


def _probe(url):
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'liteq[postgres]')"
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure to connect means: no usable server
        return f"no server answers at {url} ({type(exc).__name__}: {exc})".strip()
    return None


def with_query(url, **params):
    """The URL with these query parameters added (or replaced)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def create_schema(url):
    """Create a fresh schema; returns (its name, a URL whose connections use it)."""
    import psycopg
    name = f"lqt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return name, with_query(url, options=f"-csearch_path={name}", application_name=name)


def drop_schema(url, name):
    """Drop a test's schema, ending any connection still using it first."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def rows(url, sql, params=()):
    """The rows (dicts) of one statement on a fresh autocommit connection."""
    import psycopg
    from psycopg.rows import dict_row
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def terminate(url, pid):
    """pg_terminate_backend(pid), waiting (up to 5 s) until that session has ended."""
    return rows(url, "SELECT pg_terminate_backend(%s, 5000) AS ok", (pid,))[0]["ok"]
