"""Task ids are never given twice: not after purge_tasks(), not after the daemon's
retention, and not after an older SQLite file is upgraded. An id an app kept (the
FastAPI route returns it) must never come to name another task.

Real SQLite files and the real PostgreSQL server (conftest's `db`), a real daemon
for retention (tests/support/daemon_helpers.py).
"""

import sqlite3

import liteq
from liteq import backends
from liteq.backends.sqlite import schema

from support.processes import wait_for
from support.task_table import count_tasks, wait_status


def _finished(task_ids):
    """Cancel pending tasks: they are finished (and purgeable) at once, with no daemon."""
    for task_id in task_ids:
        assert liteq.cancel_task(task_id)


def test_ids_are_never_reused_after_a_purge_empties_the_table(db, clean_registry):
    @liteq.task
    def noop(n):
        return n

    first = [noop.delay(n) for n in range(5)]
    _finished(first)
    assert liteq.purge_tasks(-60) == 5
    assert count_tasks(db) == 0
    again = noop.delay(5)
    assert again > max(first)
    # Also when only the newest tasks are gone (the table's top).
    _finished([again])
    assert liteq.purge_tasks(-60) == 1
    bulk = noop.map([6, 7, 8])          # one INSERT for the lot
    assert min(bulk) > again and len(set(bulk)) == 3
    _finished(bulk)
    assert liteq.purge_tasks(-60) == 3
    assert noop.delay(9) > max(bulk)


def test_ids_are_never_reused_after_retention_prunes_every_task(daemons, app):
    d = daemons.start("--keep-done", "0.5", "--concurrency", "1")
    first = app.add.delay(1, 2)
    wait_status(first, ("done",), daemons=daemons)
    # The daemon's retention deletes it after its heartbeat, once it is 0.5 s old.
    wait_for(lambda: backends.get_backend().get_task(first) is None, 30,
             "retention never pruned the done task")
    assert count_tasks(daemons.db) == 0
    second = app.add.delay(3, 4)
    assert second > first
    wait_status(second, ("done",), daemons=daemons)
    assert d.stop() == 0


def _version_3_file(path, n_tasks):
    """An SQLite file as LiteQ's schema version 3 left it, holding tasks 1..n_tasks."""
    raw = sqlite3.connect(path)
    try:
        schema._migrate_v0_to_v1(raw)
        schema._migrate_v1_to_v2(raw)
        schema._migrate_v2_to_v3(raw)
        raw.execute("PRAGMA user_version = 3")
        for _ in range(n_tasks):
            raw.execute("INSERT INTO tasks (name, payload, run_at, created_at) "
                        "VALUES ('noop', '{\"args\":[0],\"kwargs\":{}}', 0, 0)")
        raw.commit()
    finally:
        raw.close()


def test_an_upgraded_sqlite_file_keeps_counting_from_its_highest_id(db_path, clean_registry):
    _version_3_file(db_path, 7)

    @liteq.task
    def noop(n):
        return n

    _finished(range(1, 8))        # opens the file: the upgrade runs here
    assert liteq.purge_tasks(-60) == 7
    assert noop.delay(1) == 8
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        # The claim index and the others are back after the table was rebuilt.
        indexes = {r[0] for r in raw.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks'")}
        assert {"idx_tasks_claim", "idx_tasks_finished", "idx_tasks_unique_key",
                "idx_tasks_running_worker"} <= indexes
    finally:
        raw.close()


def test_the_upgrade_keeps_every_row_and_column(db_path, clean_registry):
    _version_3_file(db_path, 3)
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE tasks SET unique_key = 'k2', priority = 5 WHERE id = 2")
    raw.commit()
    before = raw.execute("SELECT * FROM tasks ORDER BY id").fetchall()
    raw.close()
    backends.get_backend(db_path).get_task(1)
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("SELECT * FROM tasks ORDER BY id").fetchall() == before
    finally:
        raw.close()
