"""Deployment as shipped, without systemd as PID 1: the daemon, the app, an operator
and an outsider are four real users, and liteqd runs the way systemd/liteqd.service
starts it.

The test creates the users (useradd; removed in teardown), a private mount namespace
with fresh /run, /var/lib and /srv (so the unit's /run/liteq, /var/lib/liteq and
/srv/liteq-app exist for this test alone), and there the unit's RuntimeDirectory,
StateDirectory and WorkingDirectory with the unit's modes. It starts liteqd with
the unit's User, Group, UMask, Environment= lines and the shipped env file
(systemd/liteqd.env.example), through setpriv, and runs the app, liteqctl and the
outsider's attempts as the other users, each with the usual umask 0022 and no
LITEQ_SOCKET. Names in the unit (user and group `liteq`) are mapped to this test's
users. On SQLite it plays liteqd.service and the template liteqd@.service (as
liteqd@shop); on PostgreSQL the app is a role with only what `liteq grants` prints.
Every process of the test's users is SIGKILLed in teardown, before the users are
removed; the namespace goes with its holder process.
"""

import grp
import hashlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import uuid

import psutil
import pytest

from liteq import paths
from liteq.backends import identity_of

from support import pg_helpers
from support import REPO
from support.daemon_helpers import PYTHON
from support.processes import TAG_VAR, kill_tree, read_lines, wait_for, wait_gone
from support.systemd_helpers import parse_unit

UNITS = os.path.join(REPO, "systemd")
TOOLS = ("useradd", "userdel", "groupdel", "setpriv", "nsenter", "unshare")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root and " + ", ".join(TOOLS))

APP_SOURCE = '''
"""The app of tests/deployment/test_users_and_service.py."""
import time

from liteq import task


@task(max_retries=0)
def add(a, b):
    return a + b


@task(queue="reports", max_retries=0)
def report(seconds):
    time.sleep(seconds)
    return "written"
'''

# Run as the app: enqueue, then wait for the outcome and print it as JSON.
ENQUEUE = '''
import json, sys, time
sys.path.insert(0, sys.argv[4])  # the unit's WorkingDirectory, where the app is
import tasks
from liteq import get_task_status
task_id = tasks.add.delay(int(sys.argv[1]), int(sys.argv[2]))
if sys.argv[3] == "hold":  # say it is queued, keep the connection open, then wait
    print(json.dumps({"id": task_id, "status": get_task_status(task_id)["status"]}),
          flush=True)
if sys.argv[3] in ("wait", "hold"):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = get_task_status(task_id)
        if st["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
else:
    st = get_task_status(task_id)
print(json.dumps({"id": task_id, "status": st["status"], "result": st["result"]}))
'''


def _runnable_by_all(path) -> bool:
    """Whether every user may run `path` (each directory above it searchable by all)."""
    parts = os.path.realpath(path).split("/")
    dirs = ["/".join(parts[:i]) or "/" for i in range(1, len(parts))]
    return all(os.stat(d).st_mode & 0o001 for d in dirs) and os.stat(path).st_mode & 0o001


def user_python():
    """(argv prefix, env) that runs this test's Python code as another user: this
    interpreter when others may run it, else the system's python3 of the same version
    with this checkout and its venv's packages on PYTHONPATH (a pyenv Python under
    /root is out of other users' reach)."""
    if _runnable_by_all(PYTHON):
        return [PYTHON], {}
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None:
        pytest.skip("no Python that other users may run")
    res = run([system, "-c", "import sys; print(sys.version_info[:2])"])
    if res.stdout.strip() != str(tuple(sys.version_info[:2])):
        pytest.skip(f"{system} is not Python {sys.version_info[:2]}, as this venv")
    return [system], {"PYTHONPATH": REPO + os.pathsep + sysconfig.get_paths()["purelib"]}


def parse_env_file(path):
    """KEY=VALUE lines of a systemd EnvironmentFile (comments and blanks skipped)."""
    env = {}
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                env[key.strip()] = value.split("#", 1)[0].strip()
    return env


