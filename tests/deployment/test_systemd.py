"""systemd integration: the sd_notify protocol spoken by a real liteqd to the test's
own datagram socket (NOTIFY_SOCKET), and the unit files in systemd/.

The daemons are real subprocesses in their own sessions (tests/support/daemon_helpers.py);
every one is SIGKILLed with its descendants in teardown.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from liteq import paths

from support import REPO
from support.control_client import request
from support.daemon_helpers import PYTHON, TempDaemons, load_app_module, registry_restored, running
from support.processes import wait_for
from support.systemd_helpers import NotifyListener, parse_unit

UNITS = os.path.join(REPO, "systemd")
LITEQD_BIN = os.path.join(os.path.dirname(PYTHON), "liteqd")
NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

APP_SOURCE = '''
"""Tasks for tests/deployment/test_systemd.py."""
import ctypes
import os
import subprocess
import sys

from liteq import task

NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@task(max_retries=0)
def env_probe():
    """What a task sees of systemd's variables: Python's environ, C's getenv (what a C
    library calling sd_notify reads), and the kernel's view of a process it starts."""
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    raw = subprocess.run([sys.executable, "-c", "import sys; sys.stdout.buffer.write("
                          "open('/proc/self/environ', 'rb').read())"],
                         capture_output=True, check=True, timeout=30).stdout
    sub_keys = [kv.split(b"=", 1)[0].decode() for kv in raw.split(b"\\0") if kv]
    return {
        "pid": os.getpid(),
        "os_environ": [k for k in NOTIFY_VARS if k in os.environ],
        "getenv": [k for k in NOTIFY_VARS if libc.getenv(k.encode()) is not None],
        "subprocess": [k for k in NOTIFY_VARS if k in sub_keys],
        "subprocess_has_path": "PATH" in sub_keys,
    }
