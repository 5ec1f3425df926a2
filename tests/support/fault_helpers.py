"""What the "prove it" suites (tests/daemon/test_fault_injection.py, test_bad_input.py,
test_load.py) add to daemon_helpers.py: the `lab` fixture, whose daemons run
tests/apps/fault_app.py with longer default waits, the `fault_app` fixture for that app,
and the executions file its tasks write.

A `Lab` is a daemon_helpers.Daemons: real processes in sessions of their own, tagged,
every one SIGKILLed and reaped in teardown; every wait polls with a deadline.
"""

import os
from collections import Counter

import pytest

from . import APPS
from .daemon_helpers import Daemons, load_app_module, running
from .processes import read_lines

FAULT_APP = os.path.join(APPS, "fault_app.py")

# The hard kill comes this long after a time limit (--kill-grace in FAST_ARGS).
KILL_GRACE = 1.0

# Documented time bounds are asserted with this much extra room: CI runs the
# suites on a loaded 2-core machine, where a process can wait a few hundred ms for a CPU.
CI_SLACK = 1.0


def executions(path) -> Counter:
    """How many times each task id ran, from an executions file ("ID PID" lines)."""
    return Counter(int(line.split()[0]) for line in read_lines(path))


class Lab(Daemons):
    """What the `lab` fixture yields: Daemons whose daemons run FAULT_APP by default and
    wait longer by default (20 s for daemon.ready and for an exit, 15 s for an event)."""

    app = FAULT_APP
    timeouts = {"ready": 20.0, "event": 15.0, "stop": 20.0}

    def daemon(self, *args, **kwargs):
        """Start `liteqd --app FAULT_APP [fast flags] ARGS` and wait for daemon.ready
        (see Daemons.start)."""
        return self.start(*args, **kwargs)


@pytest.fixture
def lab(db, workdir, monkeypatch):
    """A Lab on conftest's fresh database (each backend) in `workdir`; see
    daemon_helpers.running()."""
    with running(Lab(db, workdir), monkeypatch) as ds:
        yield ds


@pytest.fixture
def fault_app(lab):
    """tests/apps/fault_app.py loaded in the test process (for .delay())."""
    return load_app_module(FAULT_APP)
