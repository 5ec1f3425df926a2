"""Shared fixtures: every test gets its own queue, on each backend it runs on.

- `workdir`: a short temp dir (socket paths must stay within the Unix limit).
- `db`: the test's queue, exported as LITEQ_DB with LITEQ_SOCKET inside workdir:
  a real SQLite file in workdir, or a PostgreSQL URL naming a schema of its own
  (tests/support/pg_helpers.py). Tests about the queue's behaviour take `db` (or `backend`)
  and run on both.
- `db_path`: an SQLite file only, for tests about SQLite itself.
- `backend`: the calling thread's open backend for `db`.

A test marked `sqlite_only` gets only the SQLite case of `db` (and of what builds on
it: `backend`, the daemon fixtures), so it may also take `db_path`, the same file.
"""

import os
import shutil
import tempfile

import pytest

# The support modules are pytest plugins (below): their asserts are rewritten too, even
# the ones this file imports before pytest loads them as plugins.
pytest.register_assert_rewrite("support")

from liteq import backends  # noqa: E402

from support.queues import export, own_queue  # noqa: E402
from support.daemon_helpers import registry_restored  # noqa: E402

BACKEND_KINDS = ("sqlite", "postgresql")


# Every test folder's fixtures: real daemons (`daemons`, `app`), the fault lab (`lab`,
# `fault_app`), simulated hosts (`hosts`) and throwaway PostgreSQL clusters.
pytest_plugins = ["support.daemon_helpers", "support.fault_helpers", "support.hosts",
                  "support.pg_cluster"]

# Benchmarks print figures, they assert nothing: run them by hand (benchmarks/README.md).
collect_ignore = ["benchmarks"]

# The two worker processes (pyproject's addopts) each take whole test folders, chosen
# so that the two halves take about as long (cli, contract, daemon, deployment and
# sqlite in the first; the rest in the second). Each worker runs its files in the order
# one process would, so no file meets state (registered task names, say) that it would
# not meet in a single run, and the tests that run `liteq bench` (cli/, daemon/) never
# run at once. A new folder goes to the first worker unless it is named here.
SECOND_HALF = {"api", "compat", "postgres", "unit", "web"}


def _half(path):
    """"first" or "second": the worker that runs the test file at `path`."""
    rel = os.path.relpath(str(path), os.path.dirname(os.path.abspath(__file__)))
    folder = rel.split(os.sep)[0]
    return "second" if folder in SECOND_HALF else "first"


def pytest_collection_modifyitems(config, items):
    """Pin each test file to one of the two workers (pytest-xdist's loadgroup)."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_half(item.fspath)))


@pytest.hookimpl(tryfirst=True)  # before the parametrize marks and fixture params apply
def pytest_generate_tests(metafunc):
    """Run the `db` of a test marked sqlite_only on SQLite alone.

    A parametrize mark on the test takes precedence over the fixture's own params.
    """
    if "db" in metafunc.fixturenames and metafunc.definition.get_closest_marker("sqlite_only"):
        metafunc.definition.add_marker(pytest.mark.parametrize("db", ["sqlite"], indirect=True))


@pytest.fixture
def workdir():
    """A fresh short temp dir, removed afterwards."""
    tmp = tempfile.mkdtemp(prefix="liteq-test-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=BACKEND_KINDS)
def db(request, workdir, monkeypatch):
    """This test's queue (an SQLite path or a PostgreSQL URL), exported as LITEQ_DB.

    Cached backends are dropped before and after, so no test sees another's
    connection; a PostgreSQL schema is dropped afterwards.
    """
    with own_queue(request.param, workdir, monkeypatch) as target:
        yield target


@pytest.fixture
def db_path(workdir, monkeypatch):
    """A fresh SQLite database path in workdir, exported as LITEQ_DB (SQLite-only tests)."""
    path = os.path.join(workdir, "queue.db")
    export(monkeypatch, path, workdir)
    backends.forget_backends()
    try:
        yield path
    finally:
        backends.forget_backends()


@pytest.fixture
def backend(db):
    """The open backend of this test's queue."""
    return backends.get_backend(db)


@pytest.fixture
def clean_registry():
    """Let a test register tasks freely; the task registry is restored afterwards."""
    with registry_restored() as registry:
        yield registry
