"""The task table, read and written from the test process on either backend: rows,
statuses and bounded waits for them, and the few writes no backend operation makes."""

import contextlib
import sqlite3
from collections import Counter

from liteq import backends

from .processes import wait_for


# ---- the task table, read from the test process --------------------------------------------

def status(task_id):
    """get_task_status with a clear failure for an unknown id."""
    from liteq import get_task_status
    st = get_task_status(task_id)
    assert st is not None, f"no task {task_id}"
    return st


def wait_status(task_id, statuses=("done", "failed", "cancelled"), timeout=15.0, daemons=None):
    """Wait until the task's status is one of `statuses`; returns the status dict."""
    if isinstance(statuses, str):
        statuses = (statuses,)
    last = {}

    def check():
        last["st"] = status(task_id)
        return last["st"] if last["st"]["status"] in statuses else None
    return wait_for(check, timeout,
                    lambda: f"task {task_id} not {statuses} within {timeout} s: "
                            f"{last.get('st')}\n" + (daemons.dump() if daemons else ""))


def _wait_rows(fetch, ids, statuses, timeout, dump):
    """Wait until fetch() gives a row for each of `ids`, each with one of `statuses`."""
    statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    last = {}

    def check():
        rows = last["rows"] = fetch()
        if len(rows) == len(ids) and all(r["status"] in statuses for r in rows.values()):
            return rows
        return None

    def failure():
        rows = last["rows"]
        counts = Counter(r["status"] for r in rows.values())
        return (f"{len(ids)} tasks not all {statuses} within {timeout} s: {dict(counts)}, "
                f"{len(ids) - len(rows)} missing\n" + (dump() if dump else ""))
    return wait_for(check, timeout, failure, interval=0.05)


def wait_all(task_ids, statuses=("done", "failed", "cancelled"), timeout=30.0, daemons=None):
    """Wait until every task has one of `statuses` (read with this thread's cached
    backend); returns {id: row}."""
    store = backends.get_backend()
    ids = list(task_ids)
    return _wait_rows(lambda: {r["id"]: r for r in store.get_tasks(ids)}, ids, statuses,
                      timeout, daemons.dump if daemons else None)


@contextlib.contextmanager
def fresh_backend(db):
    """A backend of its own on `db` (a path or URL), closed afterwards: what it reads is
    what another process would see, never the test's cached connection."""
    backend = backends.open_backend(db)
    try:
        yield backend
    finally:
        backend.close()


def all_tasks(db) -> list:
    """Every task row, oldest first (a fresh backend)."""
    with fresh_backend(db) as backend:
        limit = backend.count_tasks() + 1000
        while True:  # a short page is all of them, even with producers still writing
            rows = backend.find_tasks(limit=limit)
            if len(rows) < limit:
                return sorted(rows, key=lambda r: r["id"])
            limit *= 2


def task_rows(db, ids) -> dict:
    """The rows of tasks `ids`, {id: row} (a fresh backend); missing ids are left out."""
    with fresh_backend(db) as backend:
        return {r["id"]: r for r in backend.get_tasks(list(ids))}


def worker_rows(db) -> list:
    """Every worker row (a fresh backend)."""
    with fresh_backend(db) as backend:
        return backend.list_workers()


def task_row(db, task_id):
    """One task's row (a fresh backend), or None."""
    with fresh_backend(db) as backend:
        return backend.get_task(task_id)


def count_tasks(db) -> int:
    """How many tasks the database holds (a fresh backend)."""
    with fresh_backend(db) as backend:
        return backend.count_tasks()


def status_counts(db, ids=None) -> dict:
    """{status: count} over all tasks, or over `ids` (a fresh backend)."""
    if ids is None:
        with fresh_backend(db) as backend:
            counts = Counter()
            for s in backend.queue_stats():
                counts[s["status"]] += s["count"]
            return {k: v for k, v in counts.items() if v}
    return dict(Counter(r["status"] for r in task_rows(db, ids).values()))


def wait_statuses(db, ids, statuses=("done", "failed", "cancelled"), timeout=30.0, dump=None):
    """Wait until every task in `ids` has one of `statuses`, read on fresh backends
    (never the test's cached one); returns {id: row}. `dump`: a callable whose text
    is shown on failure."""
    ids = list(ids)
    return _wait_rows(lambda: task_rows(db, ids), ids, statuses, timeout, dump)


def iso_seconds(text) -> float:
    """Epoch seconds of an ISO-8601 time from get_task_status."""
    from datetime import datetime
    return datetime.fromisoformat(text).timestamp()


# ---- writing rows directly ------------------------------------------------------------------

def age_heartbeat(db, worker_id, seconds):
    """Make worker `worker_id`'s last heartbeat `seconds` older than it is.

    No backend operation can: a heartbeat is always "now" by the database's clock, and
    a test cannot wait minutes for a worker to go stale (get_active_workers looks 15 s
    back). This is the one place tests write SQL, once per backend: SQLite through
    sqlite3, PostgreSQL through psycopg (its column may be epoch seconds or a timestamp).
    """
    if backends.is_postgres(db):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            kind = conn.execute(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = 'workers' AND column_name = "
                "'last_heartbeat'").fetchone()[0]
            shift = "make_interval(secs => %s)" if "timestamp" in kind else "%s"
            changed = conn.execute(f"UPDATE workers SET last_heartbeat = last_heartbeat - "
                                   f"{shift} WHERE worker_id = %s",
                                   (seconds, worker_id)).rowcount
    else:
        conn = sqlite3.connect(backends.sqlite_path(db), timeout=30)
        try:
            with conn:
                changed = conn.execute("UPDATE workers SET last_heartbeat = last_heartbeat - ? "
                                       "WHERE worker_id = ?", (seconds, worker_id)).rowcount
        finally:
            conn.close()
    assert changed == 1, f"no worker row {worker_id!r} to age"


def put_task(backend, name, payload, run_at=None, delay=None, **options) -> int:
    """Enqueue a raw task row through `backend` (a name no app may register, a payload that
    is not JSON, ...): what .delay() would insert, with any TaskOptions field set."""
    from liteq.taskspec import NewTask, TaskOptions
    return backend.enqueue(NewTask(name, payload, TaskOptions.build(**options), run_at=run_at,
                                   delay=delay))


def put_tasks(backend, name, args_json, count, **options) -> list:
    """Enqueue `count` calls of `name` in one transaction (args_json: a JSON array with each
    call's positional arguments)."""
    from liteq.taskspec import NewTasks, TaskOptions
    return backend.enqueue_many(NewTasks(name, args_json, count, TaskOptions.build(**options)))