def run(argv, **kw):
    kw.setdefault("timeout", 120)
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)


class Users:
    """The daemon's user and group (named as in the unit, with this test's suffix), the
    app and an operator in that group, and an outsider. Removed by remove()."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.daemon = f"lqd{tag}"
        self.app, self.operator, self.outsider = f"lqa{tag}", f"lqo{tag}", f"lqx{tag}"
        self.made = []

    def create(self):
        nologin = "/usr/sbin/nologin"
        self._add(["--system", "--user-group", "-M", "-s", nologin, self.daemon])
        for name in (self.app, self.operator):
            self._add(["--user-group", "-M", "-s", nologin, "-G", self.daemon, name])
        self._add(["--user-group", "-M", "-s", nologin, self.outsider])

    def _add(self, args):
        res = run(["useradd", *args])
        assert res.returncode == 0, res.stderr
        self.made.append(args[-1])

    def processes(self) -> list:
        """Every live process running as one of these users (setproctitle overwrites a
        daemon's environment, so the test's tag cannot find them; the users are this
        test's own)."""
        uids = set()
        for name in self.made:
            try:
                uids.add(pwd.getpwnam(name).pw_uid)
            except KeyError:
                pass
        found = []
        for p in psutil.process_iter():
            try:
                if p.uids().real in uids or p.uids().effective in uids:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return found

    def kill_processes(self):
        """SIGKILL every process of these users and wait, bounded, until they are gone."""
        procs = self.processes()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        wait_gone(procs)

    def remove(self):
        for name in reversed(self.made):
            run(["userdel", name])
            run(["groupdel", name])  # when userdel left the user's group behind


class Namespace:
    """A holder process in a private mount namespace with tmpfs on /run, /var/lib and
    /srv; commands run in it through nsenter, and the test reads its files through
    /proc/PID/root."""

    SCRIPT = ("mount -t tmpfs -o mode=0755 tmpfs /run && "
              "mount -t tmpfs -o mode=0755 tmpfs /var/lib && "
              "mount -t tmpfs -o mode=0755 tmpfs /srv && echo ready && exec sleep 100000")

    def __init__(self, tag):
        env = dict(os.environ, **{TAG_VAR: tag})
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--",
                                      "sh", "-c", self.SCRIPT], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", "could not set up the mount namespace"

    def path(self, inside):
        """The host's path to `inside` (an absolute path in the namespace)."""
        return f"/proc/{self.proc.pid}/root{inside}"

    def make_dir(self, inside, mode, user, group):
        """Create a directory as systemd's *Directory= settings do: owner and mode set."""
        res = run(["nsenter", "-t", str(self.proc.pid), "-m", "--", "install", "-d",
                   "-o", user, "-g", group, "-m", oct(mode)[2:], inside])
        assert res.returncode == 0, res.stderr

    def command(self, user, group, umask, cwd, argv):
        """argv as `user` (primary group `group`, plus its supplementary groups) with
        `umask`, in `cwd`, inside the namespace."""
        return ["nsenter", "-t", str(self.proc.pid), "-m", "--",
                "setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--",
                "sh", "-c", f'umask {umask} && cd "$0" && exec "$@"', cwd, *argv]

    def close(self):
        kill_tree(self.proc)


