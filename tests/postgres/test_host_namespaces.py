"""The simulated hosts of tests/support/hosts.py never act on a namespace that is not theirs.

A PID namespace is named by an inode number that the kernel gives to a new namespace
as soon as the old one is gone. A crashed host's helpers must then find nothing: had
they gone by the number alone, a teardown would SIGKILL the processes of a newer,
unrelated namespace (another test's hosts, or another test run's on the machine).
"""

import re
import time

import pytest

from support.processes import is_gone, wait_for
from support.hosts import _only_child, pid_namespace

# New PID namespaces made, at most, until one gets the crashed host's number back.
TRIES = 60


def _number(namespace) -> int:
    return int(re.search(r"\d+", namespace).group())


def _namespace_numbered(hosts, number):
    """A `sleep` in a new PID namespace named `number` (psutil.Process), or None.

    The kernel gives a new namespace the lowest free number, a moment after the last
    process of the old one is reaped (RCU): namespaces that got a lower number are
    kept, so that the next one gets a higher one; a higher one is ended, to free it.
    """
    for _ in range(TRIES):
        time.sleep(0.05)
        launcher = hosts.popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "600"])
        init = _only_child(launcher, "a new PID namespace")
        got = _started_namespace(init)
        if got == number:
            return init
        if _number(got) > _number(number):
            init.kill()
            launcher.wait(timeout=10)
    return None


def _started_namespace(init) -> str:
    """The PID namespace of `init` once it runs `sleep`."""
    return wait_for(lambda: init.cmdline()[:1] == ["sleep"] and pid_namespace(init.pid), 10,
                    "the new namespace's init never started")


def test_a_crashed_hosts_helpers_leave_a_new_namespace_with_its_number_alone(hosts):
    old = hosts.host("old-host", "--concurrency", "1")
    number = old.namespace
    old.crash()
    newer = _namespace_numbered(hosts, number)
    if newer is None:
        pytest.skip(f"the kernel did not hand {number} out again in {TRIES} namespaces")
    assert old.members() == []
    assert newer.pid not in {p.pid for p in old.victims()}
    old.kill_everything()
    assert not is_gone(newer), "the old host's teardown killed the new namespace's process"
