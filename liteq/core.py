"""The @task decorator, the task registry, and enqueueing."""

import functools
import inspect

from . import storage
from .serialization import encode_payload, encode_args_array
from .status import get_task_status  # noqa: F401  (the seed's liteq.core.get_task_status)
from .wakeup import wake as _wake
from .timeutil import now, to_epoch

# name -> Task. The daemon looks tasks up here after importing the app.
TASK_REGISTRY = {}

_UNSET = object()


def _check_positive(label, value, allow_none=False, allow_zero=True):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{label} must be a number, not {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{label} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


class Task:
    """A function registered as a task. Call it directly, or enqueue it with .delay()."""

    def __init__(self, fn, name=None, queue="default", max_retries=3, timeout=None,
                 priority=0, retry_delay=1.0, retry_backoff=2.0, retry_max_delay=300.0):
        if not callable(fn):
            raise TypeError(f"@task needs a function, got {fn!r}")
        _check_positive("max_retries", max_retries)
        _check_positive("timeout", timeout, allow_none=True, allow_zero=False)
        _check_positive("retry_delay", retry_delay)
        _check_positive("retry_backoff", retry_backoff)
        _check_positive("retry_max_delay", retry_max_delay)
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue must be a non-empty string, got {queue!r}")
        self.fn = fn
        self.name = name or fn.__name__
        self.queue = queue
        self.max_retries = int(max_retries)
        self.timeout = timeout
        self.priority = int(priority)
        self.retry_delay = float(retry_delay)
        self.retry_backoff = float(retry_backoff)
        self.retry_max_delay = float(retry_max_delay)
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        """Run the function here and now, without the queue."""
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"<Task {self.name} queue={self.queue}>"

    def _row(self, args, kwargs, queue, priority, run_at, timeout, max_retries):
        payload = encode_payload(self.name, args, kwargs)
        return (self.name, payload,
                self.queue if queue is None else queue,
                self.priority if priority is None else int(priority),
                self.max_retries if max_retries is None else int(max_retries),
                run_at,
                self.timeout if timeout is None else timeout,
                self.retry_delay, self.retry_backoff, self.retry_max_delay)

    @staticmethod
    def _enqueue(row) -> int:
        # Commit first, then nudge the daemon, telling it when the task is due.
        store = storage.get_store()
        task_id = store.enqueue(*row)
        _wake(store.path, row[5])
        return task_id

    def delay(self, *args, **kwargs) -> int:
        """Enqueue a call with these arguments; returns the task id."""
        return self._enqueue(self._row(args, kwargs, None, None, None, None, None))

    def schedule(self, when=_UNSET, *args, **kwargs) -> int:
        """Enqueue a call to run at `when`: a datetime (naive = local time), an
        ISO-8601 string (read the same way), a timedelta, or a number of seconds
        from now. Returns the task id. The seed project's keyword `run_at=` names
        `when` too, when `when` is not given."""
        if when is _UNSET:
            if "run_at" not in kwargs:
                raise TypeError(f"{self.name}.schedule() needs when (or run_at=): a datetime, "
                                f"an ISO-8601 string, a timedelta or a number of seconds")
            when = kwargs.pop("run_at")
        return self._enqueue(self._row(args, kwargs, None, None, to_epoch(when), None, None))

    def apply_async(self, args=(), kwargs=None, *, queue=None, priority=None, eta=None,
                    countdown=None, timeout=None, max_retries=None) -> int:
        """Enqueue with per-call options, as Celery's apply_async does.

        eta is a datetime (or epoch seconds), countdown a delay in seconds; give one.
        """
        if eta is not None and countdown is not None:
            raise ValueError("give eta or countdown, not both")
        _check_positive("countdown", countdown, allow_none=True)
        _check_positive("timeout", timeout, allow_none=True, allow_zero=False)
        if max_retries is not None:
            _check_positive("max_retries", max_retries)
        if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
            raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}")
        if kwargs and not all(isinstance(k, str) for k in kwargs):
            # JSON would silently turn 1 into "1"; the call could never run.
            bad = next(k for k in kwargs if not isinstance(k, str))
            raise TypeError(f"keyword {bad!r} of task {self.name!r} is not a string")
        run_at = None
        if eta is not None:
            run_at = eta.timestamp() if hasattr(eta, "timestamp") else float(eta)
        elif countdown is not None:
            run_at = now() + countdown
        return self._enqueue(self._row(tuple(args), kwargs or {}, queue, priority, run_at,
                                       timeout, max_retries))

    def map(self, iterable, **options) -> list:
        """Enqueue one call per item (each item is the single argument), in one
        transaction with one wake-up. Returns the ids in order."""
        return self.starmap(((item,) for item in iterable), **options)

    def starmap(self, iterable, *, queue=None, priority=None, countdown=None,
                timeout=None) -> list:
        """Enqueue one call per tuple of positional arguments, in one transaction
        with one wake-up. Nothing is written if any call's arguments cannot be
        stored as JSON. Returns the ids in order."""
        _check_positive("countdown", countdown, allow_none=True)
        _check_positive("timeout", timeout, allow_none=True, allow_zero=False)
        payloads, count = encode_args_array(self.name, iterable)
        run_at = None if countdown is None else now() + countdown
        store = storage.get_store()
        ids = store.enqueue_many(
            self.name, payloads, count,
            queue=self.queue if queue is None else queue,
            priority=self.priority if priority is None else int(priority),
            max_retries=self.max_retries,
            run_at=run_at,
            timeout=self.timeout if timeout is None else timeout,
            retry_delay=self.retry_delay, retry_backoff=self.retry_backoff,
            retry_max_delay=self.retry_max_delay)
        if ids:
            _wake(store.path, run_at)
        return ids


