"""Task hooks: callbacks the worker child runs around each task, for example to
report errors to Sentry.

    import liteq

    @liteq.on_task_failure
    def report(ctx, exc):
        sentry_sdk.capture_exception(exc)

on_task_start(ctx), on_task_success(ctx, result), on_task_retry(ctx, exc) and
on_task_failure(ctx, exc) register at app import; ctx is the task's
liteq.context.TaskContext. A hook that raises is logged and never changes the
task's outcome. Registering the same function again (an app re-imported on
reload) replaces it rather than adding a second call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

HOOK_KINDS = ("start", "success", "retry", "failure")

F = TypeVar("F", bound=Callable[..., Any])

# kind -> {(module, qualname): callable}, in registration order
_hooks: dict[str, dict[tuple[str | None, str], Callable[..., Any]]] = {
    kind: {} for kind in HOOK_KINDS}


def _register(kind: str) -> Callable[[F], F]:
    def register(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"on_task_{kind} needs a function, got {fn!r}")
        key = (getattr(fn, "__module__", None), getattr(fn, "__qualname__", repr(fn)))
        _hooks[kind][key] = fn
        return fn
    register.__name__ = f"on_task_{kind}"
    register.__doc__ = f"Register fn to run in the worker child on task {kind}; returns fn."
    return register


on_task_start = _register("start")
on_task_success = _register("success")
on_task_retry = _register("retry")
on_task_failure = _register("failure")


def hooks(kind: str) -> list[Callable[..., Any]]:
    """The callables registered for `kind` ('start', 'success', 'retry', 'failure')."""
    return list(_hooks[kind].values())


def any_registered() -> bool:
    """True when some hook is registered (the worker skips them all otherwise)."""
    return any(_hooks.values())


def snapshot() -> dict[str, dict[tuple[str | None, str], Callable[..., Any]]]:
    """A copy of every registration (restore() puts it back)."""
    return {kind: dict(entries) for kind, entries in _hooks.items()}


def restore(saved: dict[str, dict[tuple[str | None, str], Callable[..., Any]]]) -> None:
    """Put back the registrations a snapshot() took."""
    for kind in HOOK_KINDS:
        _hooks[kind] = dict(saved.get(kind, {}))
