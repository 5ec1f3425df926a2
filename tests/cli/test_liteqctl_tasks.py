"""`liteqctl failed`, `retry` and `purge` against real databases (both backends), run as
real liteqctl processes; and liteqctl's --reply-timeout with the old --timeout.

No daemon is needed: the commands work on the database. Failed and done tasks are
made through the backend (claim, then record the outcome), and a task is made to
have finished long ago by moving its finished_at back in SQL, once per backend.
"""

import json
import os
import pty
import sqlite3
import subprocess
import time

import pytest

from liteq import backends
from liteq.taskspec import NewTask, TaskOptions

from support.daemon_helpers import LITEQCTL
from support.task_table import task_rows

DAY = 86400.0


def ctl(*args, stdin=subprocess.DEVNULL, timeout=60):
    """Run liteqctl (its LITEQ_DB is conftest's `db`)."""
    return subprocess.run([LITEQCTL, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=stdin)


def _put(store, name, queue="default", **options):
    return store.enqueue(NewTask(name, '{"args": [], "kwargs": {}}',
                                 TaskOptions.build(queue=queue, **options)))


def _finish(store, ids, kind):
    """Claim `ids` (every pending task must be among them) and record them `kind`."""
    queues = sorted({r["queue"] for r in store.get_tasks(ids)})
    claimed = [r["id"] for r in store.claim("w-test", queues, 1000)]
    assert sorted(claimed) == sorted(ids)
    t = time.time()
    entries = [(i, "null" if kind == "done" else
                f"Traceback (most recent call last):\nValueError: error of {i}", t, t)
               for i in ids]
    assert len(store.record_outcomes("w-test", **{kind: entries})) == len(ids)


def _age(db, task_id, seconds):
    """Move a finished task's finished_at `seconds` into the past (no backend call
    can: the finish time is the database's now)."""
    if backends.is_postgres(db):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            n = conn.execute("UPDATE tasks SET finished_at = finished_at - make_interval("
                             "secs => %s) WHERE id = %s", (seconds, task_id)).rowcount
    else:
        conn = sqlite3.connect(backends.sqlite_path(db), timeout=30)
        try:
            with conn:
                n = conn.execute("UPDATE tasks SET finished_at = finished_at - ? WHERE id = ?",
                                 (seconds, task_id)).rowcount
        finally:
            conn.close()
    assert n == 1


@pytest.fixture
def tasks(db, backend):
    """Failed: a1 (queue a, name x, finished 2 days ago), a2 (a, x), a3 (a, y), b1 (b, x);
    done: d1 (a, x, 2 days ago), d2 (a, x); cancelled: c1 (a, x)."""
    ids = {}
    for key, queue, name in (("a1", "a", "x"), ("a2", "a", "x"), ("a3", "a", "y"),
                             ("b1", "b", "x"), ("d1", "a", "x"), ("d2", "a", "x")):
        ids[key] = _put(backend, name, queue)
    _finish(backend, [ids[k] for k in ("a1", "a2", "a3", "b1")] +
            [ids["d1"], ids["d2"]], "failed")
    # d1 and d2 are done: retry them (pending), claim and record them done.
    backend.retry_failed(ids=[ids["d1"], ids["d2"]])
    _finish(backend, [ids["d1"], ids["d2"]], "done")
    ids["c1"] = _put(backend, "x", "a")
    assert backend.cancel(ids["c1"])
    _age(db, ids["a1"], 2 * DAY)
    _age(db, ids["d1"], 2 * DAY)
    return ids


def _statuses(db, ids):
    rows = task_rows(db, ids.values())
    return {k: rows[i]["status"] if i in rows else None for k, i in ids.items()}


# ---- failed -------------------------------------------------------------------------------

def test_failed_lists_failed_tasks_as_aligned_text_and_json(db, tasks):
    out = ctl("failed")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "QUEUE", "ATTEMPTS", "FINISHED", "ERROR"]
    # Latest finish first: a1 finished two days ago, so it comes last.
    assert [int(x.split()[0]) for x in lines[1:]][-1] == tasks["a1"]
    assert {int(x.split()[0]) for x in lines[1:]} == {tasks[k] for k in ("a1", "a2", "a3", "b1")}
    # Aligned: every row's NAME column starts where the header's does.
    col = lines[0].index("NAME")
    assert all(x[col - 2:col] == "  " and x[col] != " " for x in lines[1:])
    # The error column shows the exception line, not the traceback's first line.
    assert f"ValueError: error of {tasks['a2']}" in out.stdout and "Traceback" not in out.stdout

    rows = json.loads(ctl("failed", "--json").stdout)
    assert sorted(r["id"] for r in rows) == sorted(tasks[k] for k in ("a1", "a2", "a3", "b1"))
    assert all(r["status"] == "failed" and r["finished_at"] for r in rows)
    assert {"id", "name", "queue", "attempts", "error", "args", "kwargs"} <= set(rows[0])


