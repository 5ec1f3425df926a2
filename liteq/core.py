"""The @task decorator, the task registry, and enqueueing.

Task[P, R] keeps the function's parameters (P) and its result type (R, the awaited
type of an `async def`), so that type checkers check .delay(), .s() and .map()
against the function, and handle.result() is typed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable
from typing import (TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeAlias, TypeVar, cast,
                    overload)

from .backends import get_backend
from .serialization import encode_payload, encode_args_array
from .taskspec import (NewTask, NewTasks, TaskOptions, check_depends_on, check_name,
                       check_number, check_unique_key, derive_unique_key)
from .rates import parse_rate
from .timeutil import due_from
from .status import get_task_status as get_task_status  # liteq 0.2's liteq.core.get_task_status
from .handle import TaskHandle, handle_of, handles

if TYPE_CHECKING:
    from .workflow import Signature

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A")
A_contra = TypeVar("A_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)
#: retry_on / no_retry_on: an exception class, or a tuple or list of them.
ExceptionClasses: TypeAlias = (type[BaseException] | tuple[type[BaseException], ...]
                               | list[type[BaseException]] | None)

# name -> Task. The daemon looks tasks up here after importing the app.
TASK_REGISTRY: dict[str, Task[..., Any]] = {}

_UNSET = object()


class Task(Generic[P, R]):
    """A function registered as a task. Call it directly, or enqueue it with .delay().

    P is the function's parameters and R its result (for an `async def`, the awaited
    value: AsyncTask is the class of those)."""

    def __init__(self, fn: Callable[P, Any], name: str | None = None,
                 retry_on: ExceptionClasses = None, no_retry_on: ExceptionClasses = None,
                 concurrency: int | None = None, unique: bool = False,
                 rate_limit: str | float | None = None, **options: Any) -> None:
        if not callable(fn):
            raise TypeError(f"@task needs a function, got {fn!r}")
        self.fn = fn
        self.name = check_name("task name", name or fn.__name__)
        self.options = TaskOptions.build(**options)
        # unique=True: each call's unique_key is derived from the name and arguments.
        # Code-side (like retry_on), not a TaskOptions field: the row stores the key.
        self.unique = _check_unique_flag(unique)
        # Which exceptions a retry may fix (None: any); checked in the worker child.
        self.retry_on = _exception_classes("retry_on", retry_on)
        self.no_retry_on = _exception_classes("no_retry_on", no_retry_on)
        # At most this many running at once over every daemon (enforced at claim).
        self.concurrency = _concurrency(concurrency)
        # At most this many starts a second over every daemon (enforced at claim),
        # as written ("100/s", "10/m", "5/h" or a number a second); see liteq.rates.
        self.rate_limit = rate_limit
        self.rate_per_second = parse_rate(rate_limit)
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    # The options read as attributes, as in liteq 0.2 (task.queue, ...).
    queue = property(lambda self: self.options.queue)
    priority = property(lambda self: self.options.priority)
    max_retries = property(lambda self: self.options.max_retries)
    timeout = property(lambda self: self.options.timeout)
    retry_delay = property(lambda self: self.options.retry_delay)
    retry_backoff = property(lambda self: self.options.retry_backoff)
    retry_max_delay = property(lambda self: self.options.retry_max_delay)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, without the queue."""
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Enqueue a call with these arguments; returns its TaskHandle, an int (the
        task id; for a unique task already pending or running with these arguments,
        that task's id)."""
        return handle_of(get_backend().enqueue(self._call(args, kwargs)))

    def handle(self, task_id: int) -> TaskHandle[R]:
        """A TaskHandle of this task again, from an id stored elsewhere."""
        return TaskHandle(task_id)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NewTask:
        """The NewTask of a plain call (a unique task's key derived from it)."""
        key = derive_unique_key(self.name, args, kwargs) if self.unique else None
        return NewTask(self.name, encode_payload(self.name, args, kwargs), self.options,
                       unique_key=key)

    def schedule(self, when: Any = _UNSET, *args: Any, **kwargs: Any) -> TaskHandle[R]:
        """Enqueue a call to run at `when`: a datetime (naive = local time), an
        ISO-8601 string (read the same way), a timedelta, or a number of seconds
        from now. Returns the task id. liteq 0.2's keyword `run_at=` names
        `when` too, when `when` is not given."""
        if when is _UNSET:
            if "run_at" not in kwargs:
                raise TypeError(f"{self.name}.schedule() needs when (or run_at=): a datetime, "
                                f"an ISO-8601 string, a timedelta or a number of seconds")
            when = kwargs.pop("run_at")
        run_at, delay = due_from(when)
        key = derive_unique_key(self.name, args, kwargs) if self.unique else None
        return handle_of(get_backend().enqueue(
            NewTask(self.name, encode_payload(self.name, args, kwargs), self.options,
                    run_at=run_at, delay=delay, unique_key=key)))

    def apply_async(self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                    **options: Any) -> TaskHandle[R]:
        """Enqueue with per-call options, as Celery's apply_async does: queue, priority,
        eta (a datetime, or epoch seconds) or countdown (seconds), timeout,
        max_retries, unique_key (while a task with this key is pending or running,
        nothing is enqueued and its id is returned; a unique task derives one),
        depends_on (task ids: it runs only once every one is done; when one fails
        or is cancelled it is cancelled too). Returns the TaskHandle.

        Type checkers cannot match a tuple of arguments against the function's
        parameters; `task.s(...).apply_async(queue=...)` is the checked form."""
        return handle_of(get_backend().enqueue(self._new_task(args, kwargs, **options)))

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """`await fn.adelay(...)`: .delay() for asyncio code; the event loop never
        blocks (SQLite: in a thread; PostgreSQL: psycopg's async connection)."""
        return handle_of(await get_backend().aenqueue(self._call(args, kwargs)))

    async def aapply_async(self, args: Iterable[Any] = (),
                           kwargs: dict[str, Any] | None = None,
                           **options: Any) -> TaskHandle[R]:
        """`await fn.aapply_async(...)`: .apply_async() for asyncio code."""
        return handle_of(await get_backend().aenqueue(self._new_task(args, kwargs, **options)))

    def _new_task(self, args: Iterable[Any], kwargs: dict[str, Any] | None, *, queue: str | None = None,
                  priority: int | None = None, eta: Any = None,
                  countdown: float | None = None, timeout: float | None = None,
                  max_retries: int | None = None, unique_key: str | None = None,
                  depends_on: Any = ()) -> NewTask:
        """The NewTask of one apply_async() call, its options checked."""
        if eta is not None and countdown is not None:
            raise ValueError("give eta or countdown, not both")
        depends_on = check_depends_on(depends_on)
        if depends_on and (unique_key is not None or self.unique):
            raise ValueError(f"task {self.name!r}: depends_on and unique tasks cannot be "
                             f"combined (a waiting task would hold its key for as long as "
                             f"its parents run)")
        if unique_key is not None:
            check_unique_key(unique_key)
        check_number("countdown", countdown, allow_none=True)
        if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
            raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}")
        if kwargs and not all(isinstance(k, str) for k in kwargs):
            # JSON would silently turn 1 into "1"; the call could never run.
            bad = next(k for k in kwargs if not isinstance(k, str))
            raise TypeError(f"keyword {bad!r} of task {self.name!r} is not a string")
        options = self.options.with_overrides(queue=queue, priority=priority, timeout=timeout,
                                              max_retries=max_retries)
        run_at = None
        if eta is not None:
            run_at = eta.timestamp() if hasattr(eta, "timestamp") else float(eta)
        payload = encode_payload(self.name, tuple(args), kwargs or {})
        if unique_key is None and self.unique:
            unique_key = derive_unique_key(self.name, args, kwargs or {})
        return NewTask(self.name, payload, options, run_at=run_at, delay=countdown,
                       unique_key=unique_key, depends_on=depends_on)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """A signature: this task with these arguments, not enqueued (for liteq.chain,
        or .apply_async(**options) with per-call options)."""
        from .workflow import Signature
        return Signature(self, args, kwargs)

    def map(self: _OneArgument[A, R], iterable: Iterable[A], *, queue: str | None = None,
            priority: int | None = None, countdown: float | None = None,
            timeout: float | None = None) -> list[TaskHandle[R]]:
        """Enqueue one call per item (each item is the single argument), in one
        transaction with one wake-up. Returns the handles in order. (Type checkers
        accept it for a function callable with one positional argument of the items' type.)"""
        task: Task[..., R] = cast("Task[..., R]", self)
        return task.starmap(((item,) for item in iterable), queue=queue, priority=priority,
                            countdown=countdown, timeout=timeout)

    def starmap(self, iterable: Iterable[Iterable[Any]], *, queue: str | None = None,
                priority: int | None = None, countdown: float | None = None,
                timeout: float | None = None) -> list[TaskHandle[R]]:
        """Enqueue one call per tuple of positional arguments, in one transaction
        with one wake-up. Nothing is written if any call's arguments cannot be
        stored as JSON. Returns the handles in order."""
        check_number("countdown", countdown, allow_none=True)
        if self.unique:
            # One transaction of many rows cannot skip some of them one by one.
            raise TypeError(f"task {self.name!r} is unique; map() and starmap() do not "
                            f"enqueue unique tasks: call .delay() for each item")
        options = self.options.with_overrides(queue=queue, priority=priority, timeout=timeout)
        args_json, count = encode_args_array(self.name, iterable)
        return handles(get_backend().enqueue_many(NewTasks(self.name, args_json, count,
                                                           options, delay=countdown)))


