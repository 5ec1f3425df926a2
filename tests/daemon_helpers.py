"""Helpers for the liteqd tests: start real daemons, read their JSON logs, reap everything.

A `Daemon` is a real `liteqd` (or `liteq worker`, or a Worker() script) started with
subprocess.Popen in its own session. Its stdout (the JSON log) and stderr go to
files in the test's temp dir. Every process a test starts carries a per-test tag
in its environment, so the `daemons` fixture can find and SIGKILL all of them in
teardown, even grandchildren that were reparented after their parent died.

Every wait here polls with a deadline; nothing sleeps unbounded.
"""

import contextlib
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from liteq import core, storage

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
APPS = os.path.join(TESTS, "apps")
APP = os.path.join(APPS, "daemon_app.py")
PYTHON = sys.executable
TAG_VAR = "LITEQ_TEST_TAG"

# Fast settings: heartbeats every 0.5 s, a dead worker is stale after 2 s,
# the hard kill comes 1 s after a time limit.
FAST_ARGS = ["--log-format", "json", "--heartbeat-interval", "0.5", "--stale-after", "2",
             "--kill-grace", "1", "--poll-interval", "0.5"]


def wait_for(predicate, timeout, interval=0.02, message=None):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(message or f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def is_gone(p) -> bool:
    """True when a psutil.Process (or pid) is no longer running (a zombie counts as gone)."""
    if isinstance(p, int):
        try:
            p = psutil.Process(p)
        except psutil.NoSuchProcess:
            return True
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_lines(path) -> list:
    """The non-empty lines of a file, or [] when it does not exist yet."""
    try:
        with open(path) as f:
            return [line for line in f.read().splitlines() if line]
    except FileNotFoundError:
        return []


def cpu_seconds(p) -> float:
    """User plus system CPU time of a process (psutil.Process)."""
    t = p.cpu_times()
    return t.user + t.system


def _no_core_dumps():
    # Segfault tests must not leave core files behind.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def load_app_module(path=APP, name=None):
    """Import an app file in the test process (to call .delay()); returns the module.

    It gets a fresh module name each time so tests never share module state; the
    `daemons` fixture restores the task registry afterwards.
    """
    name = name or f"_liteq_test_app_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


class Daemon:
    """One daemon process started by a test."""

    def __init__(self, workdir, env, argv, label):
        self.workdir = workdir
        self.env = env
        self.argv = argv
        self.label = label
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
                                         preexec_fn=_no_core_dumps)
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

    def wait_ready(self, timeout=15.0):
        """Wait for the daemon.ready log event; fail (showing the logs) if it exits first."""
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

    def stop(self, sig=signal.SIGTERM, timeout=15.0) -> int:
        """Send `sig` and wait for the exit code."""
        if self.alive():
            self.send(sig)
        return self.wait(timeout)

    def wait(self, timeout) -> int:
        """Wait for the daemon to exit; fail the test if it does not within `timeout`."""
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

    # ---- processes ------------------------------------------------------------

    def children(self) -> list:
        """The daemon's live direct children (its worker processes), as psutil.Process."""
        if self.ps is None:
            return []
        try:
            kids = self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for k in kids:
            self.seen.setdefault(k.pid, k)
        direct = []
        for k in kids:
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
        out = []
        for c in self.children():
            title = self.title(c)
            if title.startswith("liteqd: worker"):
                out.append(c)
        return out

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
            pids = {c.pid for c in self.workers()}
            return pids if len(pids) == n else None
        return wait_for(check, timeout, message=f"{self.label}: never had exactly {n} "
                        f"children (now {self.child_pids()})\n{self.dump()}")

    # ---- logs ----------------------------------------------------------------------

    def log_lines(self) -> list:
        """Complete lines of the daemon's stdout so far."""
        try:
            with open(self.log_path, "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        if not data.endswith("\n"):
            data = data[: data.rfind("\n") + 1]  # the last line is still being written
        return [line for line in data.split("\n") if line.strip()]

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

    def wait_event(self, event, timeout=10.0, **match):
        """Wait for the first event `event` with these fields; returns it."""
        def check():
            found = self.events(event, **match)
            if found:
                return found[0]
            return None
        return wait_for(check, timeout, message=f"{self.label}: no {event} {match} within "
                        f"{timeout} s\n{self.dump()}")

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

    # ---- clean-up -----------------------------------------------------------------

    def cleanup(self):
        """SIGKILL the daemon's process group and every descendant; wait for them."""
        if self.proc is None:
            return
        victims = list(self.seen.values())
        if self.ps is not None:
            try:
                victims += self.ps.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session and group
        for p in victims:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.send_signal(signal.SIGKILL)        # checks the start time: no pid reuse
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        wait_gone(victims, timeout=10)


def wait_gone(procs, timeout):
    """Wait until every psutil.Process in `procs` is gone (or a zombie); bounded."""
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not is_gone(p)]
        if pending:
            time.sleep(0.02)
    return pending


def tagged_processes(tag) -> list:
    """Every live process whose environment carries this test's tag."""
    found = []
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if p.environ().get(TAG_VAR) == tag:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            pass
    return found


