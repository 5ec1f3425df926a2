"""Helpers for the "prove it" suites (tests/test_faults.py, test_bad_input.py, test_load.py).

A `Lab` (the `lab` fixture) starts real processes for one test: `liteqd` daemons,
producers, lock holders. Each runs in a session of its own (start_new_session) with
a per-test tag in its environment, its stdout/stderr in files in the test's temp
dir. Teardown SIGKILLs every process group it started, every descendant it ever saw
(psutil, which checks start times, so a reused pid is never hit), and anything else
still carrying the tag (grandchildren reparented after their parent died).

Every wait polls with a deadline; nothing sleeps unbounded.
"""

import contextlib
import importlib.util
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter

import psutil
import pytest

from liteq import core, storage

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
APPS = os.path.join(TESTS, "apps")
FAULT_APP = os.path.join(APPS, "fault_app.py")
PY = sys.executable
LITEQCTL = os.path.join(os.path.dirname(PY), "liteqctl")
TAG_VAR = "LITEQ_FAULT_TEST_TAG"

# Heartbeats every 0.5 s, a silent worker is stale after 2 s, the hard kill comes
# 1 s after a time limit, and the fallback poll runs every 0.5 s.
FAST_ARGS = ["--log-format", "json", "--heartbeat-interval", "0.5", "--stale-after", "2",
             "--kill-grace", "1", "--poll-interval", "0.5"]
KILL_GRACE = 1.0

# Time bounds the issue states are asserted with this much extra room: CI runs the
# suites on a loaded 2-core machine, where a process can wait a few hundred ms for a CPU.
CI_SLACK = 1.0


# ---- waiting ------------------------------------------------------------------------------

def wait_for(predicate, timeout, message=None, interval=0.02):
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(text or f"condition not met within {timeout} s")
        time.sleep(interval)


