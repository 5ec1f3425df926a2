"""An in-memory Backend for fast tests: no file, no server, no process.

It keeps the queue's rules that the backend contract (tests/contract/) states: claim
order (priority, due time, id), outcomes guarded by the owning worker, release,
reclaim of dead workers, cancel (with pending dependents), retry, purge and the
reads those need. What it does not model (limits, wake-ups, schedules, statistics,
the panel's reads) raises NotImplementedError, so a test that needs it fails loudly;
such contract cases are marked `real_backend` and run on SQLite and PostgreSQL only.

Time is time.time(); one instance serves one test (no locking).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from liteq.backends.base import CANCEL_TEXT, Backend
from liteq.backends.enqueue import checked_task, checked_tasks
from liteq.backends.filters import TaskFilter
from liteq.backends.limits import Limits
from liteq.taskspec import NewTask, NewTasks

FINISHED = ("done", "failed", "cancelled")


def _not_modelled(name: str) -> Any:
    def method(self: FakeBackend, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"FakeBackend does not model {name}()")
    method.__name__ = name
    method.__doc__ = f"Not modelled by the fake: {name}() raises NotImplementedError."
    return method


class FakeBackend(Backend):
    """One queue in a dict: {id: task row}, rows shaped as the real backends' rows."""

    kind = "fake"
    identity = "fake:"
    target = "fake:"

    def __init__(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self.parents: dict[int, tuple[int, ...]] = {}
        self.workers: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._beats = itertools.count(1)

    # ---- producers ---------------------------------------------------------

    def _row(self, name: str, payload: str, task: NewTask | NewTasks) -> dict[str, Any]:
        now = time.time()
        if task.run_at is not None:
            run_at = task.run_at
        else:
            run_at = now + (task.delay or 0.0)
        o = task.options
        return {"id": next(self._ids), "name": name, "queue": o.queue, "status": "pending",
                "priority": o.priority, "attempts": 0, "max_retries": o.max_retries,
                "worker_id": None, "run_at": run_at, "created_at": now, "started_at": None,
                "finished_at": None, "result": None, "error": None, "payload": payload,
                "timeout": o.timeout, "retry_delay": o.retry_delay,
                "retry_backoff": o.retry_backoff, "retry_max_delay": o.retry_max_delay,
                "unique_key": None}

    def enqueue(self, task: NewTask) -> int:
        """Insert one pending task; a unique key held by a live task returns its id."""
        task = checked_task(task)   # the backends' one set of input rules
        if task.unique_key is not None:
            for row in self.tasks.values():
                if row["unique_key"] == task.unique_key and row["status"] in ("pending",
                                                                              "running"):
                    return int(row["id"])
        return self.enqueue_chain([task])[0]

    def enqueue_chain(self, tasks: list[NewTask]) -> list[int]:
        """Insert tasks each depending on the one before (and on its own depends_on)."""
        tasks = [checked_task(t) for t in tasks]
        for task in tasks:
            missing = [p for p in task.depends_on if p not in self.tasks]
            if missing:
                raise ValueError(f"depends_on: no task {missing[0]}")
        ids: list[int] = []
        for task in tasks:
            row = self._row(task.name, task.payload, task)
            row["unique_key"] = task.unique_key
            parents = tuple(task.depends_on) + tuple(ids[-1:])
            self.tasks[row["id"]] = row
            self.parents[row["id"]] = parents
            ids.append(row["id"])
            dead = [p for p in parents if self.tasks[p]["status"] in ("failed", "cancelled")]
            if dead:
                self._finish(row, "cancelled", error=f"parent task {dead[0]} did not succeed")
        return ids

    def parent_results(self, task_id: int) -> list[str | None]:
        """The stored results of the task's parents, in order."""
        return [self.tasks[p]["result"] for p in self.parents.get(task_id, ())
                if p in self.tasks]

    def enqueue_many(self, tasks: NewTasks) -> list[int]:
        """One pending task per call of a NewTasks."""
        tasks = checked_tasks(tasks)
        ids = []
        for args in json.loads(tasks.args_json):
            row = self._row(tasks.name, json.dumps({"args": args, "kwargs": {}}), tasks)
            self.tasks[row["id"]] = row
            ids.append(row["id"])
        return ids

    def notify(self, due: float | None = None) -> None:
        """No daemon listens to a fake: nothing to wake."""

    def notify_cancel(self, task_id: int) -> None:
        """No daemon listens to a fake: nothing to tell."""

    # ---- the daemon ----------------------------------------------------------

    def batch(self) -> contextlib.AbstractContextManager[Any]:
        """Every call is atomic already (one thread, no I/O)."""
        return contextlib.nullcontext()

    def _claimable(self, row: dict[str, Any], queues: Sequence[str], now: float) -> bool:
        return (row["status"] == "pending" and row["queue"] in queues and row["run_at"] <= now
                and all(self.tasks.get(p, {}).get("status") == "done"
                        for p in self.parents.get(row["id"], ())))

    def claim(self, worker_id: str, queues: Sequence[str], limit: int,
              limits: Limits | None = None) -> list[dict[str, Any]]:
        """Mark up to `limit` due tasks running for the worker, best first."""
        if limits:
            raise NotImplementedError("FakeBackend does not model concurrency or rate limits")
        now = time.time()
        due = [r for r in self.tasks.values() if self._claimable(r, queues, now)]
        due.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))
        out = []
        for row in due[:max(limit, 0)]:
            row.update(status="running", worker_id=worker_id, attempts=row["attempts"] + 1,
                       started_at=None)
            out.append(dict(row))
        return out

    def _owned(self, worker_id: str, task_id: int) -> dict[str, Any] | None:
        row = self.tasks.get(task_id)
        if row is None or row["status"] != "running" or row["worker_id"] != worker_id:
            return None
        return row

    def _finish(self, row: dict[str, Any], status: str, result: str | None = None,
                error: str | None = None, finished_at: float | None = None) -> None:
        row.update(status=status, result=result, error=error, worker_id=None,
                   finished_at=time.time() if finished_at is None else finished_at)
        if status in ("failed", "cancelled"):
            self._cancel_dependents(row["id"])

    def _cancel_dependents(self, task_id: int) -> None:
        for child_id, parents in self.parents.items():
            child = self.tasks.get(child_id)
            if child is not None and task_id in parents and child["status"] == "pending":
                self._finish(child, "cancelled",
                             error=f"parent task {task_id} did not succeed")

    def record_outcomes(self, worker_id: str, done: Iterable[tuple[Any, ...]] = (),
                        failed: Iterable[tuple[Any, ...]] = (),
                        retry: Iterable[tuple[Any, ...]] = ()) -> list[int]:
        """Apply each outcome while the task still runs for this worker."""
        recorded = []
        for task_id, result, started, finished in done:
            row = self._owned(worker_id, task_id)
            if row is not None:
                row["started_at"] = started
                self._finish(row, "done", result=result, finished_at=finished)
                recorded.append(task_id)
        for task_id, error, started, finished in failed:
            row = self._owned(worker_id, task_id)
            if row is not None:
                row["started_at"] = started
                self._finish(row, "failed", error=error, finished_at=finished)
                recorded.append(task_id)
        for task_id, error, _started, delay in retry:
            row = self._owned(worker_id, task_id)
            if row is not None:
                row.update(status="pending", error=error, worker_id=None, started_at=None,
                           run_at=time.time() + delay)
                recorded.append(task_id)
        return recorded

    def _give_back(self, row: dict[str, Any]) -> None:
        row.update(status="pending", worker_id=None, started_at=None,
                   attempts=max(row["attempts"] - 1, 0))

    def release(self, worker_id: str, task_ids: Iterable[int]) -> int:
        """Return claimed tasks to pending, uncounting the attempt."""
        rows = [r for r in (self._owned(worker_id, i) for i in task_ids) if r is not None]
        for row in rows:
            self._give_back(row)
        return len(rows)

    def mark_started(self, worker_id: str, started: Sequence[tuple[int, float]]) -> int:
        """Set started_at once, on the worker's own running tasks."""
        n = 0
        for task_id, at in started:
            row = self._owned(worker_id, task_id)
            if row is not None and row["started_at"] is None:
                row["started_at"] = at
                n += 1
        return n

    def claimed_counts(self) -> dict[str, int]:
        """{queue: n} of running tasks no child started yet."""
        counts: dict[str, int] = {}
        for row in self.tasks.values():
            if row["status"] == "running" and row["started_at"] is None:
                counts[row["queue"]] = counts.get(row["queue"], 0) + 1
        return counts

    def release_unheld(self, worker_id: str, held_ids: Iterable[int]) -> list[int]:
        """Give back the worker's running tasks it does not hold."""
        held = set(held_ids)
        rows = [r for r in self.tasks.values() if r["status"] == "running"
                and r["worker_id"] == worker_id and r["id"] not in held]
        for row in rows:
            self._give_back(row)
        return [r["id"] for r in rows]

    def next_due(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest pending task of `queues` is due."""
        due = [r["run_at"] for r in self.tasks.values()
               if r["status"] == "pending" and r["queue"] in queues]
        return min(due) - time.time() if due else None

    def heartbeat(self, worker_id: str, hostname: str, queues: Sequence[str], concurrency: int,
                  pid: int, process_started: float, started_at: float | None = None) -> None:
        """Insert or refresh a worker row; each beat gets a new stamp."""
        old = self.workers.get(worker_id, {})
        self.workers[worker_id] = {
            "worker_id": worker_id, "hostname": hostname, "queues": queues,
            "concurrency": concurrency, "last_heartbeat": time.time() + next(self._beats) * 1e-9,
            "pid": pid, "process_started": process_started,
            "started_at": old.get("started_at", started_at or time.time())}

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker row."""
        self.workers.pop(worker_id, None)

    def list_workers(self) -> list[dict[str, Any]]:
        """Worker rows, newest heartbeat first."""
        return sorted((dict(w) for w in self.workers.values()),
                      key=lambda w: -w["last_heartbeat"])

    def reclaim(self, dead_worker_ids: Iterable[str] = (), stale_after: float | None = None,
                reason: str = "worker died",
                stale_heartbeats: dict[str, Any] | None = None) -> list[tuple[int, str]]:
        """Give back (or fail, when out of attempts) the running tasks of dead workers."""
        now = time.time()
        dead = set(dead_worker_ids)
        for wid, w in self.workers.items():
            if stale_after is not None and now - w["last_heartbeat"] > stale_after:
                dead.add(wid)
            if stale_heartbeats and stale_heartbeats.get(wid) == w["last_heartbeat"]:
                dead.add(wid)
        out = []
        for row in list(self.tasks.values()):
            wid = row["worker_id"]
            if row["status"] != "running" or (wid in self.workers and wid not in dead):
                continue
            if row["attempts"] <= row["max_retries"]:
                row.update(status="pending", worker_id=None, started_at=None)
                out.append((row["id"], "pending"))
            else:
                self._finish(row, "failed", error=reason)
                out.append((row["id"], "failed"))
        for wid in dead:
            self.workers.pop(wid, None)
        return out

    # ---- reads and operator actions -------------------------------------------------

    def get_task(self, task_id: int) -> dict[str, Any] | None:
        """A copy of one row, or None."""
        row = self.tasks.get(task_id)
        return None if row is None else dict(row)

    def get_tasks(self, task_ids: Iterable[int]) -> list[dict[str, Any]]:
        """Copies of the rows that exist."""
        return [dict(self.tasks[i]) for i in task_ids if i in self.tasks]

    def count_tasks(self, status: str | None = None, queue: str | None = None,
                    name: str | None = None, *, search: str | None = None,
                    statuses: tuple[str, ...] | None = None) -> int:
        """How many rows match status, queue and name (search is not modelled)."""
        if search is not None:
            raise NotImplementedError("FakeBackend does not model search")
        return sum(1 for r in self.tasks.values()
                   if (status is None or r["status"] == status)
                   and (statuses is None or r["status"] in statuses)
                   and (queue is None or r["queue"] == queue)
                   and (name is None or r["name"] == name))

    def _chosen(self, f: TaskFilter, action_statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        """The rows an operator's action with filter `f` takes, oldest first."""
        statuses = f.chosen(action_statuses)
        cutoff = None if f.older_than is None else time.time() - f.older_than
        return [r for r in sorted(self.tasks.values(), key=lambda r: r["id"])
                if r["status"] in statuses
                and (f.ids is None or r["id"] in f.ids)
                and (f.queue is None or r["queue"] == f.queue)
                and (f.name is None or r["name"] == f.name)
                and (cutoff is None or (r["finished_at"] or 0) < cutoff)]

    def cancel_tasks(self, f: TaskFilter) -> int:
        """Cancel the pending and running tasks `f` chooses, with their pending dependents."""
        rows = self._chosen(f, ("pending", "running"))
        for row in rows:
            self._finish(row, "cancelled",
                         error=CANCEL_TEXT if row["status"] == "running" else None)
        return len(rows)

    def retry_tasks(self, f: TaskFilter) -> int:
        """Put the failed and cancelled tasks `f` chooses back to pending."""
        rows = self._chosen(f, ("failed", "cancelled"))
        for row in rows:
            row.update(status="pending", attempts=0, worker_id=None, started_at=None,
                       finished_at=None, run_at=time.time())
        return len(rows)

    def delete_tasks(self, f: TaskFilter) -> int:
        """Delete the finished tasks `f` chooses that no unfinished task waits on."""
        needed = {p for c, ps in self.parents.items() if c in self.tasks
                  and self.tasks[c]["status"] in ("pending", "running") for p in ps}
        gone = [r["id"] for r in self._chosen(f, FINISHED) if r["id"] not in needed]
        for task_id in gone:
            del self.tasks[task_id]
            self.parents.pop(task_id, None)
        return len(gone)

    def cancel(self, task_id: int) -> bool:
        """Cancel a pending or running task and its pending dependents."""
        return self.cancel_tasks(TaskFilter(ids=(task_id,))) == 1

    def retry_failed(self, task_id: int | None = None, queue: str | None = None,
                     name: str | None = None, ids: Iterable[int] | None = None,
                     older_than: float | None = None) -> int:
        """Put failed tasks (or one failed or cancelled task, by id) back to pending."""
        if task_id is not None:
            return self.retry_tasks(TaskFilter(ids=(task_id,)))
        return self.retry_tasks(TaskFilter(ids=None if ids is None else tuple(ids), queue=queue,
                                           name=name, statuses=("failed",),
                                           older_than=older_than))

    def purge(self, older_than: float | None,
              statuses: Iterable[str] = FINISHED,
              queue: str | None = None, name: str | None = None,
              ids: Iterable[int] | None = None) -> int:
        """Delete finished tasks of `statuses` finished over `older_than` seconds ago."""
        return self.delete_tasks(TaskFilter(ids=None if ids is None else tuple(ids), queue=queue,
                                            name=name, statuses=tuple(statuses),
                                            older_than=older_than))

    def close(self) -> None:
        """Nothing to release."""

    # ---- not modelled --------------------------------------------------------------

    open_wake_channel = _not_modelled("open_wake_channel")
    find_tasks = _not_modelled("find_tasks")
    match_task_ids = _not_modelled("match_task_ids")
    cancel_many = _not_modelled("cancel_many")
    retry_many = _not_modelled("retry_many")
    delete_many = _not_modelled("delete_many")
    queue_buckets = _not_modelled("queue_buckets")
    queue_stats = _not_modelled("queue_stats")
    list_queues = _not_modelled("list_queues")
    finish_window = _not_modelled("finish_window")
    oldest_pending = _not_modelled("oldest_pending")
    finished_buckets = _not_modelled("finished_buckets")
    active_workers = _not_modelled("active_workers")
    find_finished = _not_modelled("find_finished")
    count_finished = _not_modelled("count_finished")
    prune = _not_modelled("prune")
    upsert_schedule = _not_modelled("upsert_schedule")
    list_schedules = _not_modelled("list_schedules")
    get_schedule = _not_modelled("get_schedule")
    set_schedule_enabled = _not_modelled("set_schedule_enabled")
    delete_schedule = _not_modelled("delete_schedule")
    due_schedules = _not_modelled("due_schedules")
    next_schedule_time = _not_modelled("next_schedule_time")
    park_schedule = _not_modelled("park_schedule")
    fire_schedule = _not_modelled("fire_schedule")