class Daemons:
    """What the `daemons` fixture yields: starts daemons and other processes for one test."""

    def __init__(self, db_path):
        self.db = db_path
        self.workdir = os.path.dirname(db_path)
        self.socket = os.environ["LITEQ_SOCKET"]
        self.tag = uuid.uuid4().hex
        self.started = []
        self.popens = []

    def env(self, extra=None) -> dict:
        """The environment for a process of this test: LITEQ_DB/LITEQ_SOCKET and the tag."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LITEQ_")}
        env.update(LITEQ_DB=self.db, LITEQ_SOCKET=self.socket, PYTHONUNBUFFERED="1")
        env[TAG_VAR] = self.tag
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env.update(extra or {})
        return env

    def path(self, name) -> str:
        """A file path in this test's temp dir."""
        return os.path.join(self.workdir, name)

    def make(self, *args, app=APP, cmd=None, env=None, fast=True) -> Daemon:
        """A Daemon (not started): `liteqd --app APP [fast flags] ARGS`, or `cmd` as given."""
        if cmd is None:
            cmd = [PYTHON, "-m", "liteqd.cli"]
            if app is not None:
                cmd += ["--app", app]
            if fast:
                cmd += FAST_ARGS
            cmd += list(args)
        d = Daemon(self.workdir, self.env(env), cmd, f"daemon{len(self.started) + 1}")
        self.started.append(d)
        return d

    def start(self, *args, ready=True, **kwargs) -> Daemon:
        """Start a daemon and (by default) wait for daemon.ready."""
        d = self.make(*args, **kwargs).start()
        if ready:
            d.wait_ready()
        return d

    def popen(self, argv, **kwargs) -> subprocess.Popen:
        """Start another process of this test (tagged, in its own session, reaped later)."""
        kwargs.setdefault("env", self.env())
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, **kwargs)
        self.popens.append(p)
        return p

    def cleanup(self):
        for d in self.started:
            try:
                d.cleanup()
            except Exception as exc:  # keep reaping the others
                print(f"cleanup of {d.label} failed: {exc!r}")
        for p in self.popens:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
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
        return "\n".join(d.dump() for d in self.started if d.proc is not None)


@pytest.fixture
def daemons(db_path, monkeypatch):
    """Start daemons for one test; all their processes are SIGKILLed and reaped afterwards.

    Builds on conftest's db_path (a fresh database in a short temp dir, with
    LITEQ_DB and LITEQ_SOCKET exported). The task registry is restored afterwards,
    and each daemon's log is printed in teardown (pytest shows it when a test fails).
    """
    for name in [k for k in os.environ if k.startswith("LITEQ_")
                 and k not in ("LITEQ_DB", "LITEQ_SOCKET")]:
        monkeypatch.delenv(name, raising=False)
    saved = dict(core.TASK_REGISTRY)
    mods = set(sys.modules)
    ds = Daemons(db_path)
    try:
        yield ds
    finally:
        try:
            print(ds.dump())
        finally:
            ds.cleanup()
            storage.forget_stores()
            core.TASK_REGISTRY.clear()
            core.TASK_REGISTRY.update(saved)
            for name in set(sys.modules) - mods:
                if name.startswith("_liteq_test_app_"):
                    sys.modules.pop(name, None)


@pytest.fixture
def app(daemons):
    """The test app (tests/apps/daemon_app.py) loaded in the test process."""
    return load_app_module(APP)


def status(task_id):
    """get_task_status with a clear failure for an unknown id."""
    from liteq import get_task_status
    st = get_task_status(task_id)
    assert st is not None, f"no task {task_id}"
    return st


def wait_status(task_id, statuses=("done", "failed", "cancelled"), timeout=15.0, daemons=None):
    """Wait until the task's status is one of `statuses`; returns the status dict."""
    if isinstance(statuses, str):
        statuses = (statuses,)
    last = {}

    def check():
        last["st"] = status(task_id)
        return last["st"] if last["st"]["status"] in statuses else None
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            pytest.fail(f"task {task_id} not {statuses} within {timeout} s: {last.get('st')}\n"
                        + (daemons.dump() if daemons else ""))
        time.sleep(0.02)


def wait_all(task_ids, statuses=("done", "failed", "cancelled"), timeout=30.0, daemons=None):
    """Wait until every task has one of `statuses`; returns {id: status dict}."""
    store = storage.get_store()
    ids = list(task_ids)
    deadline = time.monotonic() + timeout
    while True:
        rows = {r["id"]: r for r in store.get_tasks(ids)}
        if len(rows) == len(ids) and all(r["status"] in statuses for r in rows.values()):
            return rows
        if time.monotonic() >= deadline:
            counts = {}
            for r in rows.values():
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            pytest.fail(f"{len(ids)} tasks not all {statuses} within {timeout} s: {counts}\n"
                        + (daemons.dump() if daemons else ""))
        time.sleep(0.05)


def iso_seconds(text) -> float:
    """Epoch seconds of an ISO-8601 time from get_task_status."""
    from datetime import datetime
    return datetime.fromisoformat(text).timestamp()
