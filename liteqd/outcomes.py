"""Outcomes waiting to be recorded: what each attempt became (done, a retry after its
back-off, failed) and the claimed tasks going back to pending, kept until the next
sync writes them, then logged and counted once the database has recorded them."""

from collections.abc import Callable, Iterable
from typing import Any

from structlog.typing import FilteringBoundLogger

from liteq import retry as retry_policy
from liteq.errors import DatabaseError

from .pool import ChildHandle, TaskRun

# kind -> rows: "done" and "failed" (id, text, started, finished), "retry" (id, text,
# started, delay), "release" task ids.
Held = dict[str, list[Any]]


def empty() -> Held:
    """No outcomes."""
    return {"done": [], "failed": [], "retry": [], "release": []}


class Outcomes:
    """The outcomes of one supervisor's tasks, from the child's answer to the database."""

    def __init__(self, log: FilteringBoundLogger) -> None:
        self.log = log
        self.held: Held = empty()
        self.reports: list[tuple[str, dict[str, Any]]] = []  # (event, fields) not yet recorded
        self.started: dict[int, TaskRun] = {}  # task id -> run started, start not yet written
        self.tasks_done = 0             # outcomes the database recorded ...
        self.tasks_failed = 0
        self.tasks_refused = 0          # ... and those it refused

    def log_started(self, child: ChildHandle, run: TaskRun) -> None:
        """Log that a child started a task (its start is written to the database with
        a later sync)."""
        self.started[run.id] = run
        self.log.info("task.started", task_id=run.id, name=run.name, queue=run.queue,
                      attempt=run.attempts, pid=child.pid)

    def record(self, run: TaskRun, ok: bool, text: str, started: float | None,
               finished: float | None, timed_out: bool, retry: object = None) -> None:
        """Queue the outcome of one attempt: done, a retry after its back-off, or failed.

        retry=False fails the task at once (an error no retry can fix); a number
        is a retry the task asked for (liteq.Retry) after that many seconds, while
        retries remain; otherwise the retry policy decides. The outcome is logged
        and counted once the database has recorded it (see report()).
        """
        self.started.pop(run.id, None)  # the outcome records the start itself
        duration_ms = round((finished - started) * 1000, 3) if started and finished else None
        fields: dict[str, Any] = dict(task_id=run.id, name=run.name, queue=run.queue,
                                      attempt=run.attempts, duration_ms=duration_ms)
        if ok:
            self.held["done"].append((run.id, text, started, finished))
            self.reports.append(("task.succeeded", fields))
            return
        error, _, details = text.partition("\n")
        fields.update(error=error, timed_out=timed_out)
        if details.strip():
            fields["traceback"] = details.strip("\n")
        if retry is not False and retry_policy.should_retry(run.attempts, run.max_retries):
            delay = retry if isinstance(retry, (int, float)) and retry is not True else \
                retry_policy.retry_delay(run.attempts, run.retry_delay, run.retry_backoff,
                                         run.retry_max_delay)
            self.held["retry"].append((run.id, text, started, delay))
            self.reports.append(("task.retrying", dict(fields, retry_in_s=round(delay, 3))))
        else:
            self.held["failed"].append((run.id, text, started, finished))
            self.reports.append(("task.failed", fields))

    def release(self, task_ids: Iterable[int]) -> None:
        """Queue claimed tasks that never started, to go back to pending."""
        for task_id in task_ids:
            self.started.pop(task_id, None)
            self.held["release"].append(task_id)

    def pending(self) -> bool:
        """True while outcomes wait to be recorded."""
        return any(self.held.values())

    def held_ids(self) -> set[int]:
        """The tasks whose outcome waits to be recorded."""
        held = {row[0] for kind in ("done", "failed", "retry") for row in self.held[kind]}
        held.update(self.held["release"])
        return held

    def report(self, recorded: Iterable[int],
               get_tasks: Callable[[list[int]], list[dict[str, Any]]]) -> None:
        """Log and count the outcomes the database recorded; the others were refused."""
        if not self.reports:
            return
        recorded = set(recorded)
        refused: list[tuple[str, dict[str, Any]]] = []
        for event, fields in self.reports:
            if fields["task_id"] not in recorded:
                refused.append((event, fields))
                continue
            if event == "task.succeeded":
                self.tasks_done += 1
                self.log.info(event, **fields)
            elif event == "task.retrying":
                self.log.warning(event, **fields)
            else:
                self.tasks_failed += 1
                self.log.error(event, **fields)
        self.reports = []
        if refused:
            self._report_refused(refused, get_tasks)

    def _report_refused(self, refused: list[tuple[str, dict[str, Any]]],
                        get_tasks: Callable[[list[int]], list[dict[str, Any]]]) -> None:
        # Rare (this daemon was frozen or cut off past stale-after): say what the task
        # became, so an operator sees why the outcome was not kept.
        try:
            now_rows = {r["id"]: r for r in get_tasks([f["task_id"] for _, f in refused])}
        except DatabaseError:
            now_rows = {}
        for event, fields in refused:
            self.tasks_refused += 1
            row = now_rows.get(fields["task_id"])
            if row is None:
                reason = "the task no longer exists"
            elif row["status"] == "running":
                reason = f"the task was reclaimed and now runs on {row['worker_id']}"
            else:
                reason = f"the task is no longer running for this daemon (now {row['status']})"
            self.log.warning("task.outcome_refused", outcome=event.split(".", 1)[1],
                             reason=reason, **fields)