def test_failed_filters_combine(db, tasks):
    def ids(*args):
        out = ctl("failed", "--json", *args)
        assert out.returncode == 0, out.stderr
        return sorted(r["id"] for r in json.loads(out.stdout))
    t = tasks
    assert ids("--queue", "a") == sorted([t["a1"], t["a2"], t["a3"]])
    assert ids("--queue", "a", "--name", "x") == sorted([t["a1"], t["a2"]])
    assert ids("--older-than", "1d") == [t["a1"]]
    assert ids("--older-than", "3d") == []
    assert ids(str(t["a2"]), str(t["b1"]), str(t["d2"])) == sorted([t["a2"], t["b1"]])
    assert len(ids("--limit", "1")) == 1
    text = ctl("failed", "--limit", "2").stdout
    assert "2 of 4 shown" in text
    assert ctl("failed", "--queue", "nope").stdout.strip() == "no failed tasks match"


def test_bad_filters_are_clear_errors(db, tasks):
    out = ctl("failed", "--older-than", "yesterday")
    assert out.returncode == 2 and "--older-than" in out.stderr and "7d" in out.stderr
    out = ctl("purge", "--status", "pending", "--older-than", "0")
    assert out.returncode == 2 and "done, failed or cancelled" in out.stderr
    out = ctl("failed", "--limit", "0")
    assert out.returncode == 1 and "--limit must be at least 1" in out.stderr


def test_commands_never_create_a_database(workdir):
    missing = os.path.join(workdir, "nothing-here.db")
    for args in (["failed"], ["retry", "--yes"], ["purge", "--older-than", "0", "--yes"]):
        out = ctl("--db", missing, *args)
        assert out.returncode == 1 and "there is no database" in out.stderr, out
    assert not os.path.exists(missing)


# ---- retry ------------------------------------------------------------------------------