def is_gone(p) -> bool:
    """True when a psutil.Process (or pid) no longer runs (a zombie counts as gone)."""
    if isinstance(p, int):
        try:
            p = psutil.Process(p)
        except psutil.NoSuchProcess:
            return True
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs, timeout):
    """Wait until every psutil.Process in `procs` is gone; returns those still running."""
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending:
        pending = [p for p in pending if not is_gone(p)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return pending


def read_lines(path) -> list:
    """The complete non-empty lines of a file ([] when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    if not data.endswith("\n"):
        data = data[: data.rfind("\n") + 1]
    return [line for line in data.split("\n") if line.strip()]


def executions(path) -> Counter:
    """How many times each task id ran, from an executions file ("ID PID" lines)."""
    return Counter(int(line.split()[0]) for line in read_lines(path))


def fd_count(pid) -> int:
    """Open file descriptors of a process (entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(p) -> float:
    """User plus system CPU time of a psutil.Process."""
    t = p.cpu_times()
    return t.user + t.system


# ---- the database, read from the test process ---------------------------------------------

def db_rows(db, sql, params=()):
    """Rows of a read on a fresh connection (never the test's cached Store)."""
    conn = sqlite3.connect(db, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def status_counts(db, ids=None) -> dict:
    """{status: count} over all tasks, or over `ids`."""
    if ids is None:
        rows = db_rows(db, "SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
        return {r["status"]: r["n"] for r in rows}
    counts = Counter()
    ids = list(ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for r in db_rows(db, f"SELECT status FROM tasks WHERE id IN ({marks})", chunk):
            counts[r["status"]] += 1
    return dict(counts)


def wait_statuses(db, ids, statuses=("done", "failed", "cancelled"), timeout=30.0, dump=None):
    """Wait until every task in `ids` has one of `statuses`; returns {id: row}."""
    ids = list(ids)
    statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    deadline = time.monotonic() + timeout
    while True:
        rows = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for r in db_rows(db, f"SELECT * FROM tasks WHERE id IN ({marks})", chunk):
                rows[r["id"]] = r
        if len(rows) == len(ids) and all(r["status"] in statuses for r in rows.values()):
            return rows
        if time.monotonic() >= deadline:
            counts = Counter(r["status"] for r in rows.values())
            pytest.fail(f"{len(ids)} tasks not all {statuses} within {timeout} s: "
                        f"{dict(counts)}, {len(ids) - len(rows)} missing\n"
                        + (dump() if dump else ""))
        time.sleep(0.05)


# ---- loading an app in the test process ---------------------------------------------------

def load_app(path=FAULT_APP):
    """Import an app file here (to call .delay()) under a fresh module name."""
    name = f"_liteq_fault_app_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _no_core_dumps():
    # Segfaulting tasks must not leave core files behind.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# ---- daemons --------------------------------------------------------------------------------

class Daemon:
    """One liteqd started by a test; its stdout is the JSON log."""

    def __init__(self, lab, argv, env, label):
        self.lab = lab
        self.argv = argv
        self.env = env
        self.label = label
        self.log_path = lab.path(f"{label}.log")
        self.err_path = lab.path(f"{label}.err")
        self.proc = None
        self.ps = None
        self.seen = {}     # pid -> psutil.Process of every descendant ever seen

    def start(self):
        with open(self.log_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         cwd=self.lab.workdir, start_new_session=True,
                                         preexec_fn=_no_core_dumps)
        with contextlib.suppress(psutil.NoSuchProcess):
            self.ps = psutil.Process(self.proc.pid)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout=20.0):
        """Wait for daemon.ready; fail (with the logs) if the daemon exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events("daemon.ready"):
                self.workers()
                return self
            if not self.alive():
                pytest.fail(f"{self.label} exited with {self.proc.returncode} before it was "
                            f"ready\n{self.dump()}")
            time.sleep(0.02)
        pytest.fail(f"{self.label} not ready within {timeout} s\n{self.dump()}")

    def send(self, sig):
        os.kill(self.proc.pid, sig)

    def wait(self, timeout) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.label} still running {timeout} s later\n{self.dump()}")

    def stop(self, timeout=20.0) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        if self.alive():
            self.send(signal.SIGTERM)
        return self.wait(timeout)

    # ---- its processes ----------------------------------------------------------------

    def descendants(self) -> list:
        if self.ps is None:
            return []
        try:
            kids = self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for k in kids:
            self.seen.setdefault(k.pid, k)
        return kids

    def workers(self) -> list:
        """Live worker children (direct children titled "liteqd: worker ..."), psutil."""
        out = []
        for k in self.descendants():
            try:
                if k.ppid() == self.pid and k.status() != psutil.STATUS_ZOMBIE and \
                        " ".join(k.cmdline()).startswith("liteqd: worker"):
                    out.append(k)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def worker_pids(self) -> set:
        return {w.pid for w in self.workers()}

    def direct_children(self) -> list:
        """Every live, non-zombie direct child (workers and anything adopted)."""
        out = []
        for k in self.descendants():
            try:
                if k.ppid() == self.pid and k.status() != psutil.STATUS_ZOMBIE:
                    out.append(k)
            except psutil.NoSuchProcess:
                pass
        return out

    def zombies(self) -> list:
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

    # ---- its log --------------------------------------------------------------------

    def events(self, event=None, **match) -> list:
        out = []
        for line in read_lines(self.log_path):
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

    def wait_event(self, event, timeout=15.0, **match):
        return wait_for(lambda: (self.events(event, **match) or [None])[0], timeout,
                        lambda: f"{self.label}: no {event} {match} within {timeout} s\n"
                                f"{self.dump()}")

    def stderr(self) -> str:
        try:
            with open(self.err_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def dump(self, last=80) -> str:
        lines = read_lines(self.log_path)
        code = self.proc.poll() if self.proc else "?"
        return (f"--- {self.label} (pid {self.proc.pid if self.proc else '?'}, exit {code}) "
                f"log, last {last} of {len(lines)} lines ---\n" + "\n".join(lines[-last:])
                + f"\n--- {self.label} stderr ---\n{self.stderr()[-4000:]}")

    # ---- clean-up -----------------------------------------------------------------

    def kill_everything(self):
        if self.proc is None:
            return
        victims = list(self.seen.values()) + self.descendants()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in victims:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        wait_gone(victims, timeout=10)


class Lab:
    """What the `lab` fixture yields: a database, a socket, and processes for one test."""

    def __init__(self, db):
        self.db = db
        self.workdir = os.path.dirname(db)
        self.socket = os.environ["LITEQ_SOCKET"]
        self.tag = uuid.uuid4().hex
        self.daemons = []
        self.popens = []

    def path(self, name) -> str:
        return os.path.join(self.workdir, name)

    def env(self, extra=None) -> dict:
        """Environment of a process of this test: no stray LITEQ_*, this DB and socket."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LITEQ_")}
        env.update(LITEQ_DB=self.db, LITEQ_SOCKET=self.socket, PYTHONUNBUFFERED="1",
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env[TAG_VAR] = self.tag
        env.update(extra or {})
        return env

    def daemon(self, *args, app=FAULT_APP, env=None, fast=True, ready=True, argv=None):
        """Start `liteqd --app APP [fast flags] ARGS` (or `argv`); waits for daemon.ready."""
        if argv is None:
            argv = [PY, "-m", "liteqd.cli"]
            if app is not None:
                argv += ["--app", app]
            argv += (FAST_ARGS if fast else []) + [str(a) for a in args]
        d = Daemon(self, argv, self.env(env), f"daemon{len(self.daemons) + 1}")
        self.daemons.append(d)
        d.start()
        if ready:
            d.wait_ready()
        return d

    def popen(self, argv, env=None, **kwargs) -> subprocess.Popen:
        """Start another process of this test (tagged, own session, killed in teardown)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, env=self.env(env), cwd=self.workdir,
                             start_new_session=True, preexec_fn=_no_core_dumps, **kwargs)
        self.popens.append(p)
        return p

    def run(self, argv, env=None, timeout=60, **kwargs) -> subprocess.CompletedProcess:
        """Run a process to completion (text output captured); killed if it overruns."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        p = self.popen(argv, env=env, text=True, **kwargs)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{argv} did not finish within {timeout} s")
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def liteqctl(self, *args, timeout=60):
        return self.run([LITEQCTL, *[str(a) for a in args]], timeout=timeout)

    def dump(self) -> str:
        return "\n".join(d.dump() for d in self.daemons if d.proc is not None)

    def cleanup(self):
        for d in self.daemons:
            d.kill_everything()
        for p in self.popens:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        leftovers = tagged_processes(self.tag)
        for p in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.send_signal(signal.SIGKILL)
        wait_gone(leftovers, timeout=10)


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


@pytest.fixture
def lab(db_path, monkeypatch):
    """A Lab on conftest's fresh database; everything it started is SIGKILLed afterwards,
    the task registry is restored, and the daemons' logs are printed (shown on failure)."""
    for name in [k for k in os.environ if k.startswith("LITEQ_")
                 and k not in ("LITEQ_DB", "LITEQ_SOCKET")]:
        monkeypatch.delenv(name, raising=False)
    saved = dict(core.TASK_REGISTRY)
    modules = set(sys.modules)
    lab = Lab(db_path)
    try:
        yield lab
    finally:
        try:
            print(lab.dump())
        finally:
            lab.cleanup()
            storage.forget_stores()
            core.TASK_REGISTRY.clear()
            core.TASK_REGISTRY.update(saved)
            for name in set(sys.modules) - modules:
                if name.startswith("_liteq_fault_app_"):
                    sys.modules.pop(name, None)


@pytest.fixture
def app(lab):
    """tests/apps/fault_app.py loaded in the test process (for .delay())."""
    return load_app(FAULT_APP)
