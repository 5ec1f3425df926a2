"""Exceptions LiteQ raises to applications and operators.

They derive from LiteQError only: a driver's exception (sqlite3, psycopg) is
never raised to callers; it is kept as the __cause__ of a DatabaseError.
"""


class LiteQError(Exception):
    """Base class of every error LiteQ raises on purpose."""


class DatabaseError(LiteQError):
    """The queue database cannot be opened, read or written."""


class DatabaseUnavailable(DatabaseError):
    """The database server cannot be reached: refused, timed out, restarted, or the
    connection was lost. The call did not complete (or its outcome is unknown);
    the next call connects again. Only server backends (PostgreSQL) raise it."""


class DatabaseRefused(DatabaseUnavailable):
    """The database server answered but will not let us in: the database does not
    exist, the role or its password is wrong, or the role may not connect. Waiting
    does not fix it, so liteqd exits at start-up; a daemon already running rides
    it out like any outage (a password being rotated, say)."""


class DatabaseLocked(DatabaseError):
    """Another process held the database's write lock past the busy timeout."""


class TaskTimeout(LiteQError):
    """Raised inside a task when its time limit expires.

    A task may catch it to clean up; the daemon kills the child at the hard
    limit (timeout plus a short grace) whatever the task does.
    """


class TaskCancelled(LiteQError):
    """Raised inside a running task that was cancelled (`cancel_task(id)`); the daemon
    kills the child's process tree if the task does not end within the kill grace.
    The task is `cancelled` and never retried."""


class TaskNotFound(LiteQError, KeyError):
    """No task with that id exists."""


class WaitTimeout(LiteQError, TimeoutError):
    """A task did not finish within the time `wait_for_task` was given."""


class ConfigError(LiteQError, ValueError):
    """A setting (flag or LITEQ_* variable) has a value that cannot be used."""


class NotATaskError(LiteQError, TypeError, ValueError):
    """A function that is not a @task was given where a task is needed.

    A TypeError, and a ValueError as liteq 0.2 raised, so either except works.
    """


class Retry(LiteQError):
    """Raise inside a task to ask for another attempt: `raise liteq.Retry(delay=30,
    reason="rate limited")`.

    It counts against the task's max_retries (with none left the task fails), and
    the reason is recorded as the attempt's error. delay is in seconds (None: the
    task's retry back-off decides).
    """

    def __init__(self, reason: str = "retry requested", delay: float | None = None) -> None:
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                                  or delay < 0):
            raise ValueError(f"Retry delay must be a number of seconds >= 0, got {delay!r}")
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class TaskFailed(LiteQError):
    """handle.result(): the task ended `failed`; .error holds its error text (with the
    traceback) and .status its TaskStatus."""

    def __init__(self, message: str, status: object = None, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class TaskWasCancelled(LiteQError):
    """handle.result(): the task ended `cancelled` (cancel_task(), or a task it
    depends on failed); .status holds its TaskStatus."""

    def __init__(self, message: str, status: object = None) -> None:
        super().__init__(message)
        self.status = status


class SchemaNotReady(DatabaseError):
    """The queue's tables are missing or older than this LiteQ needs, and LITEQ_NO_DDL
    (liteqd --no-ddl) forbids this process to create or migrate them: run
    `liteq db upgrade` (or give a DBA the SQL of `liteq db upgrade --sql`)."""
