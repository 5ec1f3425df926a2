"""Running one task inside a worker child: its arguments, its time limit (a signal
timer for plain functions, a cancelled asyncio task for coroutines), and its
outcome as result JSON or error text.
"""

import asyncio
import signal
import traceback
from typing import NamedTuple, Optional

from liteq.core import TASK_REGISTRY
from liteq.errors import TaskTimeout
from liteq.serialization import decode_payload, encode_result


class Outcome(NamedTuple):
    """What became of one attempt. retry=False: an error no retry can fix."""
    ok: bool
    text: str
    timed_out: bool = False
    retry: Optional[bool] = None


def _not_retried(text, why):
    return Outcome(False, f"{text}; not retried: {why}", retry=False)


def _on_alarm(signum, frame):
    raise TaskTimeout(f"timed out after {_on_alarm.limit:g} s")


_on_alarm.limit = 0


def install_alarm_handler():
    """Route SIGALRM (the sync tasks' time limit) to TaskTimeout in this process."""
    signal.signal(signal.SIGALRM, _on_alarm)


def _format_error(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}\n\n{tb}"


class Executor:
    """Runs one task at a time, with a soft time limit and a persistent event loop."""

    def __init__(self):
        self.loop = None

    def _run_async(self, fn, args, kwargs, timeout):
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        task = self.loop.create_task(fn(*args, **kwargs))
        timer = None
        if timeout:
            timer = self.loop.call_later(timeout, task.cancel)
        try:
            return self.loop.run_until_complete(task)
        except asyncio.CancelledError:
            # The only canceller is our own timer.
            raise TaskTimeout(f"timed out after {timeout:g} s") from None
        finally:
            if timer is not None:
                timer.cancel()

    def _run_sync(self, fn, args, kwargs, timeout):
        if not timeout:
            return fn(*args, **kwargs)
        _on_alarm.limit = timeout
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def run(self, name, payload, timeout) -> Outcome:
        """Run one task; the Outcome's text is the result JSON or the error.

        Errors that no retry can fix (an unknown task, undecodable arguments,
        arguments that do not fit the function, a result JSON cannot hold) are
        marked retry=False, and their text says so.
        """
        task = TASK_REGISTRY.get(name)
        if task is None:
            known = ", ".join(sorted(TASK_REGISTRY)) or "none"
            return _not_retried(f"UnknownTask: no task named {name!r} is registered in this "
                                f"app (registered: {known})",
                                "the app does not know this task")
        try:
            args, kwargs = decode_payload(payload)
        except ValueError as exc:
            return _not_retried(f"BadPayload: {exc}", "the stored arguments cannot be decoded")
        try:
            if task.is_async:
                result = self._run_async(task.fn, args, kwargs, timeout)
            else:
                result = self._run_sync(task.fn, args, kwargs, timeout)
        except TaskTimeout as exc:
            return Outcome(False, _format_error(exc), timed_out=True)
        except TypeError as exc:
            mismatch = _signature_mismatch(task.fn, args, kwargs)
            if mismatch:
                return _not_retried(mismatch, "the arguments do not fit the function")
            return Outcome(False, _format_error(exc))
        except BaseException as exc:  # noqa: B902 - a task's SystemExit is its failure too
            if isinstance(exc, KeyboardInterrupt):
                raise
            return Outcome(False, _format_error(exc))
        try:
            return Outcome(True, encode_result(result))
        except TypeError as exc:
            return _not_retried(f"BadResult: {exc}", "the function's result cannot be stored "
                                                     "as JSON")


def _signature_mismatch(fn, args, kwargs):
    # Only consulted after a TypeError, so the hot path pays nothing for it.
    import inspect
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

