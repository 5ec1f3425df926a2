"""The SQLite database and its -wal and -shm files are usable by the database's group
whatever the umask of the process that creates them (the daemon under UMask=0027,
the app under its own), and by nobody else. Real files, real umasks."""

import os
import stat

import pytest

from liteq import backends


@pytest.fixture
def umask():
    """Set the process umask for the test; restored afterwards."""
    saved = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(saved)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o077, 0o027, 0o022, 0o002], ids=oct)
def test_a_new_database_and_its_wal_and_shm_are_0660_whatever_the_umask(workdir, umask,
                                                                       mask):
    umask(mask)
    path = os.path.join(workdir, "q.db")
    backend = backends.open_backend(path)
    try:
        for suffix in ("", "-wal", "-shm"):
            assert _mode(path + suffix) == 0o660, (suffix, oct(_mode(path + suffix)))
    finally:
        backend.close()


def test_a_group_readable_database_of_its_owner_becomes_group_writable(workdir, umask):
    """A file an earlier LiteQ created 0640 under UMask=0027: its owner's next open
    lets the group write it, so the app in the group stops getting 'read-only'."""
    path = os.path.join(workdir, "old.db")
    backends.open_backend(path).close()
    os.chmod(path, 0o640)
    umask(0o027)
    backend = backends.open_backend(path)
    try:
        assert _mode(path) == 0o660
        for suffix in ("-wal", "-shm"):
            assert _mode(path + suffix) == 0o660
    finally:
        backend.close()


def test_a_private_database_stays_private(workdir, umask):
    """A database its owner made 0600 is left so: the group gets nothing it did not have."""
    path = os.path.join(workdir, "private.db")
    backends.open_backend(path).close()
    os.chmod(path, 0o600)
    backend = backends.open_backend(path)
    try:
        assert _mode(path) == 0o600
        assert _mode(path + "-shm") & 0o077 == 0
    finally:
        backend.close()
