"""Helpers for the tests that run real daemons: start them, read their JSON logs, talk to
their control socket, read the task table, and reap everything.

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
import http.client
import importlib.util
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter

import psutil
import pytest

from liteq import core, backends

from . import APPS, REPO

APP = os.path.join(APPS, "daemon_app.py")
PYTHON = sys.executable
LITEQCTL = os.path.join(os.path.dirname(PYTHON), "liteqctl")
TAG_VAR = "LITEQ_TEST_TAG"
APP_MODULE_PREFIX = "_liteq_test_app_"

# Fast settings: heartbeats every 0.5 s, a dead worker is stale after 2 s,
# the hard kill comes 1 s after a time limit, and the fallback poll runs every 0.5 s.
FAST_ARGS = ["--log-format", "json", "--heartbeat-interval", "0.5", "--stale-after", "2",
             "--kill-grace", "1", "--poll-interval", "0.5"]


# ---- waiting --------------------------------------------------------------------------------

def wait_for(predicate, timeout, message=None, interval=0.02):
    """Poll `predicate` until it returns something truthy (returned); fail the test after
    `timeout` s with `message` (a string, or a callable that makes one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(text or f"condition not met within {timeout} s: {predicate}")
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


def wait_gone(procs, timeout=10.0):
    """Wait until every psutil.Process in `procs` is gone (or a zombie); bounded.
    Returns those still running."""
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending:
        pending = [p for p in pending if not is_gone(p)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return pending


# ---- files and processes ----------------------------------------------------------------------

def read_lines(path) -> list:
    """The complete non-empty lines of a file ([] when it does not exist yet); a last line
    without its newline is still being written and is left out."""
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    if not data.endswith("\n"):
        data = data[: data.rfind("\n") + 1]
    return [line for line in data.split("\n") if line.strip()]


def cpu_seconds(p) -> float:
    """User plus system CPU time of a process (psutil.Process)."""
    t = p.cpu_times()
    return t.user + t.system


def fd_count(pid) -> int:
    """Open file descriptors of a process (entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _no_core_dumps():
    # Segfault tests must not leave core files behind.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def kill_tree(proc, ps=None, seen=()):
    """SIGKILL a Popen that leads its own session: its process group, every psutil.Process
    in `seen`, and the live descendants of `ps` (its psutil.Process); then wait, bounded,
    for all of them. Returns those still running."""
    victims = list(seen)
    if ps is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            victims += ps.children(recursive=True)
    kill_group(proc)
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.send_signal(signal.SIGKILL)    # checks the start time: no pid reuse
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return wait_gone(victims, timeout=10)


def kill_group(proc):
    """SIGKILL the process group a Popen leads (it was started in a session of its own),
    but only while its leader is not reaped: until then the pid is the leader's, and
    after it the kernel may give it to any new process (pid_max can be as low as
    32768), which may lead a group of its own, another test's or another run's. What
    the group had left is still found by the test's tag and by the descendants seen."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def tagged_processes(tag) -> list:
    """Every live process (other than this one) whose environment carries `tag`."""
    found = []
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if p.environ().get(TAG_VAR) == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            pass
    return found


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
        kwargs.setdefault("preexec_fn", _no_core_dumps)
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


# ---- the web panel ----------------------------------------------------------------------

class Monitor:
    """A real `liteq monitor` process on a free port, started through `daemons` (a
    Daemons, which kills it afterwards) with extra ARGS; its stderr goes to a file."""

    def __init__(self, daemons, *args, env=None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.err_path = daemons.path(f"monitor-{self.port}.err")
        with open(self.err_path, "wb") as err:
            self.proc = daemons.popen([PYTHON, "-m", "liteq.cli", "monitor", "--port",
                                       str(self.port), *args], env=env,
                                      stdout=subprocess.DEVNULL, stderr=err)

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def stderr(self):
        """What it printed so far (its log)."""
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_listening(self):
        """Wait until it accepts connections (fail, showing its stderr, if it exits)."""
        def up():
            assert self.proc.poll() is None, f"liteq monitor exited:\n{self.stderr()}"
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return True
            return False
        wait_for(up, 20, lambda: f"liteq monitor is not listening:\n{self.stderr()}")
        return self

    def login_url(self):
        """The login URL it printed (None when it printed none)."""
        found = re.search(r"Open this address to log in: (http://\S+)", self.stderr())
        return found.group(1) if found else None

    def request(self, path, method="GET", headers=None, body=None):
        """(status, headers as a list of (name, value), body text); no redirects followed."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read().decode()
        finally:
            conn.close()


# ---- the control socket, raw ------------------------------------------------------------------

def connect(path, timeout=10.0):
    """Connect like a patient client: wait while the daemon's accept backlog is full
    (a Unix socket that is not blocking fails with EAGAIN then). Non-blocking result."""
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    while True:
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            if time.monotonic() >= deadline:
                s.close()
                raise
            time.sleep(0.002)
        except OSError:
            s.close()
            raise


class Client:
    """A raw connection to the control socket: JSON lines out, JSON lines in."""

    def __init__(self, path, timeout=5.0):
        self.sock = connect(path, timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self):
        """The next reply line as a dict; ConnectionError on EOF before a full line."""
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"connection closed; unanswered bytes {self.buf[:200]!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, op, **args):
        self.send({"op": op, **args})
        return self.recv()

    def at_eof(self):
        """True when the server closed the connection (after any pending bytes)."""
        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not data:
                return True
            self.buf += data


def request(path, op, **args):
    """One request on a connection of its own; the reply as a dict."""
    with Client(path) as c:
        return c.request(op, **args)


# ---- the task table, read from the test process --------------------------------------------

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
    return wait_for(check, timeout,
                    lambda: f"task {task_id} not {statuses} within {timeout} s: "
                            f"{last.get('st')}\n" + (daemons.dump() if daemons else ""))


def _wait_rows(fetch, ids, statuses, timeout, dump):
    """Wait until fetch() gives a row for each of `ids`, each with one of `statuses`."""
    statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    last = {}

    def check():
        rows = last["rows"] = fetch()
        if len(rows) == len(ids) and all(r["status"] in statuses for r in rows.values()):
            return rows
        return None

    def failure():
        rows = last["rows"]
        counts = Counter(r["status"] for r in rows.values())
        return (f"{len(ids)} tasks not all {statuses} within {timeout} s: {dict(counts)}, "
                f"{len(ids) - len(rows)} missing\n" + (dump() if dump else ""))
    return wait_for(check, timeout, failure, interval=0.05)


def wait_all(task_ids, statuses=("done", "failed", "cancelled"), timeout=30.0, daemons=None):
    """Wait until every task has one of `statuses` (read with this thread's cached
    backend); returns {id: row}."""
    store = backends.get_backend()
    ids = list(task_ids)
    return _wait_rows(lambda: {r["id"]: r for r in store.get_tasks(ids)}, ids, statuses,
                      timeout, daemons.dump if daemons else None)


@contextlib.contextmanager
def fresh_backend(db):
    """A backend of its own on `db` (a path or URL), closed afterwards: what it reads is
    what another process would see, never the test's cached connection."""
    backend = backends.open_backend(db)
    try:
        yield backend
    finally:
        backend.close()


def all_tasks(db) -> list:
    """Every task row, oldest first (a fresh backend)."""
    with fresh_backend(db) as backend:
        limit = backend.count_tasks() + 1000
        while True:  # a short page is all of them, even with producers still writing
            rows = backend.find_tasks(limit=limit)
            if len(rows) < limit:
                return sorted(rows, key=lambda r: r["id"])
            limit *= 2


def task_rows(db, ids) -> dict:
    """The rows of tasks `ids`, {id: row} (a fresh backend); missing ids are left out."""
    with fresh_backend(db) as backend:
        return {r["id"]: r for r in backend.get_tasks(list(ids))}


def worker_rows(db) -> list:
    """Every worker row (a fresh backend)."""
    with fresh_backend(db) as backend:
        return backend.list_workers()


def task_row(db, task_id):
    """One task's row (a fresh backend), or None."""
    with fresh_backend(db) as backend:
        return backend.get_task(task_id)


def count_tasks(db) -> int:
    """How many tasks the database holds (a fresh backend)."""
    with fresh_backend(db) as backend:
        return backend.count_tasks()


def status_counts(db, ids=None) -> dict:
    """{status: count} over all tasks, or over `ids` (a fresh backend)."""
    if ids is None:
        with fresh_backend(db) as backend:
            counts = Counter()
            for s in backend.queue_stats():
                counts[s["status"]] += s["count"]
            return {k: v for k, v in counts.items() if v}
    return dict(Counter(r["status"] for r in task_rows(db, ids).values()))


def wait_statuses(db, ids, statuses=("done", "failed", "cancelled"), timeout=30.0, dump=None):
    """Wait until every task in `ids` has one of `statuses`, read on fresh backends
    (never the test's cached one); returns {id: row}. `dump`: a callable whose text
    is shown on failure."""
    ids = list(ids)
    return _wait_rows(lambda: task_rows(db, ids), ids, statuses, timeout, dump)


def iso_seconds(text) -> float:
    """Epoch seconds of an ISO-8601 time from get_task_status."""
    from datetime import datetime
    return datetime.fromisoformat(text).timestamp()


# ---- writing rows directly ------------------------------------------------------------------

def age_heartbeat(db, worker_id, seconds):
    """Make worker `worker_id`'s last heartbeat `seconds` older than it is.

    No backend operation can: a heartbeat is always "now" by the database's clock, and
    a test cannot wait minutes for a worker to go stale (get_active_workers looks 15 s
    back). This is the one place tests write SQL, once per backend: SQLite through
    sqlite3, PostgreSQL through psycopg (its column may be epoch seconds or a timestamp).
    """
    if backends.is_postgres(db):
        import psycopg
        with psycopg.connect(db, autocommit=True) as conn:
            kind = conn.execute(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = 'workers' AND column_name = "
                "'last_heartbeat'").fetchone()[0]
            shift = "make_interval(secs => %s)" if "timestamp" in kind else "%s"
            changed = conn.execute(f"UPDATE workers SET last_heartbeat = last_heartbeat - "
                                   f"{shift} WHERE worker_id = %s",
                                   (seconds, worker_id)).rowcount
    else:
        conn = sqlite3.connect(backends.sqlite_path(db), timeout=30)
        try:
            with conn:
                changed = conn.execute("UPDATE workers SET last_heartbeat = last_heartbeat - ? "
                                       "WHERE worker_id = ?", (seconds, worker_id)).rowcount
        finally:
            conn.close()
    assert changed == 1, f"no worker row {worker_id!r} to age"


def put_task(backend, name, payload, run_at=None, delay=None, **options) -> int:
    """Enqueue a raw task row through `backend` (a name no app may register, a payload that
    is not JSON, ...): what .delay() would insert, with any TaskOptions field set."""
    from liteq.taskspec import NewTask, TaskOptions
    return backend.enqueue(NewTask(name, payload, TaskOptions.build(**options), run_at=run_at,
                                   delay=delay))


def put_tasks(backend, name, args_json, count, **options) -> list:
    """Enqueue `count` calls of `name` in one transaction (args_json: a JSON array with each
    call's positional arguments)."""
    from liteq.taskspec import NewTasks, TaskOptions
    return backend.enqueue_many(NewTasks(name, args_json, count, TaskOptions.build(**options)))
