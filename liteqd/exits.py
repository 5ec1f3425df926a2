"""How a child ended, and what becomes of the tasks it held (pure: no processes, no I/O).

The lifecycle knows why it killed a child (an ExitCause) and how the process
ended (its waitpid status); `fates` turns that and the tasks the child held into
one decision per task, which the dispatcher carries out.
"""

import enum
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from .pool import TaskRun

_SIGNAMES = {s.value: s.name for s in signal.Signals}


class ExitCause(enum.Enum):
    """Why the supervisor killed a child (None when it ended on its own)."""
    TIMEOUT = "timeout"   # a task passed its time limit and the kill grace
    CANCEL = "cancel"     # a cancelled task did not stop within the kill grace
    STOP = "stop"         # a stop, or a retiring child past its deadline
    CRASH = "crash"       # a send or read found it already gone or talking nonsense


class Fate(enum.Enum):
    """What becomes of one task of a child that ended."""
    TIMED_OUT = "timed_out"   # an attempt that failed with TaskTimeout
    DIED = "died"             # an attempt that failed with ChildDied
    CANCELLED = "cancelled"   # killed for its cancel: its row is final already
    RELEASE = "release"       # back to pending, untouched (never started, or stopped by us)
    NOTHING = "nothing"       # cancelled before the child died: its row is final already


@dataclass(frozen=True)
class Decision:
    """The fate of one task of a child that ended; for a failed attempt, its error (the
    task's retry policy then decides between a retry and a failure, as for any)."""
    run: TaskRun
    fate: Fate
    error: str = ""


@dataclass(frozen=True)
class ChildExit:
    """How a child ended: the cause we killed it for, if any, and its waitpid status."""
    cause: ExitCause | None
    retiring: bool        # it had been asked to finish and exit
    clean: bool           # it exited with code 0
    how: str              # 'exited with code N' or 'killed by signal NAME (N)'
    timed_out_task: TaskRun | None = None

    @property
    def stopped_by_us(self) -> bool:
        """True when everything it held goes back untouched: a stop, or a retiring child
        that was killed."""
        return self.cause is ExitCause.STOP or (self.retiring and self.cause is not None)

    @property
    def abnormal(self) -> bool:
        """True when it died on its own (a failed send found it dead all the same)."""
        return not self.clean and self.cause in (None, ExitCause.CRASH) and not self.retiring

    @property
    def reason(self) -> str:
        """The reason the exit log names."""
        if self.abnormal:
            return "crashed"
        if self.cause is not None:
            return self.cause.value
        return "retired" if self.retiring else "exited"


def describe_exit(status: int) -> str:
    """'exited with code N' or 'killed by signal NAME (N)' for a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {_SIGNAMES.get(sig, sig)} ({sig})"
    return f"exited with code {os.WEXITSTATUS(status)}"


def signal_name(sig: int) -> str:
    """SIGTERM for 15, and so on."""
    return _SIGNAMES.get(sig, str(sig))


def classify(status: int, cause: ExitCause | None, retiring: bool,
             timed_out_task: TaskRun | None = None) -> ChildExit:
    """The ChildExit of a waitpid status."""
    clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return ChildExit(cause, retiring, clean, describe_exit(status), timed_out_task)


def fates(runs: Sequence[TaskRun], ended: ChildExit, many: bool,
          kill_grace: float) -> list[Decision]:
    """One decision per task a child held when it ended, in order.

    `many`: the child ran several coroutines at once (their own start times tell
    which started). Otherwise the first task is the one it was running.
    `kill_grace`: how long after a time limit the child was killed (for the error).
    """
    return [_with_error(d, ended, kill_grace) for d in (
        _fates_many(runs, ended) if many else _fates_one(runs, ended))]


def _with_error(decision: Decision, ended: ChildExit, kill_grace: float) -> Decision:
    run = decision.run
    if decision.fate is Fate.TIMED_OUT:
        limit = f"{run.limit:g} s" if run.limit is not None else "its limit"
        return Decision(run, Fate.TIMED_OUT, f"TaskTimeout: timed out after {limit} (the "
                        f"child was killed {kill_grace:g} s after the limit)")
    if decision.fate is Fate.DIED:
        return Decision(run, Fate.DIED, f"ChildDied: the worker process {ended.how} while "
                        f"running this task")
    return decision


def _fates_one(runs: Sequence[TaskRun], ended: ChildExit) -> list[Decision]:
    if not runs:
        return []
    head, rest = runs[0], runs[1:]
    if ended.cause is ExitCause.TIMEOUT:
        fate = Fate.TIMED_OUT
    elif ended.cause is ExitCause.CANCEL and head.cancelled:
        fate = Fate.CANCELLED
    elif ended.stopped_by_us or (ended.retiring and ended.clean):
        fate = Fate.RELEASE
    else:
        fate = Fate.DIED
    return [Decision(head, fate)] + [Decision(run, Fate.RELEASE) for run in rest]


def _fates_many(runs: Sequence[TaskRun], ended: ChildExit) -> list[Decision]:
    """A child of many coroutines. Killed for one task's time limit (its coroutine
    ignored the cancellation): that task times out; killed for an ignored cancel:
    the cancelled ones are cancelled; either way the other tasks go back to pending
    untouched, as on a stop (they did nothing wrong). A crash: every started task
    failed its attempt (ChildDied, retried per its policy), as the one task of a
    one-task child."""
    out: list[Decision] = []
    for run in runs:
        if run.started_mono is None:
            fate = Fate.RELEASE
        elif ended.cause is ExitCause.TIMEOUT:
            fate = Fate.TIMED_OUT if run is ended.timed_out_task else Fate.RELEASE
        elif ended.cause is ExitCause.CANCEL:
            fate = Fate.CANCELLED if run.cancelled else Fate.RELEASE
        elif ended.stopped_by_us or (ended.retiring and ended.clean):
            fate = Fate.RELEASE
        else:
            fate = Fate.NOTHING if run.cancelled else Fate.DIED
        out.append(Decision(run, fate))
    return out
