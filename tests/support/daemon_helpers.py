"""Helpers for the tests that run real daemons: start them, load their app in the test
process, run `liteq monitor`, and reap everything (processes.py kills; task_table.py
reads the queue; control_client.py speaks to a daemon's socket).

A `Daemon` is a real `liteqd` (or `liteq worker`, or a Worker() script) started with
subprocess.Popen in its own session. Its stdout (the JSON log) and stderr go to
files in the test's temp dir. Every process a test starts carries a per-test tag
in its environment, so teardown can find and SIGKILL all of them, even
grandchildren that were reparented after their parent died: the process group,
every descendant ever seen (psutil, which checks start times, so a reused pid is
never hit), then anything still carrying the tag.

`Daemons` (the `daemons` fixture) starts the processes of one test; the fault suites
(fault_helpers.py) build on it, tests/daemon/test_control_channel.py and
tests/deployment/test_systemd.py on `TempDaemons`. `running()` is the set-up and
teardown they all share.

Every wait here polls with a deadline; nothing sleeps unbounded.
"""

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from liteq import core, backends

from . import APPS, REPO
from .processes import (TAG_VAR, fd_count, kill_group, kill_tree, no_core_dumps, read_lines,
                        tagged_processes, wait_for, wait_gone)

APP = os.path.join(APPS, "daemon_app.py")
PYTHON = sys.executable
LITEQCTL = os.path.join(os.path.dirname(PYTHON), "liteqctl")
APP_MODULE_PREFIX = "_liteq_test_app_"

# Fast settings: heartbeats every 0.5 s, a dead worker is stale after 2 s,
# the hard kill comes 1 s after a time limit, and the fallback poll runs every 0.5 s.
FAST_ARGS = ["--log-format", "json", "--heartbeat-interval", "0.5", "--stale-after", "2",
             "--kill-grace", "1", "--poll-interval", "0.5"]


# ---- loading an app in the test process ---------------------------------------------------

def load_app_module(path=APP, name=None):
    """Import an app file in the test process (to call .delay()); returns the module.

    It gets a fresh module name each time so tests never share module state;
    `running()` drops these modules and restores the task registry afterwards.
    """
    name = name or f"{APP_MODULE_PREFIX}{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


@contextlib.contextmanager
def registry_restored():
    """The task registry as it was before, whatever the block registered."""
    saved = dict(core.TASK_REGISTRY)
    try:
        yield core.TASK_REGISTRY
    finally:
        core.TASK_REGISTRY.clear()
        core.TASK_REGISTRY.update(saved)


# ---- daemons ---------------------------------------------------------------------------------

