"""Running one task inside a worker child: its arguments, its time limit (a signal
timer for plain functions, a cancelled asyncio task for coroutines), and its
outcome as result JSON or error text.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import signal
import time
import traceback
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, NamedTuple, NoReturn, cast

from liteq import context, hooks
from liteq import retry as retry_policy
from liteq.core import TASK_REGISTRY, Task
from liteq.errors import Retry, TaskCancelled, TaskTimeout
from liteq.serialization import decode_payload, encode_result

from . import logs
from .protocol import TaskMessage

#: (task, args, kwargs, its liteq.current_task) of a task ready to be called.
Prepared = tuple[Task[..., Any], list[Any], dict[str, Any], context.TaskContext]
#: (outcome, the exception it raised or None, its result) of one call of a task.
Attempt = tuple["Outcome", BaseException | None, Any]


class Outcome(NamedTuple):
    """What became of one attempt. retry: None (the policy decides), False (an error
    no retry can fix), or seconds (a retry the task asked for with liteq.Retry)."""
    ok: bool
    text: str
    timed_out: bool = False
    retry: object = None


def _not_retried(text: str, why: str) -> Outcome:
    # The note goes on the first line, which logs and lists show.
    first, sep, rest = text.partition("\n")
    return Outcome(False, f"{first}; not retried: {why}{sep}{rest}", retry=False)


_alarm_limit = 0.0   # the time limit of the sync task running now, for the message


def _on_alarm(signum: int, frame: FrameType | None) -> NoReturn:
    raise TaskTimeout(f"timed out after {_alarm_limit:g} s")


def install_alarm_handler() -> None:
    """Route SIGALRM (the sync tasks' time limit) to TaskTimeout in this process."""
    signal.signal(signal.SIGALRM, _on_alarm)


def _format_error(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}\n\n{tb}"


class Executor:
    """Runs one task at a time, with a soft time limit and a persistent event loop."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.in_task = False        # the task's own code is running (signals may raise)
        self.async_task: asyncio.Task[Any] | None = None  # a coroutine task, while it runs
        self.cancelling = False     # cancel_running() was called for the current task

    def cancel_running(self) -> None:
        """Stop the task running now with TaskCancelled (from the cancel signal's
        handler): raised into a plain function, or the coroutine's task cancelled."""
        if not self.in_task or self.cancelling:
            return
        self.cancelling = True
        if self.async_task is not None and self.loop is not None:
            # From a signal handler while the loop may sit in select(): the thread-safe
            # call writes to the loop's self-pipe, which wakes it.
            self.loop.call_soon_threadsafe(self.async_task.cancel)
            return
        raise TaskCancelled("the task was cancelled while it was running")

    def _run_async(self, fn: Callable[..., Coroutine[Any, Any, Any]], args: list[Any],
                   kwargs: dict[str, Any], timeout: float | None) -> Any:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
        task = self.async_task = loop.create_task(fn(*args, **kwargs))
        timer = None
        if timeout:
            timer = loop.call_later(timeout, task.cancel)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            # Cancelled by cancel_running(), or else by our own timer.
            if self.cancelling:
                raise TaskCancelled("the task was cancelled while it was running") from None
            raise TaskTimeout(f"timed out after {timeout:g} s") from None
        finally:
            self.async_task = None
            if timer is not None:
                timer.cancel()

    def _run_sync(self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any],
                  timeout: float | None) -> Any:
        global _alarm_limit
        if not timeout:
            return fn(*args, **kwargs)
        _alarm_limit = timeout
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def run(self, msg: TaskMessage, worker: str) -> Outcome:
        """Run one task (a protocol.TaskMessage) as `worker` ("host:pid"); the Outcome's
        text is the result JSON or the error.

        Errors that no retry can fix (an unknown task, undecodable arguments,
        arguments that do not fit the function, a result JSON cannot hold, an
        exception the task's retry_on/no_retry_on rule out) are marked retry=False,
        and their text says so. The task runs with liteq.current_task set, between
        the app's hooks (liteq.hooks).
        """
        prepared = prepare(msg, worker)
        if isinstance(prepared, Outcome):
            return prepared
        task, args, kwargs, ctx = prepared
        token = context.enter(ctx)
        try:
            if not hooks.any_registered():
                return self._attempt(task, args, kwargs, msg.timeout)[0]
            _call_hooks("start", ctx)
            outcome, exc, result = self._attempt(task, args, kwargs, msg.timeout)
            after_hooks(ctx, msg, outcome, exc, result)
            return outcome
        finally:
            context.leave(token)

    def _attempt(self, task: Task[..., Any], args: list[Any], kwargs: dict[str, Any],
                 timeout: float | None) -> Attempt:
        """(Outcome, the exception or None, the result) of calling the task once."""
        self.cancelling = False
        try:
            self.in_task = True
            try:
                if task.is_async:
                    result = self._run_async(task.fn, args, kwargs, timeout)
                else:
                    result = self._run_sync(task.fn, args, kwargs, timeout)
            finally:
                self.in_task = False
        except BaseException as exc:  # noqa: B902 - a task's SystemExit is its failure too
            if isinstance(exc, KeyboardInterrupt):
                raise
            return classify(task, exc, args, kwargs), exc, None
        return succeeded(result)


