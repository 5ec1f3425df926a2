"""Several hosts on one machine: each liteqd runs in UTS and PID
namespaces of its own, with its own hostname and its own control socket in the test's
temp dir, on the test's PostgreSQL queue:

    unshare --uts --pid --fork --kill-child --mount-proc \\
        sh -c 'hostname host-a && exec python -m liteqd.cli ...'

The supervisor is then the namespace's init (pid 1 inside). Crashing such a host
SIGKILLs every process of its PID namespace (found by /proc/PID/ns/pid; the kernel
kills the rest once the init is gone) and waits until none is left. A namespace is
named by an inode number that the kernel hands to a new namespace as soon as the old
one is gone (other tests, other test runs on the machine), so its processes are
looked up only while its init, checked by pid and start time, still exists. `--kill-child`
makes a dead `unshare` take its namespace with it, so killing the process group the
test started is enough too; teardown also kills anything carrying the test's tag, in
any namespace (daemon_helpers.Daemons.cleanup).

A `Machine` is a host that outlives its daemons (its init is a `sleep`); daemons
started on it with `nsenter` share its hostname and PID namespace, as daemons
restarted by systemd on one real host do.

A `Host` is a daemon_helpers.Daemon whose pid is the supervisor's as this process sees
it (not the launcher's): logs, events, children and titles work as for any daemon.
"""

import contextlib
import os
import signal
import subprocess

import psutil
import pytest

from liteq import backends

from . import pg_helpers
from .daemon_helpers import FAST_ARGS, LITEQCTL, PYTHON, Daemon, running
from .processes import wait_for, wait_gone
from .fault_helpers import Lab

