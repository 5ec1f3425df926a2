"""Exit classification and what becomes of a dead child's tasks (liteqd.exits): pure
functions, checked without processes."""

import os
import signal

from liteqd.exits import ChildExit, ExitCause, Fate, classify, describe_exit, fates
from liteqd.pool import TaskRun

# waitpid statuses, built the way the kernel encodes them.
EXIT_0 = 0
EXIT_1 = 1 << 8
KILLED = signal.SIGKILL


GRACE = 2.0


def decide(runs, ended, many):
    return fates(runs, ended, many, GRACE)


def run(task_id, started=True, cancelled=False):
    r = TaskRun(task_id, "t", "default", 1, 3, 10.0, 1.0, 2.0, 60.0)
    if started:
        r.started_mono, r.started_wall = 100.0, 1000.0
    r.cancelled = cancelled
    return r


def exit_of(status, cause=None, retiring=False, victim=None):
    return classify(status, cause, retiring, victim)


def test_waitpid_statuses_are_described_and_classified():
    assert os.WIFEXITED(EXIT_1) and os.WIFSIGNALED(KILLED)
    assert describe_exit(EXIT_1) == "exited with code 1"
    assert describe_exit(KILLED) == "killed by signal SIGKILL (9)"
    assert exit_of(EXIT_0).clean and not exit_of(EXIT_1).clean and not exit_of(KILLED).clean


def test_only_a_death_we_did_not_cause_counts_as_a_crash():
    assert exit_of(KILLED).abnormal and exit_of(KILLED).reason == "crashed"
    # A send found it gone: it died on its own all the same.
    assert exit_of(KILLED, ExitCause.CRASH).abnormal
    for cause in (ExitCause.TIMEOUT, ExitCause.CANCEL, ExitCause.STOP):
        ended = exit_of(KILLED, cause)
        assert not ended.abnormal and ended.reason == cause.value
    assert not exit_of(KILLED, retiring=True).abnormal
    assert exit_of(EXIT_0, retiring=True).reason == "retired"
    assert exit_of(EXIT_0).reason == "exited" and not exit_of(EXIT_0).abnormal


def test_a_crash_fails_the_running_task_and_hands_back_the_queued_ones():
    head, queued = run(1), run(2, started=False)
    decisions = decide([head, queued], exit_of(KILLED), many=False)
    assert [(d.run.id, d.fate) for d in decisions] == [(1, Fate.DIED), (2, Fate.RELEASE)]
    assert decisions[0].error == ("ChildDied: the worker process killed by signal SIGKILL "
                                  "(9) while running this task")


def test_a_timeout_kill_times_out_the_running_task_only():
    head, queued = run(1), run(2, started=False)
    decisions = decide([head, queued], exit_of(KILLED, ExitCause.TIMEOUT), many=False)
    assert [d.fate for d in decisions] == [Fate.TIMED_OUT, Fate.RELEASE]
    assert decisions[0].error == ("TaskTimeout: timed out after 10 s (the child was killed "
                                  "2 s after the limit)")


def test_a_cancel_kill_cancels_a_cancelled_task_but_a_stop_touches_nothing():
    head = run(1, cancelled=True)
    assert decide([head], exit_of(KILLED, ExitCause.CANCEL), False)[0].fate is Fate.CANCELLED
    # Killed for a cancel, but the task it runs now was not cancelled: it died.
    assert decide([run(2)], exit_of(KILLED, ExitCause.CANCEL), False)[0].fate is Fate.DIED
    # Stopped by us: a stop, a retiring child we killed, a retiring child that exited.
    for ended in (exit_of(KILLED, ExitCause.STOP), exit_of(KILLED, ExitCause.CRASH, True),
                  exit_of(EXIT_0, retiring=True)):
        assert [d.fate for d in decide([run(1), run(2, False)], ended, False)] == \
            [Fate.RELEASE, Fate.RELEASE]


def test_a_retiring_child_that_exits_with_an_error_fails_its_task():
    assert decide([run(1)], exit_of(EXIT_1, retiring=True), False)[0].fate is Fate.DIED


def test_a_child_of_many_coroutines_times_out_only_the_task_it_was_killed_for():
    victim, other, waiting = run(1), run(2), run(3, started=False)
    ended = exit_of(KILLED, ExitCause.TIMEOUT, victim=victim)
    assert [d.fate for d in decide([victim, other, waiting], ended, many=True)] == \
        [Fate.TIMED_OUT, Fate.RELEASE, Fate.RELEASE]


def test_a_crashed_child_of_many_coroutines_fails_every_started_task():
    started, cancelled, waiting = run(1), run(2, cancelled=True), run(3, started=False)
    assert [d.fate for d in decide([started, cancelled, waiting], exit_of(KILLED), True)] == \
        [Fate.DIED, Fate.NOTHING, Fate.RELEASE]
    ended = exit_of(KILLED, ExitCause.CANCEL)
    assert [d.fate for d in decide([started, cancelled, waiting], ended, True)] == \
        [Fate.RELEASE, Fate.CANCELLED, Fate.RELEASE]
    assert all(d.fate is Fate.RELEASE
               for d in decide([started, waiting], exit_of(KILLED, ExitCause.STOP), True))


def test_an_idle_child_has_no_decisions():
    assert decide([], exit_of(KILLED), False) == [] and decide([], exit_of(KILLED), True) == []
    assert isinstance(exit_of(KILLED), ChildExit)
