"""Shared fixtures: every test gets its own real SQLite file in a temp dir."""

import os
import shutil
import tempfile

import pytest

from liteq import backends

from daemon_helpers import registry_restored


@pytest.fixture
def db_path(monkeypatch):
    """A fresh database path in a new temp dir, exported as LITEQ_DB.

    LITEQ_SOCKET points inside the same dir, so wake-ups and control calls never
    reach a real daemon. Cached Stores are dropped before and after, so no test
    sees another's connection. The temp dir is made with mkdtemp (a short path
    under /tmp, so socket paths stay within the Unix limit).
    """
    tmp = tempfile.mkdtemp(prefix="liteq-test-")
    path = os.path.join(tmp, "queue.db")
    for name in ("LITEQ_SYNC", "LITEQ_BUSY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LITEQ_DB", path)
    monkeypatch.setenv("LITEQ_SOCKET", os.path.join(tmp, "liteqd.sock"))
    backends.forget_backends()
    try:
        yield path
    finally:
        backends.forget_backends()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def clean_registry():
    """Let a test register tasks freely; the task registry is restored afterwards."""
    with registry_restored() as registry:
        yield registry
