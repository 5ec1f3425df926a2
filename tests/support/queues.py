"""A test's own queue on one backend, as conftest's `db` fixtures give it."""

import contextlib
import os

from liteq import backends

from . import pg_helpers


def export(monkeypatch, target, workdir):
    """Point LITEQ_DB at `target` and LITEQ_SOCKET into `workdir` for this test."""
    for name in ("LITEQ_SYNC", "LITEQ_BUSY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LITEQ_DB", target)
    # Wake-ups and control calls never reach a daemon of another test.
    monkeypatch.setenv("LITEQ_SOCKET", os.path.join(workdir, "liteqd.sock"))


@contextlib.contextmanager
def own_queue(kind, workdir, monkeypatch):
    """A fresh queue of `kind` ("sqlite" or "postgresql"), exported as LITEQ_DB; yields
    its path or URL. Cached backends are dropped before and after, so no test sees
    another's connection; a PostgreSQL schema is dropped afterwards."""
    schema = None
    if kind == "sqlite":
        target = os.path.join(workdir, "queue.db")
    else:
        server = pg_helpers.server_url()
        schema, target = pg_helpers.create_schema(server)
    export(monkeypatch, target, workdir)
    backends.forget_backends()
    try:
        yield target
    finally:
        backends.forget_backends()
        if schema is not None:
            pg_helpers.drop_schema(server, schema)
