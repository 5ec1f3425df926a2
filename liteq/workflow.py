"""Workflows of dependent tasks: signatures and chain() (Celery's `chain`).

    from liteq import chain
    handles = chain(fetch.s(url), parse.s(), store.s())

Each step depends on the one before it: it runs only once that one is done, and
is cancelled when it fails or is cancelled. A step reads the results of the steps
it depends on with current_task.parent_results().
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .handle import TaskHandle, handles

if TYPE_CHECKING:
    from .core import Task
    from .taskspec import NewTask

R = TypeVar("R")


@dataclass(frozen=True)
class Signature(Generic[R]):
    """A task with its arguments and apply_async() options, not enqueued yet
    (made by Task.s(*args, **kwargs), which type checkers check against the function)."""
    task: Task[..., R]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict[str, Any])
    options: dict[str, Any] = field(default_factory=dict[str, Any])

    def set(self, **options: Any) -> Signature[R]:
        """A copy with apply_async() options (queue, priority, countdown, ...)."""
        return Signature(self.task, self.args, self.kwargs, {**self.options, **options})

    def new_task(self) -> NewTask:
        """The NewTask that apply_async() would insert for this signature."""
        return self.task._new_task(self.args, self.kwargs,  # pyright: ignore[reportPrivateUsage]
                                   **self.options)

    def delay(self) -> TaskHandle[R]:
        """Enqueue this call with its options; its TaskHandle."""
        return self.apply_async()

    def apply_async(self, **options: Any) -> TaskHandle[R]:
        """Enqueue this call with its options and these (queue, priority, eta,
        countdown, timeout, max_retries, unique_key, depends_on); its TaskHandle.
        The arguments were checked by the type checker at .s(...)."""
        return self.task.apply_async(self.args, self.kwargs, **{**self.options, **options})


def chain(*signatures: Signature[Any]) -> list[TaskHandle[Any]]:
    """Enqueue the steps in one transaction, each depending on the one before it;
    returns their handles (ints: the ids) in order. Nothing is written if any step
    is refused."""
    from .backends import get_backend
    if not signatures:
        raise ValueError("chain() needs at least one step (a task's .s(...))")
    for step in signatures:
        if not isinstance(step, Signature):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"chain() takes signatures such as task.s(1, 2), not {step!r}")
    tasks = [step.new_task() for step in signatures]
    unique = [t.name for t in tasks if t.unique_key is not None]
    if unique:
        raise ValueError(f"chain() steps cannot be unique tasks ({', '.join(unique)}): a "
                         f"waiting step would hold its key for as long as the chain runs")
    return handles(get_backend().enqueue_chain(tasks))
