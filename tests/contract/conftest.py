"""The backend contract runs on SQLite, PostgreSQL and the in-memory fake
(tests/unit/fake_backend.py).

A test that takes `store` runs on the fake too, unless it is marked `real_backend`
(it needs what the fake does not model: a database file or server, limits, wake-ups,
other processes). Every other test here runs on the two real backends only.
"""

import os

import pytest

from liteq import backends

from support.queues import export, own_queue
from unit.fake_backend import FakeBackend


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "real_backend: a contract case the in-memory fake does not model")


@pytest.hookimpl(tryfirst=True)  # like the sqlite_only hook in tests/conftest.py
def pytest_generate_tests(metafunc):
    """Keep `db` on the real backends for tests the fake cannot run."""
    definition = metafunc.definition
    if "db" not in metafunc.fixturenames or definition.get_closest_marker("sqlite_only"):
        return
    if any("db" in [n.strip() for n in str(m.args[0]).split(",")]
           for m in definition.iter_markers("parametrize")):
        return   # the test names its own backends
    if "store" in metafunc.fixturenames and not definition.get_closest_marker("real_backend"):
        return
    definition.add_marker(pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True))


@pytest.fixture(params=["sqlite", "postgresql", "fake"])
def db(request, workdir, monkeypatch):
    """As tests/conftest.py's `db`, plus FakeBackend.target ("fake:") for the in-memory fake (no database)."""
    if request.param == "fake":
        # Anything that reaches for LITEQ_DB in a fake case fails loudly (no such
        # directory) instead of writing a database somewhere.
        export(monkeypatch, os.path.join(workdir, "no-database", "queue.db"), workdir)
        yield FakeBackend.target
        return
    with own_queue(request.param, workdir, monkeypatch) as target:
        yield target


@pytest.fixture
def store(db):
    """A backend of the test's own on `db` (or the in-memory fake), closed afterwards."""
    s = FakeBackend() if db == FakeBackend.target else backends.open_backend(db)
    try:
        yield s
    finally:
        s.close()