class Deployment:
    """The shipped unit, played out: its directories, its daemon, and the other users."""

    INSTANCE = "shop"   # the instance name a template unit is started as

    def __init__(self, tmp, users, ns, tag, db_url=None, unit="liteqd.service"):
        self.tmp, self.users, self.ns, self.tag = tmp, users, ns, tag
        self.unit = {key: [v.replace("%i", self.INSTANCE) for v in values]
                     for key, values in parse_unit(os.path.join(UNITS, unit)).items()}
        self.template = "@" in unit
        self.unit_user = self.unit["User"][-1]
        self.unit_group = self.unit["Group"][-1]
        self.env = self._daemon_env(db_url)
        self.db = self.env["LITEQ_DB"]
        self.workdir = self.unit["WorkingDirectory"][-1]
        self.daemon = None
        self.python, python_env = user_python()
        self.env.update(python_env)
        self.python_env = python_env

    def _name(self, value):
        """The unit's user and group names as this test's."""
        return self.users.daemon if value in (self.unit_user, self.unit_group) else value

    def _daemon_env(self, db_url):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), TAG_VAR: self.tag}
        for item in self.unit.get("Environment", []):
            key, _, value = item.partition("=")
            env[key] = self._name(value)
        shipped = parse_env_file(os.path.join(UNITS, "liteqd.env.example"))
        env.update({k: self._name(v) for k, v in shipped.items()})  # EnvironmentFile= wins
        if db_url is not None:
            env["LITEQ_DB"] = db_url
        if self.template:   # its /etc/liteq/shop.env names the app in /srv/shop
            env["LITEQ_APP"] = os.path.join(self.unit["WorkingDirectory"][-1], "tasks.py")
        env["LITEQ_CONCURRENCY"] = "2"   # a shared test machine: the example's 4 is not needed
        return env

    def set_up(self):
        """What systemd does before ExecStart: the runtime, state and working directories."""
        user = group = self.users.daemon
        for kind, base in (("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib")):
            mode = int(self.unit[kind + "Mode"][-1], 8)
            self.ns.make_dir(f"{base}/{self.unit[kind][-1]}", mode, user, group)
        self.ns.make_dir(self.workdir, 0o755, "root", "root")
        app_path = self.env["LITEQ_APP"]
        assert os.path.dirname(app_path) == self.workdir
        with open(self.ns.path(app_path), "w") as f:
            f.write(APP_SOURCE)
        os.chmod(self.ns.path(app_path), 0o644)

    def start_daemon(self, label="liteqd"):
        """liteqd as the unit runs it: User=, Group=, UMask=, WorkingDirectory=, the env."""
        argv = self.ns.command(self._name(self.unit_user), self._name(self.unit_group),
                               self.unit["UMask"][-1], self.workdir,
                               self.python + ["-m", "liteqd.cli"])
        log = os.path.join(self.tmp, f"{label}.log")
        err = os.path.join(self.tmp, f"{label}.err")
        with open(log, "ab") as out, open(err, "ab") as errf:
            self.daemon = subprocess.Popen(argv, stdout=out, stderr=errf, env=self.env,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        self.log, self.err = log, err
        wait_for(lambda: self._ready() or self.daemon.poll() is not None, 90,
                 lambda: f"liteqd not ready in 90 s\n{self.dump()}")
        assert self.daemon.poll() is None, f"liteqd exited\n{self.dump()}"
        return self.daemon

    def _ready(self):
        return any('"daemon.ready"' in line for line in read_lines(self.log))

    def dump(self):
        out = "\n".join(read_lines(self.log)[-40:])
        with open(self.err, errors="replace") as f:
            return f"--- log\n{out}\n--- stderr\n{f.read()[-4000:]}"

    def stop_daemon(self):
        self.daemon.send_signal(signal.SIGTERM)
        assert self.daemon.wait(timeout=60) == 0, self.dump()

    def _user_env(self, extra=None):
        """A user's environment: the app's LITEQ_DB, and no LITEQ_SOCKET."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), TAG_VAR: self.tag,
                "HOME": "/", "LITEQ_DB": self.db, **self.python_env, **(extra or {})}

    def as_user(self, user, argv, env=None, cwd="/"):
        """Run argv as `user` (umask 0022, its own groups) in the namespace."""
        return run(self.ns.command(user, user, "0022", cwd, argv), env=self._user_env(env))

    def popen_as(self, user, argv):
        """Start argv as `user` (see as_user()); its stdout is a pipe."""
        return subprocess.Popen(self.ns.command(user, user, "0022", "/", argv),
                                env=self._user_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def enqueue(self, user, a, b, wait=True, db=None):
        """The app's .delay() and get_task_status() as `user`; the JSON it printed."""
        res = self.as_user(user, self.python + ["-c", ENQUEUE, str(a), str(b),
                                  "wait" if wait else "nowait", self.workdir],
                           env={"LITEQ_DB": db} if db else None)
        assert res.returncode == 0, f"{user}: {res.stderr}\n{self.dump()}"
        return json.loads(res.stdout.strip().splitlines()[-1])

    def liteqctl(self, user, *args, db=None):
        return self.as_user(user, self.python + ["-m", "liteqd.ctl", "--db", db or self.db,
                                                 "--timeout", "60", *args])


def _hashed_name(db):
    """The control socket's name in /run/liteq, by the documented rule."""
    return f"liteqd-{hashlib.sha1(identity_of(db).encode()).hexdigest()[:16]}.sock"


@pytest.fixture
def deployment(request, tmp_path):
    """A Deployment on SQLite (the unit's LITEQ_DB) or on PostgreSQL (a schema of its
    own, whose URL the env file would give), of liteqd.service or of the unit named
    after a colon ("sqlite:liteqd@.service", as instance "shop"); everything is torn
    down afterwards."""
    tag = f"deploy-{uuid.uuid4().hex[:8]}"
    os.chmod(tmp_path, 0o755)
    users = Users()
    ns = schema = None
    try:
        users.create()
        ns = Namespace(tag)
        url = None
        backend, _, unit = request.param.partition(":")
        if backend == "postgresql":
            server = pg_helpers.server_url()
            schema, url = pg_helpers.create_schema(server)
        d = Deployment(str(tmp_path), users, ns, tag, db_url=url,
                       unit=unit or "liteqd.service")
        d.server, d.schema = (server, schema) if schema else (None, None)
        d.set_up()
        yield d
    finally:
        users.kill_processes()
        if ns is not None:
            ns.close()
        if schema is not None:
            pg_helpers.drop_schema(server, schema)
        users.remove()


def _mode(path):
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_gid


def _gid(name):
    return grp.getgrnam(name).gr_gid


def _check_operator_and_outsider(d):
    """An operator in the group runs liteqctl status, scale and reload against the
    daemon the unit started, naming only the database; the outsider is refused."""
    st = d.liteqctl(d.users.operator, "status", "--json")
    assert st.returncode == 0, f"{st.stdout}{st.stderr}\n{d.dump()}"
    assert json.loads(st.stdout)["pid"] == d.daemon.pid   # nsenter, setpriv, sh: all exec
    sc = d.liteqctl(d.users.operator, "scale", "3")
    assert sc.returncode == 0, sc.stdout + sc.stderr
    rl = d.liteqctl(d.users.operator, "reload")
    assert rl.returncode == 0, rl.stdout + rl.stderr
    refused = d.liteqctl(d.users.outsider, "status", "--json")
    assert refused.returncode != 0 and "ermission denied" in refused.stdout + refused.stderr, \
        refused.stdout + refused.stderr
    down = d.liteqctl(d.users.outsider, "shutdown")
    assert down.returncode != 0
    assert d.daemon.poll() is None


def _check_sockets(d):
    """The control and wake-up sockets: in the unit's runtime directory, 0660 in the
    daemon's group; the directory lets the group in and nobody else."""
    runtime = d.ns.path(paths.RUNTIME_DIR)
    names = sorted(os.listdir(runtime))
    control = [n for n in names if n.endswith(".sock")]
    assert control == [_hashed_name(d.db)], names
    mode, gid = _mode(runtime)
    assert mode & 0o007 == 0 and mode & 0o050 == 0o050 and gid == _gid(d.users.daemon)
    for name in names:
        mode, gid = _mode(os.path.join(runtime, name))
        assert mode == 0o660 and gid == _gid(d.users.daemon), (name, oct(mode))


@pytest.mark.parametrize("deployment", ["sqlite", "sqlite:liteqd@.service"], indirect=True)
def test_shipped_unit_on_sqlite_serves_the_app_user_and_operators_and_refuses_others(
        deployment):
    d = deployment
    d.start_daemon()
    # The app (another user, in the group, umask 0022) enqueues and reads the result.
    out = d.enqueue(d.users.app, 2, 3)
    assert out["status"] == "done" and out["result"] == 5, out
    state = d.ns.path(os.path.dirname(d.db))
    for suffix in ("", "-wal", "-shm"):
        mode, gid = _mode(d.ns.path(d.db + suffix))
        assert mode == 0o660 and gid == _gid(d.users.daemon), (suffix, oct(mode), gid)
    _check_sockets(d)
    _check_operator_and_outsider(d)
    # The outsider cannot read the database, nor reach the wake-up socket.
    res = d.as_user(d.users.outsider, d.python + ["-c", ENQUEUE, "1", "1", "nowait", d.workdir])
    assert res.returncode != 0
    wake = paths.wake_path(os.path.join(paths.RUNTIME_DIR, _hashed_name(d.db)))
    assert os.path.exists(d.ns.path(wake))
    probe = d.as_user(d.users.outsider, d.python + ["-c",
                      "import socket, sys; s = socket.socket(socket.AF_UNIX, "
                      "socket.SOCK_DGRAM); s.sendto(b'w', sys.argv[1])", wake])
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
    # With the daemon stopped, the app alone still enqueues: it creates the -wal and
    # -shm files itself, in the daemon's group, and the daemon, started while the app
    # holds them open, uses them and runs the task.
    d.stop_daemon()
    assert not [n for n in os.listdir(state) if n.endswith(("-wal", "-shm"))], \
        os.listdir(state)
    holder = d.popen_as(d.users.app, d.python + ["-c", ENQUEUE, "20", "22", "hold", d.workdir])
    queued = json.loads(holder.stdout.readline())
    assert queued["status"] == "pending", queued
    app_uid = pwd.getpwnam(d.users.app).pw_uid
    for suffix in ("-wal", "-shm"):
        st = os.stat(d.ns.path(d.db + suffix))
        assert st.st_uid == app_uid and st.st_gid == _gid(d.users.daemon), suffix
        assert stat.S_IMODE(st.st_mode) == 0o660, (suffix, oct(st.st_mode))
    d.start_daemon(label="liteqd-2")
    out, err = holder.communicate(timeout=120)
    final = json.loads(out.strip().splitlines()[-1])
    assert final["status"] == "done" and final["result"] == 42, (final, err, d.dump())
    res = d.liteqctl(d.users.operator, "status", "--json")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("deployment", ["postgresql"], indirect=True)
def test_shipped_unit_on_postgresql_serves_an_app_role_with_the_printed_grants(deployment):
    """The daemon's role owns the tables; the app connects as a role that has only what
    `liteq grants` prints, and enqueues and reads results."""
    import psycopg
    d = deployment
    d.start_daemon()
    role = f"lq_app_{uuid.uuid4().hex[:8]}"
    app_url = d.db.replace("://root@", f"://{role}@", 1)
    with psycopg.connect(d.server, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        grants = run([os.path.join(os.path.dirname(PYTHON), "liteq"), "grants", role,
                      "--db", d.db])
        assert grants.returncode == 0, grants.stderr
        with psycopg.connect(d.server, autocommit=True) as conn:
            conn.execute(grants.stdout)
        out = d.enqueue(d.users.app, 2, 3, db=app_url)
        assert out["status"] == "done" and out["result"] == 5, out
        # Least privilege: the app role may not delete tasks nor change the schema.
        with psycopg.connect(app_url, autocommit=True) as conn:
            for statement in ("DELETE FROM tasks", "CREATE TABLE app_owned (x int)",
                              "UPDATE workers SET pid = 0"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        _check_sockets(d)
        _check_operator_and_outsider(d)
    finally:
        with psycopg.connect(d.server, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