def test_bulk_retry_asks_first_and_retries_what_the_filters_match(db, tasks):
    before = _statuses(db, tasks)
    out = ctl("retry", "--queue", "a")
    assert out.returncode == 1 and "--yes" in out.stderr and "stdin is not a terminal" in \
        out.stderr
    out = ctl("retry", "--queue", "a", "--dry-run")
    assert out.returncode == 0 and out.stdout.strip() == "would retry 3 failed tasks of queue a"
    assert _statuses(db, tasks) == before        # neither changed anything

    out = ctl("retry", "--queue", "a", "--older-than", "1d", "--yes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "retried 1 failed tasks of queue a, finished over 1d ago"
    rows = task_rows(db, [tasks["a1"]])
    assert rows[tasks["a1"]]["status"] == "pending" and rows[tasks["a1"]]["attempts"] == 0

    out = ctl("retry", "--name", "x", "--yes", "--json")
    assert json.loads(out.stdout) == {"matched": 2, "retried": 2, "dry_run": False,
                                      "scope": "failed tasks named x", "problems": []}
    st = _statuses(db, tasks)
    assert st["a2"] == st["b1"] == "pending" and st["a3"] == "failed"
    assert st["d1"] == st["d2"] == "done" and st["c1"] == "cancelled"


def test_retry_by_id_takes_failed_or_cancelled_and_names_the_others(db, tasks):
    t = tasks
    out = ctl("retry", str(t["a3"]), str(t["c1"]), str(t["d2"]), "999999")
    assert out.returncode == 1  # no --yes needed for named ids, but two were not retried
    assert out.stdout.strip().startswith("retried 2 failed/cancelled tasks with id")
    assert f"task {t['d2']} is done: only failed or cancelled tasks can be retried" in out.stderr
    assert "task 999999 is not there" in out.stderr
    st = _statuses(db, t)
    assert st["a3"] == st["c1"] == "pending" and st["d2"] == "done"
    out = ctl("retry", str(t["a2"]))
    assert out.returncode == 0 and out.stderr == ""


# ---- purge --------------------------------------------------------------------------------

def test_purge_needs_an_age_or_ids_and_asks_first(db, tasks):
    out = ctl("purge", "--yes")
    assert out.returncode == 1 and "--older-than" in out.stderr
    out = ctl("purge", "--older-than", "0")
    assert out.returncode == 1 and "--yes" in out.stderr
    assert None not in _statuses(db, tasks).values()
    out = ctl("purge", "--older-than", "1d", "--dry-run")
    assert out.stdout.strip() == ("would purge 2 done/failed/cancelled tasks finished over "
                                  "1d ago")


def test_purge_deletes_what_the_filters_match(db, tasks):
    out = ctl("purge", "--older-than", "1d", "--status", "done", "--yes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "purged 1 done tasks finished over 1d ago"
    st = _statuses(db, tasks)
    assert st["d1"] is None and st["a1"] == "failed" and st["d2"] == "done"

    out = ctl("purge", "--older-than", "0", "--status", "failed,cancelled", "--queue", "a",
              "--name", "x", "--yes", "--json")
    assert json.loads(out.stdout)["purged"] == 3   # a1, a2, c1
    st = _statuses(db, tasks)
    assert st["a1"] is st["a2"] is st["c1"] is None
    assert st["a3"] == st["b1"] == "failed" and st["d2"] == "done"

    out = ctl("purge", str(tasks["b1"]), str(tasks["a1"]), "--yes")
    assert out.returncode == 1 and f"task {tasks['a1']} is not there" in out.stderr
    assert _statuses(db, tasks)["b1"] is None


def test_purge_keeps_a_task_a_pending_task_depends_on(db, backend, tasks):
    parent = _put(backend, "p")
    _finish(backend, [parent], "done")
    other = _put(backend, "q")
    child = backend.enqueue(NewTask("c", '{"args": [], "kwargs": {}}',
                                    TaskOptions.build(), depends_on=[parent, other]))
    out = ctl("purge", str(parent), "--yes")
    assert out.returncode == 1
    assert "left as they are: a pending or running task depends on it" in out.stdout
    assert f"task {parent} was not purged" in out.stderr
    assert set(task_rows(db, [parent, child])) == {parent, child}
    assert backend.parent_results(child)[0] == "null"


def test_purge_asks_on_a_terminal(db, tasks):
    def answer(text):
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen([LITEQCTL, "purge", "--older-than", "1d"], stdin=slave,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            os.write(master, text.encode())
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(master)
            os.close(slave)
        return proc.returncode, out, err
    code, out, err = answer("n\n")
    assert code == 0 and "Delete 2 done/failed/cancelled tasks finished over 1d ago? [y/N]" \
        in err and out.strip() == "nothing deleted"
    assert _statuses(db, tasks)["a1"] == "failed"
    code, out, err = answer("y\n")
    assert code == 0 and out.strip().startswith("purged 2 ")
    st = _statuses(db, tasks)
    assert st["a1"] is None and st["d1"] is None and st["a2"] == "failed"


# ---- --reply-timeout ------------------------------------------------------------------------

def test_reply_timeout_and_the_deprecated_timeout(db, workdir):
    sock = os.path.join(workdir, "nobody.sock")
    out = ctl("--socket", sock, "--reply-timeout", "2", "ping")
    assert out.returncode == 3 and "deprecated" not in out.stderr
    out = ctl("--socket", sock, "--timeout", "2", "ping")
    assert out.returncode == 3
    assert "--timeout is deprecated here" in out.stderr and "--reply-timeout" in out.stderr
    out = ctl("--reply-timeout", "x", "ping")
    assert out.returncode == 2 and "--reply-timeout" in out.stderr
    # liteqd's --timeout (liteq 0.2's `liteq worker --timeout 60`) is the task time limit.
    from liteqd import config
    cfg = config.resolve(config.build_parser().parse_args(["--app", "t.py", "--timeout", "60"]),
                         environ={})
    assert cfg.timeout == 60.0