class Daemon:
    """One daemon process started by a test.

    `timeouts` are the default bounds (seconds) of wait_ready() ("ready"),
    wait_event() ("event"), and stop() and wait() ("stop").
    """

    def __init__(self, workdir, env, argv, label, timeouts):
        self.workdir = workdir
        self.env = env
        self.argv = argv
        self.label = label
        self.timeouts = timeouts
        self.log_path = os.path.join(workdir, f"{label}.log")
        self.err_path = os.path.join(workdir, f"{label}.err")
        self.proc = None
        self.ps = None          # psutil.Process of the daemon
        self.seen = {}          # pid -> psutil.Process of every descendant ever seen

    # ---- life cycle ---------------------------------------------------------

    def start(self):
        with open(self.log_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         cwd=self.workdir, start_new_session=True,
                                         preexec_fn=no_core_dumps)
        try:
            self.ps = psutil.Process(self.proc.pid)
        except psutil.NoSuchProcess:
            self.ps = None
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout=None):
        """Wait for the daemon.ready log event; fail (showing the logs) if it exits first."""
        timeout = self.timeouts["ready"] if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = self.events("daemon.ready")
            if ready:
                self.children()  # remember the first children
                return ready[0]
            if not self.alive():
                pytest.fail(f"{self.label} exited with {self.proc.returncode} before it was "
                            f"ready\n{self.dump()}")
            time.sleep(0.02)
        pytest.fail(f"{self.label} not ready within {timeout} s\n{self.dump()}")

    def send(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=None) -> int:
        """Send `sig` and wait for the exit code."""
        if self.alive():
            self.send(sig)
        return self.wait(timeout)

    def wait(self, timeout=None) -> int:
        """Wait for the daemon to exit; fail the test if it does not within `timeout`."""
        timeout = self.timeouts["stop"] if timeout is None else timeout
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.label} still running {timeout} s later\n{self.dump()}")

    def kill(self):
        """SIGKILL the daemon alone (its children are left to notice)."""
        self.children()
        if self.alive():
            self.send(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def kill_everything(self):
        """SIGKILL the daemon's process group and every descendant; wait for them."""
        if self.proc is None:
            return
        kill_tree(self.proc, self.ps, self.seen.values())

    # ---- processes ------------------------------------------------------------

    def descendants(self) -> list:
        """Every live descendant (psutil.Process); each is remembered in `seen`."""
        if self.ps is None:
            return []
        try:
            kids = self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for k in kids:
            self.seen.setdefault(k.pid, k)
        return kids

    def children(self) -> list:
        """The daemon's live, non-zombie direct children (its workers and anything it
        adopted), as psutil.Process."""
        direct = []
        for k in self.descendants():
            try:
                if k.ppid() == self.pid and k.status() != psutil.STATUS_ZOMBIE:
                    direct.append(k)
            except psutil.NoSuchProcess:
                pass
        return direct

    def child_pids(self) -> set:
        return {c.pid for c in self.children()}

    def workers(self) -> list:
        """Children whose title says they are liteqd workers."""
        return [c for c in self.children() if self.title(c).startswith("liteqd: worker")]

    def worker_pids(self) -> set:
        return {w.pid for w in self.workers()}

    def zombies(self) -> list:
        """Descendants that are zombies (exited, not reaped yet)."""
        out = []
        for k in self.descendants():
            try:
                if k.status() == psutil.STATUS_ZOMBIE:
                    out.append(k)
            except psutil.NoSuchProcess:
                pass
        return out

    def fds(self) -> int:
        return fd_count(self.pid)

    @staticmethod
    def title(p) -> str:
        """A process's title (setproctitle rewrites the command line)."""
        try:
            return " ".join(p.cmdline()).strip()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return ""

    def wait_children(self, n, timeout=10.0):
        """Wait until exactly `n` idle-or-busy workers are up; returns their pids."""
        def check():
            pids = self.worker_pids()
            return pids if len(pids) == n else None
        return wait_for(check, timeout, lambda: f"{self.label}: never had exactly {n} "
                        f"children (now {self.child_pids()})\n{self.dump()}")

    # ---- logs ----------------------------------------------------------------------

    def log_lines(self) -> list:
        """Complete lines of the daemon's stdout so far."""
        return read_lines(self.log_path)

    def events(self, event=None, **match) -> list:
        """Parsed JSON log events, optionally only those called `event` with these fields."""
        out = []
        for line in self.log_lines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            if event is not None and ev.get("event") != event:
                continue
            if all(ev.get(k) == v for k, v in match.items()):
                out.append(ev)
        return out

    def wait_event(self, event, timeout=None, **match):
        """Wait for the first event `event` with these fields; returns it."""
        timeout = self.timeouts["event"] if timeout is None else timeout
        return wait_for(lambda: (self.events(event, **match) or [None])[0], timeout,
                        lambda: f"{self.label}: no {event} {match} within {timeout} s\n"
                                f"{self.dump()}")

    def stderr(self) -> str:
        try:
            with open(self.err_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def dump(self, last=150) -> str:
        lines = self.log_lines()
        return (f"--- {self.label} (pid {self.proc.pid if self.proc else '?'}, "
                f"exit {self.proc.poll() if self.proc else '?'}) stdout, last {last} of "
                f"{len(lines)} lines ---\n" + "\n".join(lines[-last:]) +
                f"\n--- {self.label} stderr ---\n{self.stderr()[-5000:]}")


class Daemons:
    """What the `daemons` fixture yields: starts daemons and other processes for one test.

    `db` is the database (an SQLite path or a PostgreSQL URL, given to the daemons
    unchanged), `workdir` the test's temp dir (logs, files the tasks write), and
    `socket` the control socket (default: $LITEQ_SOCKET). Subclasses set another
    default `app` or other default `timeouts` (see Daemon).
    """

    app = APP
    timeouts = {"ready": 15.0, "event": 10.0, "stop": 15.0}

    def __init__(self, db, workdir, socket=None):
        self.db = db
        self.workdir = workdir
        self.socket = socket or os.environ["LITEQ_SOCKET"]
        self.tag = uuid.uuid4().hex
        self.daemons = []
        self.popens = []

    def env(self, extra=None) -> dict:
        """The environment for a process of this test: no stray LITEQ_*, LITEQ_DB and
        LITEQ_SOCKET, the tag, then `extra` (a None value removes that variable)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LITEQ_")}
        env.update(LITEQ_DB=self.db, LITEQ_SOCKET=self.socket, PYTHONUNBUFFERED="1")
        env[TAG_VAR] = self.tag
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env.update(extra or {})
        return {k: v for k, v in env.items() if v is not None}

    def path(self, name) -> str:
        """A file path in this test's temp dir."""
        return os.path.join(self.workdir, name)

    def make(self, *args, app=None, cmd=None, env=None, fast=True) -> Daemon:
        """A Daemon (not started): `liteqd --app APP [fast flags] ARGS` (APP: this set's
        app unless given), or `cmd` as given; `env`: extra variables (see env())."""
        if cmd is None:
            cmd = [PYTHON, "-m", "liteqd.cli", "--app", app or self.app]
            if fast:
                cmd += FAST_ARGS
            cmd += [str(a) for a in args]
        d = Daemon(self.workdir, self.env(env), cmd, f"daemon{len(self.daemons) + 1}",
                   self.timeouts)
        self.daemons.append(d)
        return d

    def start(self, *args, ready=True, **kwargs) -> Daemon:
        """Start a daemon (see make()) and, by default, wait for daemon.ready."""
        d = self.make(*args, **kwargs).start()
        if ready:
            d.wait_ready()
        return d

    def popen(self, argv, env=None, **kwargs) -> subprocess.Popen:
        """Start another process of this test (tagged, in its own session, in the temp
        dir, killed in teardown); `env`: extra variables (see env())."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("cwd", self.workdir)
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("preexec_fn", no_core_dumps)
        p = subprocess.Popen(argv, env=self.env(env), **kwargs)
        self.popens.append(p)
        return p

    def run(self, argv, env=None, timeout=60, **kwargs) -> subprocess.CompletedProcess:
        """Run a process to completion (text output captured); fail if it overruns
        (teardown kills it)."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        p = self.popen(argv, env=env, text=True, **kwargs)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{argv} did not finish within {timeout} s")
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def liteqctl(self, *args, timeout=60) -> subprocess.CompletedProcess:
        """Run liteqctl ARGS in this test's environment (see run())."""
        return self.run([LITEQCTL, *[str(a) for a in args]], timeout=timeout)

    def cleanup(self):
        for d in self.daemons:
            try:
                d.kill_everything()
            except Exception as exc:  # keep reaping the others
                print(f"cleanup of {d.label} failed: {exc!r}")
        for p in self.popens:
            kill_group(p)
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        # Anything still carrying the tag (orphans reparented away from a dead daemon).
        leftovers = tagged_processes(self.tag)
        for p in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.send_signal(signal.SIGKILL)
        stuck = wait_gone(leftovers, timeout=10)
        if stuck:
            print(f"processes still running after SIGKILL: {[p.pid for p in stuck]}")

    def dump(self) -> str:
        return "\n".join(d.dump() for d in self.daemons if d.proc is not None)


class TempDaemons(Daemons):
    """Daemons of the app file `app_path` on `db` (default: q.db in `tmp`) with d.sock in
    `tmp` (a short temp dir the test made), started with --db and --socket given;
    daemon.ready and an exit are waited for up to 20 s by default."""

    timeouts = dict(Daemons.timeouts, ready=20.0, stop=20.0)

    def __init__(self, tmp, app_path, db=None):
        super().__init__(db or os.path.join(tmp, "q.db"), tmp,
                         socket=os.path.join(tmp, "d.sock"))
        self.tmp = tmp
        self.sock = self.socket
        self.app_path = self.app = app_path

    def daemon(self, *args, db=None, sock="default", env_extra=None, ready=True):
        """Start `liteqd --app APP --db DB --socket SOCK --log-format json ARGS`; with
        sock=None, neither --socket nor LITEQ_SOCKET."""
        db = db or self.db
        sock = self.sock if sock == "default" else sock
        flags = ["--db", db] + (["--socket", sock] if sock else []) + ["--log-format", "json"]
        env = {} if sock else {"LITEQ_SOCKET": None}
        env.update(env_extra or {}, LITEQ_DB=db)
        return self.start(*flags, *args, fast=False, env=env, ready=ready)


@contextlib.contextmanager
def running(ds, monkeypatch):
    """Set up and tear down one test's `ds` (a Daemons).

    Exports only its LITEQ_DB and LITEQ_SOCKET of all LITEQ_* variables, with no
    cached backend. Afterwards each daemon's log is printed (pytest shows it when a
    test fails), every process is SIGKILLed and reaped, cached backends are dropped,
    and the task registry and the app modules loaded meanwhile are restored.
    """
    for name in [k for k in os.environ if k.startswith("LITEQ_")]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LITEQ_DB", ds.db)
    monkeypatch.setenv("LITEQ_SOCKET", ds.socket)
    backends.forget_backends()
    mods = set(sys.modules)
    try:
        with registry_restored():
            try:
                yield ds
            finally:
                try:
                    print(ds.dump())
                finally:
                    ds.cleanup()
                    backends.forget_backends()
    finally:
        for name in set(sys.modules) - mods:
            if name.startswith(APP_MODULE_PREFIX):
                sys.modules.pop(name, None)


@pytest.fixture
def daemons(db, workdir, monkeypatch):
    """Start daemons for one test; all their processes are SIGKILLed and reaped afterwards.

    Builds on conftest's `db` (this test's queue on each backend, with LITEQ_DB and
    LITEQ_SOCKET exported) and `workdir`; see running().
    """
    with running(Daemons(db, workdir), monkeypatch) as ds:
        yield ds


@pytest.fixture
def app(daemons):
    """The test app (tests/apps/daemon_app.py) loaded in the test process."""
    return load_app_module(APP)
