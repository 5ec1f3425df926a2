"""A graceful stop on a full disk: outcomes the database refuses are not lost.

SQLite on a real, small tmpfs (root only): tasks finish after the file system
filled up, so their outcomes cannot be written; then SIGTERM. The daemon keeps
trying until the stop deadline, keeps what is still refused in a file in its
runtime directory (the control socket's), exits non-zero, and the next start
records those outcomes, so no task runs twice or ends failed for nothing. Where no
file can be written either, each task is named in the log and the next start ends
it with an error saying its outcome was lost at the stop.
"""

import contextlib
import os
import sqlite3
import subprocess

import pytest

from liteq import backends
from liteqd import kept_outcomes
from liteqd.config import build_parser, resolve

from support.processes import read_lines, wait_for
from support.task_table import task_row, wait_statuses

TASKS = 4


@pytest.fixture
def app(fault_app):
    """This file's tasks: tests/apps/fault_app.py, run by the `lab` daemons."""
    return fault_app


def _fill(path):
    """Write a file until its file system is full (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (65536, 512):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == 28, exc
    finally:
        os.close(fd)


@contextlib.contextmanager
def small_disk(lab, size="6m"):
    """A real tmpfs of `size` mounted in the test's directory (unmounted after, with
    every process of the test killed first so nothing holds it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = lab.path("disk")
    os.mkdir(disk)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", disk],
                         capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield disk
    finally:
        for daemon in lab.daemons:
            daemon.kill_everything()
        backends.forget_backends()
        subprocess.run(["umount", "-l", disk], capture_output=True, timeout=30)


def _run_until_the_disk_is_full(lab, app, monkeypatch, disk, *flags):
    """A daemon on disk/queue.db whose TASKS tasks finish only once the disk is full;
    returns (daemon, db, task ids, marker of starts, filler path)."""
    db = os.path.join(disk, "queue.db")
    monkeypatch.setenv("LITEQ_DB", db)
    backends.forget_backends()
    marker, go = lab.path("started.txt"), lab.path("go")
    d = lab.daemon("--concurrency", str(TASKS), "--db", db, "--graceful-timeout", "3",
                   *flags, env={"LITEQ_DB": db})
    ids = [app.hold_until.delay(marker, go) for _ in range(TASKS)]
    wait_for(lambda: len(read_lines(marker)) == TASKS, 30, "the tasks never all started")
    backends.forget_backends()
    # An empty WAL, so the next write must grow it: it cannot reuse space it has.
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    filler = os.path.join(disk, "filler")
    _fill(filler)
    open(go, "w").close()
    d.wait_event("db.retrying", timeout=30, op="sync")   # the outcomes were refused
    return d, db, ids, marker, filler


def _statuses(db, ids):
    return [task_row(db, i)["status"] for i in ids]


@pytest.mark.sqlite_only
def test_outcomes_refused_at_stop_are_kept_and_recorded_by_the_next_start(lab, app,
                                                                          monkeypatch):
    with small_disk(lab) as disk:
        d, db, ids, marker, filler = _run_until_the_disk_is_full(lab, app, monkeypatch, disk)
        code = d.stop(timeout=60)
        assert code != 0, f"a stop that left outcomes unrecorded exited 0\n{d.dump()}"
        kept = d.events("outcomes.kept")
        assert kept and sorted(kept[0]["task_ids"]) == sorted(ids), d.dump()
        assert os.path.dirname(kept[0]["path"]) == os.path.dirname(lab.socket)
        stopped = d.events("daemon.stopped")[0]
        assert (stopped["outcomes_unrecorded"], stopped["exit_code"]) == (TASKS, code)
        assert _statuses(db, ids) == ["running"] * TASKS

        os.unlink(filler)
        d2 = lab.daemon("--concurrency", str(TASKS), "--db", db, env={"LITEQ_DB": db})
        wait_statuses(db, ids, "done", timeout=30, dump=d2.dump)
        assert [task_row(db, i)["result"] for i in ids] == ['"went"'] * TASKS
        assert len(read_lines(marker)) == TASKS            # none ran again
        assert len(d2.events("task.outcome_replayed")) == TASKS
        assert not os.path.exists(kept[0]["path"])
        assert d2.stop() == 0


@pytest.mark.sqlite_only
def test_outcomes_nothing_can_keep_are_named_and_end_as_lost(lab, app, monkeypatch):
    with small_disk(lab) as disk:
        # The control socket, and so the runtime directory, on the full disk too.
        sock = os.path.join(disk, "liteqd.sock")
        monkeypatch.setattr(lab, "socket", sock)
        monkeypatch.setenv("LITEQ_SOCKET", sock)
        d, db, ids, marker, filler = _run_until_the_disk_is_full(
            lab, app, monkeypatch, disk, "--socket", sock)
        code = d.stop(timeout=60)
        assert code != 0, d.dump()
        lost = d.events("task.outcome_lost")
        assert sorted(e["task_id"] for e in lost) == sorted(ids), d.dump()
        assert all("outcome lost at daemon stop" in e["reason"] for e in lost)
        assert _statuses(db, ids) == ["running"] * TASKS

        os.unlink(filler)
        d2 = lab.daemon("--concurrency", str(TASKS), "--db", db, "--socket", sock,
                        env={"LITEQ_DB": db})
        wait_statuses(db, ids, "failed", timeout=30, dump=d2.dump)   # max_retries=0
        for i in ids:
            assert task_row(db, i)["error"].startswith("outcome lost at daemon stop"), \
                task_row(db, i)["error"]
        assert len(read_lines(marker)) == TASKS
        assert d2.stop() == 0


def test_a_kept_outcome_is_replayed_only_while_its_task_still_runs_for_its_daemon(lab, app):
    """Replay is guarded: a kept outcome of a task that no longer runs for the daemon
    that kept it (here: pending, never claimed) is refused and logged, and the task
    runs as usual; a kept file that is a symlink is not read."""
    tid = app.add.delay(20, 22)
    cfg = resolve(build_parser().parse_args(["--app", "x", "--db", lab.db,
                                             "--socket", lab.socket]))
    path = kept_outcomes.kept_paths(cfg)[0]
    assert os.path.dirname(path) == os.path.dirname(lab.socket)
    t = 1.0
    assert kept_outcomes.keep([path], "gone-host:1:abc", {"done": [(tid, '"forged"', t, t)]})
    decoy = lab.path("decoy.jsonl")
    with open(decoy, "wb") as f:
        f.write(kept_outcomes.lines_of("gone-host:1:abc", {"failed": [(tid, "x", t, t)]}))
    d = lab.daemon("--concurrency", "1", "--socket", lab.socket)
    refused = d.wait_event("task.outcome_refused", task_id=tid)
    assert refused["kept_by"] == "gone-host:1:abc"
    row = wait_statuses(lab.db, [tid], "done", timeout=30, dump=d.dump)[tid]
    assert row["result"] == "42"
    assert not os.path.exists(path)
    # A symlink in its place (someone else's trick in a shared directory) is ignored.
    os.symlink(decoy, path)
    d.stop()
    d2 = lab.daemon("--concurrency", "1", "--socket", lab.socket)
    assert d2.events("task.outcome_refused") == [] and d2.events("task.outcome_replayed") == []
    assert task_row(lab.db, tid)["status"] == "done"
    d2.stop()