class _OneArgument(Protocol[A_contra, R_co]):
    """A task whose function takes one positional argument (what map() needs)."""

    def __call__(self, item: A_contra, /) -> Any: ...

    def handle(self, task_id: int) -> TaskHandle[R_co]: ...


class AsyncTask(Task[P, R]):
    """A task made of an `async def`: calling it directly returns the coroutine, and
    its handles' results are the awaited value (R)."""

    def __call__(  # type: ignore[override]
            self, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Call the coroutine function here (await what it returns), without the queue."""
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]


class _TaskProxyType(type):
    # Every Task is a TaskProxy for isinstance(), as every @task was one in liteq 0.2.
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, Task)


class TaskProxy(Task[..., Any], metaclass=_TaskProxyType):
    """liteq 0.2's name for a task object.

    TaskProxy(fn, name, queue, max_retries, timeout) builds and registers one, as
    in liteq 0.2; isinstance(x, TaskProxy) is true of every task.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None,
                 queue: str | None = None, max_retries: int | None = None,
                 timeout: float | None = None, **options: Any) -> None:
        seed = {"queue": queue, "max_retries": max_retries, "timeout": timeout}
        options.update({k: v for k, v in seed.items() if v is not None})
        super().__init__(fn, name=name, **options)
        register(self)