'''


class NotifyEnv(TempDaemons):
    """What the `notify` fixture yields: TempDaemons whose daemons are told
    NOTIFY_SOCKET=`listener`."""

    def __init__(self, tmp, app_path):
        super().__init__(tmp, app_path)
        self.listener = NotifyListener(os.path.join(tmp, "notify.sock"))

    def daemon(self, watchdog_usec="400000", watchdog_pid=None, ready=True):
        env = dict.fromkeys(NOTIFY_VARS)          # none of this process's own
        env["NOTIFY_SOCKET"] = self.listener.path
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = watchdog_usec
        if watchdog_pid is not None:
            env["WATCHDOG_PID"] = watchdog_pid
        return super().daemon("--concurrency", "2", env_extra=env, ready=ready)


@pytest.fixture
def notify(monkeypatch):
    tmp = tempfile.mkdtemp(prefix="lqs-", dir="/tmp")
    app_path = os.path.join(tmp, "sd_app.py")
    with open(app_path, "w") as f:
        f.write(APP_SOURCE)
    env = NotifyEnv(tmp, app_path)
    try:
        with running(env, monkeypatch):
            yield env
    finally:
        env.listener.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _monotonic_usec():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# ---- the notify protocol ------------------------------------------------------------

def test_ready_with_status_once_children_are_up_then_watchdog_pings(notify):
    d = notify.daemon(watchdog_usec="400000")
    i = notify.listener.wait("READY", "1", timeout=20)
    fields = notify.listener.messages[i][1]
    assert fields.get("MAINPID") == str(d.pid)
    assert fields.get("STATUS") and "\n" not in fields["STATUS"]
    assert "2/2" in fields["STATUS"]                     # the pool is up
    pool = request(notify.sock, "status")["pools"][0]
    assert len(pool["children"]) == 2 and all(c["state"] == "idle" for c in pool["children"])
    # WATCHDOG_USEC=0.4 s: a ping every 0.2 s from the main loop, about 10 in 2 s; a
    # ping per full period gives at most 6 there, a spinning loop hundreds.
    got = notify.listener.collect(2.0)
    pings = [m for m in got if m[1].get("WATCHDOG") == "1"]
    assert 7 <= len(pings) <= 40, [(round(m[0] - got[0][0], 3), m[2]) for m in got]
    assert all(m[2] == b"WATCHDOG=1" for m in pings)


def test_no_watchdog_pings_when_watchdog_pid_is_another_process(notify):
    notify.daemon(watchdog_usec="200000", watchdog_pid="1")
    notify.listener.wait("READY", "1", timeout=20)
    got = notify.listener.collect(1.0)
    assert not [m for m in got if "WATCHDOG" in m[1]], [m[2] for m in got]


def test_sighup_sends_reloading_with_monotonic_usec_then_ready_again(notify):
    d = notify.daemon()
    first_ready = notify.listener.wait("READY", "1", timeout=20)
    before = {c["pid"] for c in request(notify.sock, "status")["pools"][0]["children"]}
    t_before = _monotonic_usec()
    os.kill(d.pid, signal.SIGHUP)
    i = notify.listener.wait("RELOADING", "1", after=first_ready + 1)
    t_after = _monotonic_usec()
    usec = notify.listener.messages[i][1].get("MONOTONIC_USEC")
    assert usec is not None and re.fullmatch(r"\d+", usec), notify.listener.messages[i][2]
    assert t_before <= int(usec) <= t_after     # CLOCK_MONOTONIC, as systemd wants
    # READY=1 again once the fresh children are up.
    notify.listener.wait("READY", "1", after=i + 1)
    # Old children may still be on their way out ("stopping"): READY=1 does not
    # wait for them, only for the fresh ones to be up.
    after = {c["pid"] for c in request(notify.sock, "status")["pools"][0]["children"]
             if c["state"] != "stopping"}
    assert len(after) == 2 and not after & before
    assert d.alive()


def test_sigterm_sends_stopping_and_exits_zero(notify):
    d = notify.daemon()
    ready = notify.listener.wait("READY", "1", timeout=20)
    os.kill(d.pid, signal.SIGTERM)
    notify.listener.wait("STOPPING", "1", after=ready + 1)
    assert d.wait(20) == 0


def test_children_and_their_subprocesses_do_not_inherit_notify_socket(notify):
    """NOTIFY_SOCKET (and the watchdog variables) are gone for everything a child runs.

    Note: /proc/<child pid>/environ is not the observable here. It shows the memory
    block the kernel filled at the supervisor's exec(), which a forked child shares
    and no unsetenv() can change; what code in the child reads (os.environ, C
    getenv(), which is what sd_notify() uses) and what processes it starts inherit
    is what matters, and that is what this checks.
    """
    d = notify.daemon()
    notify.listener.wait("READY", "1", timeout=20)
    with registry_restored():
        app = load_app_module(notify.app_path)
    task_id = app.env_probe.delay()
    from liteq import get_task_status
    st = wait_for(lambda: (get_task_status(task_id) or {}).get("status") in
                  ("done", "failed") and get_task_status(task_id), 30,
                  lambda: f"env_probe did not finish\n{d.dump()}")
    assert st["status"] == "done", st["error"]
    probe = st["result"]
    assert probe["pid"] in {c.pid for c in d.children()}
    assert probe["os_environ"] == []
    assert probe["getenv"] == []
    assert probe["subprocess_has_path"] is True      # the probe did read an environment
    assert probe["subprocess"] == []


# ---- unit files -------------------------------------------------------------------------

def timespan_seconds(text):
    """A systemd time span ("45", "45s", "1min 30s", "2m") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
             "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600,
             "hours": 3600, "ms": 0.001, "msec": 0.001, "us": 1e-6, "usec": 1e-6}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    assert parts, f"not a time span: {text!r}"
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def one(unit, key):
    values = unit.get(key)
    assert values, f"{key}= is missing"
    return values[-1]


@pytest.mark.parametrize("name", ["liteqd.service", "liteqd@.service"])
def test_unit_file_has_the_required_directives(name):
    unit = parse_unit(os.path.join(UNITS, name))
    assert one(unit, "Type") in ("notify", "notify-reload")
    assert one(unit, "NotifyAccess") == "main"
    reload_cmd = one(unit, "ExecReload")
    assert "kill" in reload_cmd and "HUP" in reload_cmd and "$MAINPID" in reload_cmd
    assert timespan_seconds(one(unit, "WatchdogSec")) > 0
    assert one(unit, "KillMode") == "mixed"
    env = dict(v.split("=", 1) for v in unit.get("Environment", []))
    graceful = float(env.get("LITEQ_GRACEFUL_TIMEOUT", 30))   # 30: liteqd's default
    assert timespan_seconds(one(unit, "TimeoutStopSec")) > graceful
    runtime_dir = one(unit, "RuntimeDirectory")
    state_dir = one(unit, "StateDirectory")
    # The socket lives in the runtime directory where every client's default rule looks
    # (liteq.paths), so no LITEQ_SOCKET is needed, nor set; the database lives in the
    # state directory.
    assert f"/run/{runtime_dir}" == paths.RUNTIME_DIR
    assert "LITEQ_SOCKET" not in env
    assert state_dir == "liteq"
    assert env["LITEQ_DB"].startswith(f"/var/lib/{state_dir}/")
    assert one(unit, "NoNewPrivileges") == "yes"
    assert one(unit, "ProtectSystem") == "strict"
    assert one(unit, "PrivateTmp") == "yes"
    assert one(unit, "User") not in ("", "root", "0")
    assert unit.get("EnvironmentFile")
    assert one(unit, "ExecStart").split()[0].endswith("/liteqd")


def _verify_copy(src, dest_dir, dest_name):
    with open(src) as f:
        text = f.read()
    text = re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={LITEQD_BIN}", text)
    text = re.sub(r"(?m)^User=.*$", "User=root", text)
    text = re.sub(r"(?m)^Group=.*$", "Group=root", text)
    with open(os.path.join(dest_dir, dest_name), "w") as f:
        f.write(text)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("name, verify_as", [("liteqd.service", "liteqd.service"),
                                             ("liteqd@.service", "liteqd@demo.service")])
def test_unit_file_passes_systemd_analyze_verify(tmp_path, name, verify_as):
    """ExecStart points at this venv's liteqd and User/Group at root (the unit's own
    user does not exist here). A template is verified through an instance name,
    which systemd-analyze resolves to the template beside it. Warnings count too:
    verify exits 0 on an unknown value it ignores, so its output must be clean."""
    _verify_copy(os.path.join(UNITS, name), str(tmp_path), name)
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / verify_as)],
                         capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    output = (res.stdout + res.stderr).splitlines()
    ours = [line for line in output
            if str(tmp_path) in line or "liteqd" in line]
    assert res.returncode == 0, "\n".join(output)
    assert ours == [], "\n".join(output)


@pytest.mark.parametrize("name", ["liteqd.service", "liteqd@.service"])
def test_unit_file_lets_the_group_share_the_queue_and_nobody_else(name):
    """The app and operators are members of the daemon's group: the runtime directory
    lets the group in, the state directory lets it create the database's -wal and -shm
    files (setgid: they stay in the group), the control socket admits the group, and
    other users get nothing."""
    unit = parse_unit(os.path.join(UNITS, name))
    env = dict(v.split("=", 1) for v in unit.get("Environment", []))
    assert env.get("LITEQ_SOCKET_GROUP") == one(unit, "Group")
    assert int(one(unit, "RuntimeDirectoryMode"), 8) == 0o750
    assert one(unit, "RuntimeDirectoryPreserve") == "yes"
    assert int(one(unit, "StateDirectoryMode"), 8) == 0o2770
    assert int(one(unit, "UMask"), 8) & 0o007 == 0o007


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("name, analyze_as", [("liteqd.service", "liteqd.service"),
                                              ("liteqd@.service", "liteqd@demo.service")])
def test_unit_file_is_hardened_without_breaking_the_socket_group(tmp_path, name, analyze_as):
    """`systemd-analyze security --offline=yes` rates the shipped unit 2.0 or better
    (it rated it 5.0 MEDIUM before the hardening), without the two options that
    would hide a liteqctl client's /proc entry from the daemon's --socket-group check."""
    unit = parse_unit(os.path.join(UNITS, name))
    assert "invisible" not in unit.get("ProtectProc", []) and \
        "noaccess" not in unit.get("ProtectProc", [])
    assert unit.get("PrivateUsers", ["no"])[-1] == "no"
    assert unit.get("ProcSubset", ["all"])[-1] == "all"
    assert unit.get("CapabilityBoundingSet") == [""]
    with open(os.path.join(UNITS, name)) as f:
        text = f.read()
    with open(tmp_path / name, "w") as f:
        f.write(re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={LITEQD_BIN}", text))
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                          str(tmp_path / analyze_as)], capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    assert found, res.stdout + res.stderr
    assert float(found.group(1)) <= 2.0, res.stdout