UNSHARE = ["unshare", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc"]

# Run first in the new namespaces: name the host ($0), then become the program.
_NAME_AND_EXEC = 'hostname "$0" || exit 97; exec "$@"'


def pid_namespace(pid):
    """The PID namespace of a process ("pid:[INODE]"), or None when it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def namespace_members(namespace, init) -> list:
    """Every live process of a PID namespace (psutil.Process), zombies left out, or []
    once `init` (its first process, a psutil.Process) is gone: the namespace is then
    gone too, and its inode number may already name an unrelated one."""
    if not _exists(init):
        return []
    found = []
    for p in psutil.process_iter():
        if pid_namespace(p.pid) != namespace:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    # The namespace lives as long as its init is not reaped (a zombie still holds it):
    # if the init still exists now, every process found above was really in it.
    return found if _exists(init) else []


def _exists(p) -> bool:
    """True while psutil.Process `p` has not been reaped (pid and start time; a zombie
    counts)."""
    try:
        return p.is_running()
    except psutil.Error:
        return False


def signal_all(procs, sig):
    """Send `sig` to each psutil.Process (psutil checks the start time: no pid reuse)."""
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.send_signal(sig)


def _stopped_or_gone(p) -> bool:
    try:
        return p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _only_child(launcher, label):
    """The process a launcher (unshare, nsenter) forked: it runs in the namespaces."""
    def forked():
        if launcher.poll() is not None:
            pytest.fail(f"{label}: the launcher exited with {launcher.returncode}")
        with contextlib.suppress(psutil.NoSuchProcess):
            kids = psutil.Process(launcher.pid).children()
            return kids[0] if kids else None
    return wait_for(forked, 10, f"{label}: the launcher never forked", interval=0.005)


class Machine:
    """A host whose namespaces outlive the daemons run on it (see Hosts.machine)."""

    def __init__(self, hostname, launcher):
        self.hostname = hostname
        self.launcher = launcher
        self.init = _only_child(launcher, hostname)
        self.namespace = wait_for(lambda: pid_namespace(self.init.pid), 5,
                                  f"{hostname}: no PID namespace")
        wait_for(lambda: self.init.cmdline()[:1] == ["sleep"], 10,
                 f"{hostname}: the machine's init never started")

    def members(self) -> list:
        """Every live process of the machine's PID namespace (none once it is gone)."""
        return namespace_members(self.namespace, self.init)


class Host(Daemon):
    """One liteqd in namespaces named `hostname`: its own (the launcher is unshare), or
    a Machine's (nsenter). Its control socket is `socket`."""

    def __init__(self, workdir, env, argv, label, timeouts, hostname, socket, machine=None):
        super().__init__(workdir, env, argv, label, timeouts)
        self.hostname = hostname
        self.socket = socket
        self.machine = machine
        self.supervisor = None  # psutil.Process of the supervisor
        self.namespace = None   # "pid:[INODE]"

    def start(self):
        super().start()
        self.supervisor = _only_child(self.proc, self.label)
        self.seen[self.supervisor.pid] = self.supervisor
        self.namespace = wait_for(lambda: pid_namespace(self.supervisor.pid), 5,
                                  f"{self.label}: no PID namespace")
        return self

    @property
    def pid(self):
        """The supervisor's pid as this process sees it (inside, it is 1 when the host
        has namespaces of its own)."""
        return self.supervisor.pid if self.supervisor is not None else self.proc.pid

    def members(self) -> list:
        """Every live process of this host's PID namespace (none once it is gone)."""
        if not self.namespace:
            return []
        init = self.machine.init if self.machine is not None else self.supervisor
        return namespace_members(self.namespace, init)

    def processes(self) -> list:
        """The supervisor and its live descendants (workers and what they started)."""
        procs = [self.supervisor] + self.descendants() if self.supervisor else []
        return [p for p in procs if not _gone(p)]

    def victims(self) -> list:
        """What a crash kills: the whole namespace, or on a Machine the daemon's tree."""
        procs = self.processes()
        if self.machine is None:
            procs += self.members()
        return procs

    def freeze(self):
        """SIGSTOP the daemon and every process under it; returns once all are stopped."""
        procs = self.victims()
        signal_all(procs, signal.SIGSTOP)
        wait_for(lambda: all(_stopped_or_gone(p) for p in procs), 10,
                 f"{self.label}: not every process stopped")
        return procs

    def thaw(self):
        """SIGCONT the daemon and every process under it."""
        signal_all(self.victims(), signal.SIGCONT)

    def _kill(self):
        """SIGKILL every victim (twice: once more for any forked meanwhile) and the
        launcher; returns those still running 10 s later."""
        first = self.victims()
        signal_all(first, signal.SIGKILL)
        signal_all(self.victims(), signal.SIGKILL)
        # unshare reaps its child, then exits (with 1 and "sigprocmask unblock failed"
        # on stderr: it cannot re-raise SIGKILL on itself; harmless).
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        left = wait_gone(first + self.victims(), timeout=10)
        return left + ([psutil.Process(self.proc.pid)] if self.alive() else [])

    def crash(self):
        """A host crash (or, on a Machine, a daemon crash): SIGKILL everything of it.
        Fails the test if any of it is still running 10 s later."""
        left = self._kill()
        if left:
            pytest.fail(f"{self.label}: still running after the crash: "
                        f"{[p.pid for p in left]}")

    def kill_everything(self):
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            self._kill()
        super().kill_everything()

    def ctl(self, *args, timeout=60) -> subprocess.CompletedProcess:
        """`liteqctl --socket SOCKET ARGS` run on this host (in its namespaces)."""
        return self.run_here([LITEQCTL, "--socket", self.socket, *args], timeout=timeout)

    def run_here(self, argv, timeout=60) -> subprocess.CompletedProcess:
        """Run `argv` to completion in this host's namespaces (text output captured)."""
        enter = ["nsenter", "--target", str(self.pid), "--uts", "--pid", "--mount", "--"]
        env = dict(self.env, LITEQ_SOCKET=self.socket)
        return subprocess.run(enter + [str(a) for a in argv], env=env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


def _gone(p) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Hosts(Lab):
    """What the `hosts` fixture yields: a fault_helpers.Lab (the fault app, longer waits)
    whose daemons run as hosts of their own (see Host)."""

    def machine(self, hostname) -> Machine:
        """Namespaces named `hostname` that stay up until the test ends (their init is a
        `sleep`); start daemons on it with host(..., on=machine)."""
        launcher = self.popen(UNSHARE + ["sh", "-c", _NAME_AND_EXEC, hostname, "sleep", "600"])
        return Machine(hostname, launcher)

    def host(self, hostname, *args, on=None, fast=True, ready=True, env=None) -> Host:
        """Start `liteqd --app FAULT_APP [fast flags] --socket LABEL.sock ARGS` as host
        `hostname` in namespaces of its own, or on the Machine `on` (whose hostname it
        takes). Waits for daemon.ready unless ready=False."""
        hostname = on.hostname if on is not None else hostname
        runs = sum(1 for d in self.daemons if getattr(d, "hostname", None) == hostname)
        label = hostname if not runs else f"{hostname}-run{runs + 1}"
        socket = self.path(f"{label}.sock")
        daemon = [PYTHON, "-m", "liteqd.cli", "--app", self.app, *(FAST_ARGS if fast else []),
                  "--socket", socket, *[str(a) for a in args]]
        if on is None:
            argv = UNSHARE + ["sh", "-c", _NAME_AND_EXEC, hostname] + daemon
        else:
            argv = ["nsenter", "--target", str(on.init.pid), "--uts", "--pid", "--mount",
                    "--"] + daemon
        h = Host(self.workdir, self.env(dict(env or {}, LITEQ_SOCKET=socket)), argv, label,
                 self.timeouts, hostname, socket, machine=on)
        self.daemons.append(h)
        h.start()
        if ready:
            h.wait_ready()
        return h


_namespaces_problem = {}


def _check_namespaces():
    """Why this machine cannot run hosts in namespaces (unshare needs root, or user
    namespaces), or None when it can."""
    if "problem" not in _namespaces_problem:
        try:
            out = subprocess.run(UNSHARE + ["true"], capture_output=True, text=True,
                                 timeout=30, stdin=subprocess.DEVNULL)
            problem = None if out.returncode == 0 else \
                f"{' '.join(UNSHARE)} true failed: {out.stderr.strip()}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"cannot run unshare: {exc}"
        _namespaces_problem["problem"] = problem
    return _namespaces_problem["problem"]


@pytest.fixture
def hosts(db, workdir, monkeypatch):
    """Hosts on conftest's fresh PostgreSQL schema; the SQLite case is skipped (an SQLite
    queue is one file on one host). Where namespaces cannot be made, the tests skip,
    or fail when the PostgreSQL cases are required (LITEQ_TEST_POSTGRES, as in CI).
    Every process is killed afterwards."""
    if not backends.is_postgres(db):
        pytest.skip("several hosts share a queue only on PostgreSQL (SQLite is one host)")
    problem = _check_namespaces()
    if problem:
        (pytest.fail if os.environ.get(pg_helpers.ENV) else pytest.skip)(
            f"several hosts are simulated with Linux namespaces: {problem}")
    with running(Hosts(db, workdir), monkeypatch) as ds:
        yield ds
