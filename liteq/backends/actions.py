"""The operators' actions, once for every backend: cancel, retry and delete the tasks
a TaskFilter chooses.

One operation per action: the panel's bulk actions, liteqctl's retry and purge,
liteq 0.2's cancel_task / retry_task / purge_tasks and the backend's older calls
(cancel, cancel_many, retry_failed, retry_many, delete_many, purge) all come here,
so every backend checks the same values and changes the same rows. A backend
supplies its Dialect and three statements (_cancel_where, _retry_where,
_delete_where), each given the WHERE conditions built here.
"""

from __future__ import annotations

import abc

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from ..taskspec import check_number
from .base import CANCEL_TEXT
from .filters import (CANCELLABLE, FINISHED, PRUNABLE, RETRYABLE, Dialect, TaskFilter,
                      check_statuses, filter_where, key_is_free)
from .stats import Tally

# (task_id, attempt, error, finished_at): an attempt's error to keep (finished_at None:
# the database's clock).
ErrorRow = tuple[int, int, str, "float | None"]


def cancel_outcomes(rows: Iterable[Mapping[str, Any]],
                    at: float | None) -> tuple[Tally, list[ErrorRow]]:
    """What a cancel adds to the statistics and to the attempts' errors, from the rows
    it cancelled (id, queue, name, attempts and the error they now hold): a running
    attempt ends there, and its error is the cancel."""
    tally = Tally()
    errors: list[ErrorRow] = []
    for r in rows:
        tally.outcome(r["queue"], r["name"], "cancelled")
        if r["error"] == CANCEL_TEXT:
            errors.append((int(r["id"]), int(r["attempts"]), CANCEL_TEXT, at))
    return tally, errors


class OperatorActions(abc.ABC):
    """Mixin of the backends: the operators' actions over a TaskFilter, and the older
    calls that are one case of them."""

    #: the backend's differences in a filter's SQL
    dialect: ClassVar[Dialect]

    # ---- what each backend supplies (its SQL) ----------------------------------------

    @abc.abstractmethod
    def _cancel_where(self, where: str, params: Sequence[object]) -> int:
        """Cancel the tasks `where` chooses, count them and keep their errors, cancel
        their pending dependents, tell the daemons running them; returns how many."""

    @abc.abstractmethod
    def _retry_where(self, where: str, params: Sequence[object]) -> int:
        """Put the tasks `where` chooses back to pending, due now, attempts reset."""

    @abc.abstractmethod
    def _delete_where(self, where: str, params: Sequence[object]) -> int:
        """Delete the tasks `where` chooses, with their edges and their errors."""

    # ---- the three actions -------------------------------------------------------------

    def cancel_tasks(self, f: TaskFilter) -> int:
        """Cancel the pending and running tasks `f` chooses, and (transitively) the
        pending tasks that depend on them; returns how many `f` chose that were
        cancelled. A running one's daemon is told at once to stop it."""
        statuses = f.chosen(CANCELLABLE)
        if not statuses or f.ids == ():
            return 0
        return self._cancel_where(*filter_where(self.dialect, f, statuses))

    def retry_tasks(self, f: TaskFilter) -> int:
        """Put the failed and cancelled tasks `f` chooses back to pending, due now, with
        their attempts reset; returns how many. A unique task whose key a pending or
        running task holds is left as it is, and of several chosen tasks with one key
        the newest is retried."""
        statuses = f.chosen(RETRYABLE)
        if not statuses or f.ids == ():
            return 0
        where, params = filter_where(self.dialect, f, statuses)
        guard, more = key_is_free(self.dialect, f, statuses)
        return self._retry_where(f"{where} AND {guard}", [*params, *more])

    def delete_tasks(self, f: TaskFilter) -> int:
        """Delete the finished (done, failed, cancelled) tasks `f` chooses; a task that a
        pending or running task depends on is kept (the child waits for it, or reads
        its result). Returns how many were deleted."""
        statuses = f.chosen(FINISHED)
        if not statuses or f.ids == ():
            return 0
        where, params = filter_where(self.dialect, f, statuses)
        return self._delete_where(f"{where} AND {PRUNABLE}", params)

    # ---- the same actions as liteq 0.2 and the panel call them --------------------------

    def cancel(self, task_id: int) -> bool:
        """Cancel a pending or running task, and (transitively) the pending tasks that
        depend on it; False when it is neither."""
        return self.cancel_tasks(TaskFilter(ids=(task_id,))) == 1

    def cancel_many(self, task_ids: Iterable[int]) -> int:
        """cancel() for several tasks in one transaction; returns how many it cancelled."""
        return self.cancel_tasks(TaskFilter(ids=tuple(task_ids)))

    def retry_failed(self, task_id: int | None = None, queue: str | None = None,
                     name: str | None = None, ids: Iterable[int] | None = None,
                     older_than: float | None = None) -> int:
        """Put failed tasks (or one failed or cancelled task, by id) back to pending,
        attempts reset; returns how many. Without task_id: every failed task matching
        queue, name and older_than, and with ids, the failed or cancelled tasks among
        those ids."""
        if task_id is not None:
            return self.retry_tasks(TaskFilter(ids=(task_id,)))
        return self.retry_tasks(TaskFilter(
            ids=None if ids is None else tuple(ids), queue=queue, name=name,
            statuses=RETRYABLE if ids is not None else ("failed",), older_than=older_than))

    def retry_many(self, task_ids: Iterable[int]) -> int:
        """Put these failed or cancelled tasks back to pending; returns how many."""
        return self.retry_tasks(TaskFilter(ids=tuple(task_ids)))

    def delete_many(self, task_ids: Iterable[int]) -> int:
        """Delete these tasks when finished and no pending or running task depends on
        them; returns how many."""
        return self.delete_tasks(TaskFilter(ids=tuple(task_ids)))

    def purge(self, older_than: float | None,
              statuses: Iterable[str] = FINISHED, queue: str | None = None,
              name: str | None = None, ids: Iterable[int] | None = None) -> int:
        """Delete finished tasks of `statuses` that finished over `older_than` seconds
        ago (None: any age) and match the optional queue, name and ids; returns how
        many. A task that a pending or running task depends on is kept."""
        check_number("older_than", 0.0 if older_than is None else older_than,
                     minimum=-float("inf"), maximum=float("inf"))
        return self.delete_tasks(TaskFilter(
            ids=None if ids is None else tuple(ids), queue=queue, name=name,
            statuses=check_statuses(statuses), older_than=older_than))
