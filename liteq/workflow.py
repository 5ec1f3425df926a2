"""Workflows of dependent tasks: signatures and chain() (Celery's `chain`).

    from liteq import chain
    ids = chain(fetch.s(url), parse.s(), store.s())

Each step depends on the one before it: it runs only once that one is done, and
is cancelled when it fails or is cancelled. A step reads the results of the steps
it depends on with current_task.parent_results().
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Signature:
    """A task with its arguments and apply_async() options, not enqueued yet
    (made by Task.s(*args, **kwargs))."""
    task: object
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def set(self, **options) -> "Signature":
        """A copy with apply_async() options (queue, priority, countdown, ...)."""
        return Signature(self.task, self.args, self.kwargs, {**self.options, **options})

    def new_task(self):
        """The NewTask that apply_async() would insert for this signature."""
        return self.task._new_task(self.args, self.kwargs, **self.options)


def chain(*signatures) -> list:
    """Enqueue the steps in one transaction, each depending on the one before it;
    returns their ids in order. Nothing is written if any step is refused."""
    from .backends import get_backend
    if not signatures:
        raise ValueError("chain() needs at least one step (a task's .s(...))")
    for step in signatures:
        if not isinstance(step, Signature):
            raise TypeError(f"chain() takes signatures such as task.s(1, 2), not {step!r}")
    tasks = [step.new_task() for step in signatures]
    unique = [t.name for t in tasks if t.unique_key is not None]
    if unique:
        raise ValueError(f"chain() steps cannot be unique tasks ({', '.join(unique)}): a "
                         f"waiting step would hold its key for as long as the chain runs")
    return get_backend().enqueue_chain(tasks)