T = TypeVar("T", bound="Task[Any, Any]")


def register(task_obj: T) -> T:
    """Add a task to the registry; a different function under a taken name is an error."""
    existing = TASK_REGISTRY.get(task_obj.name)
    if existing is not None and not _same_function(existing.fn, task_obj.fn):
        raise ValueError(
            f"task name {task_obj.name!r} is already registered by "
            f"{_describe(existing.fn)}; {_describe(task_obj.fn)} cannot use it too "
            f"(pass name=... to @task)")
    TASK_REGISTRY[task_obj.name] = task_obj
    return task_obj


def _describe(fn: object) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


def _same_function(a: Any, b: Any) -> bool:
    # The same source loaded twice (an app file run as __main__ and imported as a
    # module, or reloaded) is one task, not a clash.
    if a is b:
        return True
    ca, cb = getattr(a, "__code__", None), getattr(b, "__code__", None)
    if ca is None or cb is None:
        return False
    return bool(a.__qualname__ == b.__qualname__ and ca.co_filename == cb.co_filename
                and ca.co_firstlineno == cb.co_firstlineno)


def _check_unique_flag(value: object) -> bool:
    """@task's unique option: True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"unique must be True or False, not {value!r}; for a key of your "
                        f"own pass apply_async(..., unique_key=...)")
    return value


def _exception_classes(label: str, value: Any) -> tuple[type[BaseException], ...] | None:
    """A tuple of exception classes from a class or a tuple/list of them (None stays None)."""
    if value is None:
        return None
    items: tuple[Any, ...] = (tuple(cast("Iterable[Any]", value))
                              if isinstance(value, (tuple, list)) else (value,))
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"{label} takes exception classes, such as (ConnectionError,); "
                            f"got {item!r}")
    return items


def _concurrency(value: object) -> int | None:
    """None, or a whole number >= 1 (a global limit of running tasks)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"concurrency must be a whole number, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"concurrency must be at least 1, got {value}")
    return value