class _TaskProxyType(type):
    # Every Task is a TaskProxy for isinstance(), as every @task was one in the seed.
    def __instancecheck__(cls, obj):
        return isinstance(obj, Task)


class TaskProxy(Task, metaclass=_TaskProxyType):
    """The seed project's name for a task object.

    TaskProxy(fn, name, queue, max_retries, timeout) builds and registers one, as
    in the seed; isinstance(x, TaskProxy) is true of every task.
    """

    def __init__(self, fn, name=None, queue="default", max_retries=3, timeout=None, **options):
        super().__init__(fn, name=name, queue=queue, max_retries=max_retries, timeout=timeout,
                         **options)
        register(self)


def register(task_obj: Task) -> Task:
    """Add a task to the registry; a different function under a taken name is an error."""
    existing = TASK_REGISTRY.get(task_obj.name)
    if existing is not None and not _same_function(existing.fn, task_obj.fn):
        raise ValueError(
            f"task name {task_obj.name!r} is already registered by "
            f"{_describe(existing.fn)}; {_describe(task_obj.fn)} cannot use it too "
            f"(pass name=... to @task)")
    TASK_REGISTRY[task_obj.name] = task_obj
    return task_obj


def _describe(fn):
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


def _same_function(a, b):
    # The same source loaded twice (an app file run as __main__ and imported as a
    # module, or reloaded) is one task, not a clash.
    if a is b:
        return True
    ca, cb = getattr(a, "__code__", None), getattr(b, "__code__", None)
    if ca is None or cb is None:
        return False
    return (a.__qualname__ == b.__qualname__ and ca.co_filename == cb.co_filename
            and ca.co_firstlineno == cb.co_firstlineno)


# The seed project's @task(queue, max_retries, name, timeout), with its defaults.
_SEED_POSITIONAL = {"queue": "default", "max_retries": 3, "name": None, "timeout": None}


def task(fn=None, *positional, queue="default", max_retries=3, name=None, timeout=None,
         priority=0, retry_delay=1.0, retry_backoff=2.0, retry_max_delay=300.0):
    """Mark a function as a task; use as `@task` or `@task(queue=..., ...)`.

    max_retries counts retries after the first attempt (0 runs once). Failed
    attempts wait retry_delay * retry_backoff**(attempt-1) seconds, at most
    retry_max_delay, before the next. timeout is the task's time limit in seconds.
    The seed project's positional form `@task(queue, max_retries, name, timeout)`
    works too.
    """
    if isinstance(fn, str):
        values = (fn, *positional)
        if len(values) > len(_SEED_POSITIONAL):
            raise TypeError(f"@task takes at most {len(_SEED_POSITIONAL)} positional options "
                            f"({', '.join(_SEED_POSITIONAL)}), got {len(values)}")
        options = {"queue": queue, "max_retries": max_retries, "name": name,
                   "timeout": timeout}
        for key, value in zip(_SEED_POSITIONAL, values):
            if options[key] != _SEED_POSITIONAL[key]:
                raise TypeError(f"@task got {key} both by position and as a keyword")
            options[key] = value
        queue, max_retries, name, timeout = options.values()
        fn = None
    elif positional:
        raise TypeError("@task's options after the function are keywords: "
                        "@task(queue=..., max_retries=...)")

    def decorate(f):
        return register(Task(f, name=name, queue=queue, max_retries=max_retries,
                             timeout=timeout, priority=priority, retry_delay=retry_delay,
                             retry_backoff=retry_backoff, retry_max_delay=retry_max_delay))
    if fn is not None:
        if not callable(fn):
            raise TypeError(f"@task's first argument must be the function (or the queue "
                            f"name), got {fn!r}; options are keywords: @task(queue=...)")
        return decorate(fn)
    return decorate


def get_task(name_or_fn):
    """Resolve a registered Task from a name, a Task, or a decorated function."""
    if isinstance(name_or_fn, Task):
        return name_or_fn
    if isinstance(name_or_fn, str):
        try:
            return TASK_REGISTRY[name_or_fn]
        except KeyError:
            raise KeyError(f"no task named {name_or_fn!r} is registered") from None
    raise TypeError(f"{name_or_fn!r} is not a LiteQ task; decorate it with @task")