def prepare(msg: TaskMessage, worker: str) -> Prepared | Outcome:
    """(task, args, kwargs, TaskContext) for a task message, or the Outcome of an error
    found before the call (an unknown task, arguments that cannot be decoded)."""
    task = TASK_REGISTRY.get(msg.name)
    if task is None:
        known = ", ".join(sorted(TASK_REGISTRY)) or "none"
        return _not_retried(f"UnknownTask: no task named {msg.name!r} is registered in "
                            f"this app (registered: {known})",
                            "the app does not know this task")
    try:
        args, kwargs = decode_payload(msg.payload)
    except ValueError as exc:
        return _not_retried(f"BadPayload: {exc}", "the stored arguments cannot be decoded")
    # The supervisor always sends enqueued_at (the row's created_at); None only in a
    # message made by hand, which is passed on as it is.
    enqueued_at = cast(float, msg.enqueued_at)
    ctx = context.TaskContext(
        msg.id, msg.name, msg.queue, msg.attempt, msg.max_retries, enqueued_at,
        time.time() + msg.timeout if msg.timeout else None, worker)
    return task, args, kwargs, ctx


def succeeded(result: Any) -> Attempt:
    """(Outcome, None, result) of a call that returned `result`."""
    try:
        return Outcome(True, encode_result(result)), None, result
    except TypeError as exc:
        return _not_retried(f"BadResult: {exc}", "the function's result cannot be "
                                                 "stored as JSON"), exc, None


def classify(task: Task[..., Any], exc: BaseException, args: list[Any],
             kwargs: dict[str, Any]) -> Outcome:
    """The Outcome of an attempt that raised `exc`."""
    if isinstance(exc, TaskCancelled):
        return _not_retried(f"TaskCancelled: {exc}", "it was cancelled")
    if isinstance(exc, TaskTimeout):
        return Outcome(False, _format_error(exc), timed_out=True)
    if isinstance(exc, Retry):
        return Outcome(False, f"Retry: {exc.reason}",
                       retry=exc.delay if exc.delay is not None else None)
    if isinstance(exc, TypeError):
        mismatch = _signature_mismatch(task.fn, args, kwargs)
        if mismatch:
            return _not_retried(mismatch, "the arguments do not fit the function")
    return _filtered(task, exc)


def after_hooks(ctx: context.TaskContext, msg: TaskMessage, outcome: Outcome,
                exc: BaseException | None, result: Any) -> None:
    """Run the success, retry or failure hooks for an attempt's outcome."""
    if outcome.ok:
        _call_hooks("success", ctx, result)
    elif exc is not None:
        retried = outcome.retry is not False and retry_policy.should_retry(
            msg.attempt, msg.max_retries)
        _call_hooks("retry" if retried else "failure", ctx, exc)


