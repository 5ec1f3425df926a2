"""Big task arguments: they reach the child whole up to LITEQ_MAX_PAYLOAD, and above it
they are refused at the call site with nothing written.

The supervisor's socket to each child is non-blocking; a message bigger than
the buffer is sent in pieces, and a piece must never be sent twice. The child
reads it 64 KiB at a time and must parse it in linear time.
"""

import json
import re
import socket

import pytest

from liteq import ConfigError, register_schedule, wait_for_task
from liteq.core import task
from liteq.launcher import start_daemon
from liteq.settings import DEFAULT_MAX_PAYLOAD
from liteqd.child_channel import Channel

from support.task_table import count_tasks, task_rows

APP = '''
from liteq import task

@task
def measure(blob, n):
    return [n, len(blob), blob[:8], blob[-8:]]
'''

# What {"args":[BLOB,N],"kwargs":{}} adds around BLOB (N a one-digit number).
WRAPPING = len('{"args":["",0],"kwargs":{}}')


def _blob(n, size):
    """A string of `size` characters that starts and ends with the number n."""
    return f"{n:08d}" + "x" * (size - 16) + f"{n:08d}"


@pytest.fixture
def big_app(db, tmp_path, monkeypatch, clean_registry):
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
    blobs = [(3, _blob(3, DEFAULT_MAX_PAYLOAD - WRAPPING - 100))]
    ids = [app.measure.delay(blob, n) for n, blob in blobs]
    _run_all(app_file, tmp_path, ids, blobs)


# ---- the child's parser ------------------------------------------------------------------

def test_child_parser_joins_lines_split_anywhere():
    """Messages cut at every kind of boundary come out whole, in order."""
    a, b = socket.socketpair()
    try:
        channel = Channel(b)
        messages = [["t", n, "task", "x" * (n * 7), None, "default", 1, 0, None, None]
                    for n in range(40)]
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
        assert [list(m) for m in got] == messages
    finally:
        a.close()
        b.close()


# ---- the limit ----------------------------------------------------------------------------

@pytest.fixture
def blob_task(db, clean_registry):
    @task
    def take(blob, n=0):
        return len(blob)
    take.delay("first")   # makes the database, so rows can be counted
    return take


def _calls(take, blob):
    """Every enqueue API, each with one call carrying `blob`."""
    return {
        "delay": lambda: take.delay(blob),
        "schedule": lambda: take.schedule(60, blob),
        "apply_async": lambda: take.apply_async((blob,), countdown=5),
        "map": lambda: take.map(["small", blob, "small"]),
        "starmap": lambda: take.starmap([("small",), (blob,)]),
    }


def test_over_the_default_limit_is_refused_and_nothing_is_written(blob_task, db):
    blob = "y" * (DEFAULT_MAX_PAYLOAD - WRAPPING + 100)   # the limit plus a little
    for api, call in _calls(blob_task, blob).items():
        with pytest.raises(ValueError) as caught:
            call()
        text = str(caught.value)
        assert "'take'" in text and f"{DEFAULT_MAX_PAYLOAD:,} bytes" in text, (api, text)
        assert "LITEQ_MAX_PAYLOAD" in text and "nothing was enqueued" in text, (api, text)
        assert count_tasks(db) == 1, api


def test_the_limit_is_exact_and_counts_utf8_bytes(blob_task, db, monkeypatch):
    monkeypatch.setenv("LITEQ_MAX_PAYLOAD", "2000")
    wrapping = len('{"args":[""],"kwargs":{}}')
    fits = "z" * (2000 - wrapping)
    ids = [blob_task.delay(fits), *blob_task.starmap([(fits,)])]
    sizes = [len(r["payload"].encode()) for r in task_rows(db, ids).values()]
    assert sizes == [2000, 2000]
    with pytest.raises(ValueError, match=r"encode to 2,001 bytes, over the limit of 2,000"):
        blob_task.delay(fits + "z")
    # 'я' is one character and two bytes.
    with pytest.raises(ValueError, match=r"encode to 2,\d\d\d bytes"):
        blob_task.delay("я" * 1100)
    assert count_tasks(db) == 3


def test_bulk_names_the_call_over_the_limit(blob_task, db, monkeypatch):
    monkeypatch.setenv("LITEQ_MAX_PAYLOAD", "1024")
    calls = [("a" * 900,), ("b" * 900,), ("c" * 2000,), ("d",)]
    with pytest.raises(ValueError, match=r"^call 2: the arguments of task 'take' encode to "
                                         r"2,025 bytes, over the limit of 1,024"):
        blob_task.starmap(calls)
    assert count_tasks(db) == 1
    # Together far over the limit, each call under it: fine, the limit is per call.
    ids = blob_task.starmap(calls[:2] * 5)
    assert len(ids) == 10


def test_a_schedule_over_the_limit_is_refused(blob_task, db, monkeypatch):
    monkeypatch.setenv("LITEQ_MAX_PAYLOAD", "1024")
    with pytest.raises(ValueError, match="over the limit of 1,024 bytes"):
        register_schedule(blob_task, "* * * * *", "q" * 2000)
    assert count_tasks(db) == 1


@pytest.mark.parametrize("raw", ["16M", "1.5", "-5", "0", "1023", "lots", "1e6", "²"])
def test_a_bad_limit_is_a_clear_error(blob_task, db, monkeypatch, raw):
    monkeypatch.setenv("LITEQ_MAX_PAYLOAD", raw)
    with pytest.raises(ConfigError, match=r"LITEQ_MAX_PAYLOAD .*got " + re.escape(repr(raw))):
        blob_task.delay("x" * 300)
    assert count_tasks(db) == 1

