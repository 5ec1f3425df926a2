"""Task messages larger than a socket buffer reach the child whole.

The supervisor's socket to each child is non-blocking; a message bigger than
the buffer is sent in pieces, and a piece must never be sent twice.
"""

from liteq import wait_for_task
from liteq.launcher import start_daemon

APP = '''
from liteq import task

@task
def measure(blob, n):
    return [n, len(blob), blob[:8], blob[-8:]]
'''


def test_megabyte_arguments_arrive_intact(db, tmp_path, monkeypatch):
    app_file = tmp_path / "big_app.py"
    app_file.write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    app = importlib.import_module("big_app")
    blobs = [(f"{n:08d}" + "x" * (1_000_000 + n) + f"{n:08d}") for n in range(6)]
    ids = [app.measure.delay(blob, n) for n, blob in enumerate(blobs)]
    with start_daemon(str(app_file), concurrency=1, prefetch=4,
                      log_path=str(tmp_path / "d.log")):
        for n, task_id in enumerate(ids):
            st = wait_for_task(task_id, timeout=30)
            assert st["status"] == "done", st["error"]
            assert st["result"] == [n, len(blobs[n]), f"{n:08d}", f"{n:08d}"]
            assert st["attempts"] == 1