def _filtered(task: Task[..., Any], exc: BaseException) -> Outcome:
    """The Outcome of an exception under the task's retry_on / no_retry_on rules."""
    text = _format_error(exc)
    name = type(exc).__name__
    if task.no_retry_on and isinstance(exc, task.no_retry_on):
        return _not_retried(text, f"{name} is in no_retry_on "
                                                f"({_names(task.no_retry_on)})")
    if task.retry_on is not None and not isinstance(exc, task.retry_on):
        return _not_retried(text, f"{name} is not in retry_on "
                                                f"({_names(task.retry_on)})")
    return Outcome(False, text)


def _names(classes: tuple[type[BaseException], ...]) -> str:
    return ", ".join(c.__name__ for c in classes)


def _call_hooks(kind: str, ctx: context.TaskContext, *extra: object) -> None:
    """Run the app's hooks of this kind; one that raises is logged, never fatal."""
    for hook in hooks.hooks(kind):
        try:
            hook(ctx, *extra)
        except Exception as exc:  # a hook must never change the task's outcome
            logs.get_logger().error("hook.failed", hook=getattr(hook, "__qualname__", repr(hook)),
                                    kind=kind, task_id=ctx.id, name=ctx.name,
                                    error=f"{type(exc).__name__}: {exc}")
            logs.write_now()  # a child has no loop that flushes the log


def _signature_mismatch(fn: Callable[..., Any], args: list[Any],
                        kwargs: dict[str, Any]) -> str | None:
    # Only consulted after a TypeError, so the hot path pays nothing for it.
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        return (f"ArgumentMismatch: the stored arguments no longer match "
                f"{getattr(fn, '__name__', fn)}{sig}: {exc}")
    return None


class StopReason(enum.Enum):
    """Why the child cancelled a coroutine task."""
    TIMEOUT = "timeout"
    CANCEL = "cancel"


class CoroutineStop:
    """Why the child cancelled one coroutine task, so that its CancelledError becomes
    the right outcome (run_coroutine)."""

    __slots__ = ("reason", "limit")

    def __init__(self, limit: float | None) -> None:
        self.reason: StopReason | None = None
        self.limit = limit

    def error(self) -> BaseException | None:
        """TaskTimeout or TaskCancelled for a cancel the child made; None for any other."""
        if self.reason is StopReason.TIMEOUT:
            return TaskTimeout(f"timed out after {self.limit:g} s")
        if self.reason is StopReason.CANCEL:
            return TaskCancelled("the task was cancelled while it was running")
        return None


async def run_coroutine(msg: TaskMessage, worker: str, stop: CoroutineStop) -> Outcome:
    """Run one coroutine task as an asyncio task among others on the child's loop (with
    --async-concurrency above 1): its own liteq.current_task (each asyncio task has its
    own copy of the context), its own hooks, its own outcome. The child cancels it on
    its time limit or on a cancel, setting `stop.reason` first."""
    prepared = prepare(msg, worker)
    if isinstance(prepared, Outcome):
        return prepared
    task, args, kwargs, ctx = prepared
    context.enter(ctx)  # this asyncio task's context only: no leave() needed
    hooked = hooks.any_registered()
    if hooked:
        _call_hooks("start", ctx)
    exc: BaseException | None
    try:
        result = await task.fn(*args, **kwargs)
    except asyncio.CancelledError:
        exc = stop.error()
        if exc is None:
            raise  # not ours (the loop is being torn down)
        outcome, result = classify(task, exc, args, kwargs), None
    except BaseException as error:  # noqa: B902 - a task's SystemExit is its failure too
        if isinstance(error, KeyboardInterrupt):
            raise
        exc, outcome, result = error, classify(task, error, args, kwargs), None
    else:
        outcome, exc, result = succeeded(result)
    if hooked:
        after_hooks(ctx, msg, outcome, exc, result)
    return outcome
