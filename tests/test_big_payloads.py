"""Big task arguments reach the child whole.

The supervisor's socket to each child is non-blocking; a message bigger than
the buffer is sent in pieces, and a piece must never be sent twice. The child
reads it 64 KiB at a time and must parse it in linear time.
"""

import json
import socket

import pytest

from liteq import wait_for_task
from liteq.launcher import start_daemon
from liteqd.child import _Channel


APP = '''
from liteq import task

@task
def measure(blob, n):
    return [n, len(blob), blob[:8], blob[-8:]]
'''

# What {"args":[BLOB,N],"kwargs":{}} adds around BLOB (N a one-digit number).
WRAPPING = len('{"args":["",0],"kwargs":{}}')
SIXTEEN_MIB = 16 * 1024 * 1024


def _blob(n, size):
    """A string of `size` characters that starts and ends with the number n."""
    return f"{n:08d}" + "x" * (size - 16) + f"{n:08d}"


@pytest.fixture
def big_app(db_path, tmp_path, monkeypatch, clean_registry):
    app_file = tmp_path / "big_app.py"
    app_file.write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    module = importlib.import_module("big_app")
    try:
        yield app_file, module
    finally:
        import sys
        sys.modules.pop("big_app", None)


def _run_all(app_file, tmp_path, ids, blobs):
    with start_daemon(str(app_file), concurrency=1, prefetch=4,
                      log_path=str(tmp_path / "d.log")):
        for task_id, (n, blob) in zip(ids, blobs):
            st = wait_for_task(task_id, timeout=60)
            assert st["status"] == "done", st["error"]
            assert st["result"] == [n, len(blob), f"{n:08d}", f"{n:08d}"]
            assert st["attempts"] == 1


def test_megabyte_arguments_arrive_intact(big_app, tmp_path):
    app_file, app = big_app
    blobs = [(n, _blob(n, 1_000_000 + n)) for n in range(6)]
    ids = [app.measure.delay(blob, n) for n, blob in blobs]
    _run_all(app_file, tmp_path, ids, blobs)


def test_kilobyte_and_megabyte_arguments_run(big_app, tmp_path):
    app_file, app = big_app
    blobs = [(1, _blob(1, 1_000)), (2, _blob(2, 1_000_000))]
    ids = [app.measure.delay(blob, n) for n, blob in blobs]
    _run_all(app_file, tmp_path, ids, blobs)


def test_arguments_just_under_the_limit_run(big_app, tmp_path):
    # 16 MiB less a little: the child parsed such a message in quadratic time, so slowly
    # that the supervisor gave up on it (ChildDied: killed by signal SIGKILL).
    app_file, app = big_app
    blobs = [(3, _blob(3, SIXTEEN_MIB - WRAPPING - 100))]
    ids = [app.measure.delay(blob, n) for n, blob in blobs]
    _run_all(app_file, tmp_path, ids, blobs)


# ---- the child's parser ------------------------------------------------------------------

def test_child_parser_joins_lines_split_anywhere():
    """Messages cut at every kind of boundary come out whole, in order."""
    a, b = socket.socketpair()
    try:
        channel = _Channel(b)
        messages = [["t", n, "x" * (n * 7), None] for n in range(40)]
        stream = b"".join(json.dumps(m).encode() + b"\n" for m in messages)
        pieces, cut = [], 0
        for size in [1, 2, 3, 5, 50, 1, 200, 4096]:   # then the rest
            pieces.append(stream[cut:cut + size])
            cut += size
        pieces.append(stream[cut:])
        got = []
        b.settimeout(5)
        for piece in pieces:
            a.sendall(piece)
            assert channel.receive()   # pieces are under 64 KiB: one read takes each whole
            while channel.pending:
                got.append(channel.pending.pop())
        assert got == messages
    finally:
        a.close()
        b.close()
