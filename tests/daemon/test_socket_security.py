"""Who may talk to a daemon through its sockets, and where default sockets live.

- The SQLite wake-up socket admits only the users who may write the database, and
  a cancel message on it is only a hint: the daemon stops a task only when the
  database says it is cancelled.
- Default sockets are created only in directories other users cannot write, and a
  listener owned by another (non-root) user is not taken for a running liteqd.

Other users are played by `nobody`, through setpriv, running the system's python3
(plain socket calls: no LiteQ needed). Real daemons, sockets and datagrams.
"""

import os
import shutil
import socket
import stat
import pwd
import subprocess
import sysconfig
import tempfile

import pytest

import liteq
from liteq.backends import identity_of
from liteq.paths import socket_path, wake_path

from support import REPO
from support.control_client import request
from support.processes import read_lines, wait_for
from support.task_table import wait_status

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
OTHER_USER = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


def _nobody_exists():
    try:
        import grp
        import pwd
        pwd.getpwnam("nobody")
        grp.getgrnam("nogroup")
        return True
    except KeyError:
        return False


needs_other_user = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or SYSTEM_PYTHON is None
    or not _nobody_exists(), reason="needs root, setpriv, /usr/bin/python3 and nobody:nogroup")

SEND = ("import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(sys.argv[2].encode(), sys.argv[1])\n")

SQUAT = ("import socket, sys, time\n"
         "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
         "s.bind(sys.argv[1]); s.listen(8)\n"
         "print('listening', flush=True)\n"
         "time.sleep(600)\n")


def _started(path, timeout=15):
    wait_for(lambda: read_lines(path), timeout, f"nothing started ({path})")


# ---- the wake-up socket ----------------------------------------------------------------

@needs_other_user
@pytest.mark.sqlite_only
def test_the_wake_up_socket_admits_only_the_users_who_may_write_the_database(daemons, app):
    daemons.start("--concurrency", "1")
    wake = wake_path(daemons.socket)
    os.chmod(daemons.workdir, 0o711)  # let nobody reach the socket itself
    res = daemons.run(OTHER_USER + [SYSTEM_PYTHON, "-c", SEND, wake, "c1"])
    assert res.returncode != 0 and "PermissionError" in res.stderr, res.stderr
    ok = daemons.run([SYSTEM_PYTHON, "-c", SEND, wake, "w"])   # the owner may
    assert ok.returncode == 0, ok.stderr
    # Exactly the database's writers: its owner and its group (the file is 0660).
    db = os.stat(daemons.db)
    st = os.stat(wake)
    assert stat.S_IMODE(db.st_mode) == 0o660
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == db.st_gid


@pytest.mark.sqlite_only
def test_a_cancel_datagram_stops_nothing_the_database_does_not_say_is_cancelled(daemons,
                                                                                  app):
    # A long poll interval: B's cancel below reaches the daemon by its datagram alone,
    # sent after the forged one, so B stopping proves the forged one was read first.
    d = daemons.start("--concurrency", "2", "--poll-interval", "60")
    marker_a, marker_b = daemons.path("a.txt"), daemons.path("b.txt")
    a = app.slow.delay(4, marker_a)
    b = app.slow.delay(120, marker_b)
    _started(marker_a)
    _started(marker_b)
    # One forged hint is enough: it used to stop the task. (Not a flood: the hints
    # after a flood may find the socket's queue full, and only the poll finds them.)
    forged = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        forged.sendto(b"c%d" % a, wake_path(daemons.socket))
    finally:
        forged.close()
    assert liteq.cancel_task(b) is True
    d.wait_event("task.cancelled", task_id=b, timeout=30)
    st = wait_status(a, timeout=60, daemons=daemons)
    assert st["status"] == "done" and st["result"] == "slept", st
    assert d.events("task.cancelling", task_id=a) == []
    assert len(read_lines(marker_a)) == 1


# ---- where default sockets live -----------------------------------------------------------

def test_default_sockets_are_never_where_other_users_can_create_files(monkeypatch, db):
    """An SQLite file in a world-writable directory, and a PostgreSQL URL: the default
    control socket (and the wake-up socket beside it) is in a directory no other
    user can write."""
    monkeypatch.delenv("LITEQ_SOCKET", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    shared = tempfile.mkdtemp(prefix="lq-shared-", dir="/tmp")
    try:
        os.chmod(shared, 0o1777)
        target = db if "://" in db else os.path.join(shared, "app.db")
        path = socket_path(identity_of(target))
        for p in (path, wake_path(path)):
            directory = os.path.dirname(p)
            st = os.stat(directory)
            assert not st.st_mode & 0o022 and st.st_uid in (0, os.getuid()), \
                (p, oct(st.st_mode), st.st_uid)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@needs_other_user
def test_another_users_listener_on_the_socket_path_does_not_stop_the_daemon(daemons, app):
    """A socket bound first by another (non-root) user is a squatter, not a liteqd: the
    daemon replaces it (saying so) and serves as usual."""
    shared = tempfile.mkdtemp(prefix="lq-sq-", dir="/tmp")
    try:
        os.chmod(shared, 0o777)
        path = os.path.join(shared, "ctl.sock")
        squatter = daemons.popen(OTHER_USER + [SYSTEM_PYTHON, "-c", SQUAT, path],
                                 stdout=subprocess.PIPE)
        assert squatter.stdout.readline().strip() == b"listening"
        d = daemons.start("--concurrency", "1", env={"LITEQ_SOCKET": path})
        replaced = d.events("control.socket_replaced")
        assert replaced and replaced[0]["uid"] != 0 and replaced[0]["pid"] == squatter.pid
        assert request(path, "ping")["pid"] == d.pid
        assert os.stat(path).st_uid == os.getuid()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@needs_other_user
def test_a_users_private_socket_directory_made_by_someone_else_is_refused():
    """Without a runtime directory of its own, a user's daemon falls back on
    /tmp/liteq-UID; one that another user created first (here: root, open to all)
    is refused with an error that says so, never used."""
    uid = pwd.getpwnam("nobody").pw_uid
    squat = f"/tmp/liteq-{uid}"
    if os.path.lexists(squat) or os.path.exists(f"/run/user/{uid}"):
        pytest.skip(f"{squat} or /run/user/{uid} exists on this machine")
    os.mkdir(squat)
    os.chmod(squat, 0o777)
    try:
        code = ("import socket\n"
                "from liteq import paths\n"
                "p = paths.socket_path('postgresql://app@db.example/queue')\n"
                "print(p)\n"
                "paths.claim_socket_path(p, socket.SOCK_STREAM)\n")
        env = {"PATH": "/usr/bin:/bin", "HOME": "/",
               "PYTHONPATH": REPO + os.pathsep + sysconfig.get_paths()["purelib"]}
        res = subprocess.run(OTHER_USER + [SYSTEM_PYTHON, "-c", code], capture_output=True,
                             text=True, env=env, cwd="/", timeout=60)
        assert res.stdout.startswith(squat + "/"), res.stdout + res.stderr
        assert res.returncode != 0 and "not a private directory" in res.stderr, res.stderr
        assert os.listdir(squat) == []
    finally:
        os.rmdir(squat)