# liteq 0.2's @task(queue, max_retries, name, timeout), in that order.
_SEED_POSITIONAL = ("queue", "max_retries", "name", "timeout")


class TaskDecorator:
    """What `@task(...)` with options returns: applied to a function, its Task."""

    def __init__(self, name: str | None, options: dict[str, Any]) -> None:
        self.name, self.options = name, options

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    def __call__(self, fn: Callable[..., Any], /) -> Task[..., Any]:
        """Register `fn` as a task with these options."""
        made: Task[..., Any] = (AsyncTask if inspect.iscoroutinefunction(fn) else Task)(
            fn, name=self.name, **self.options)
        return register(made)


@overload
def task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...
@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(fn: None = None, /, *, name: str | None = None, queue: str = ...,
         priority: int = ..., max_retries: int = ..., timeout: float | None = ...,
         retry_delay: float = ..., retry_backoff: float = ..., retry_max_delay: float = ...,
         retry_on: ExceptionClasses = ..., no_retry_on: ExceptionClasses = ...,
         concurrency: int | None = ..., unique: bool = ...,
         rate_limit: str | float | None = ...) -> TaskDecorator: ...
@overload
def task(fn: str, /, *positional: Any, name: str | None = None,
         **options: Any) -> TaskDecorator: ...


def task(fn: Any = None, /, *positional: Any, name: str | None = None,
         **options: Any) -> Any:
    """Mark a function as a task; use as `@task` or `@task(queue=..., ...)`.

    Options (liteq.taskspec.TaskOptions, whose defaults these are): queue
    ("default"), priority (0), max_retries (3: retries after the first attempt;
    0 runs once), timeout (None: the daemon's limit, in seconds), retry_delay
    (1.0), retry_backoff (2.0) and retry_max_delay (300.0): failed attempts wait
    retry_delay * retry_backoff**(attempt-1) seconds, at most retry_max_delay.
    unique=True: while a call with the same arguments is pending or running,
    enqueueing it again returns that task's id and writes nothing.
    concurrency=N: at most N run at once, over every daemon on the database.
    rate_limit="100/s" (or "/m", "/min", "/h", or a number a second): at most that
    many start, evenly spread, over every daemon on the database.

    liteq 0.2's positional form `@task(queue, max_retries, name, timeout)`
    works too.
    """
    if isinstance(fn, str):
        values = (fn, *positional)
        if len(values) > len(_SEED_POSITIONAL):
            raise TypeError(f"@task takes at most {len(_SEED_POSITIONAL)} positional options "
                            f"({', '.join(_SEED_POSITIONAL)}), got {len(values)}")
        for key, value in zip(_SEED_POSITIONAL, values):
            if (name if key == "name" else options.get(key)) is not None:
                raise TypeError(f"@task got {key} both by position and as a keyword")
            if key == "name":
                name = value
            else:
                options[key] = value
        fn = None
    elif positional:
        raise TypeError("@task's options after the function are keywords: "
                        "@task(queue=..., max_retries=...)")

    decorate = TaskDecorator(name, options)
    if fn is not None:
        if not callable(fn):
            raise TypeError(f"@task's first argument must be the function (or the queue "
                            f"name), got {fn!r}; options are keywords: @task(queue=...)")
        return decorate(fn)
    # An unknown or bad option fails at the decorator line, not at the first call.
    TaskOptions.build(**{k: v for k, v in options.items()
                         if k not in ("retry_on", "no_retry_on", "concurrency", "unique",
                                      "rate_limit")})
    for key in ("retry_on", "no_retry_on"):
        _exception_classes(key, options.get(key))
    _concurrency(options.get("concurrency"))
    parse_rate(options.get("rate_limit"))
    _check_unique_flag(options.get("unique", False))
    return decorate


def get_task(name_or_fn: object) -> Task[..., Any]:
    """Resolve a registered Task from a name, a Task, or a decorated function."""
    if isinstance(name_or_fn, Task):
        return cast("Task[..., Any]", name_or_fn)
    if isinstance(name_or_fn, str):
        try:
            return TASK_REGISTRY[name_or_fn]
        except KeyError:
            raise KeyError(f"no task named {name_or_fn!r} is registered") from None
    raise TypeError(f"{name_or_fn!r} is not a LiteQ task; decorate it with @task")
