"""Throwaway PostgreSQL clusters, for the tests that stop, restart or cut off a server
(the shared server at 127.0.0.1:5432 is never touched).

A cluster is a real postmaster run by `pg_ctl` as the `postgres` user (through
`runuser` when the tests run as root), in a temp dir of its own owned by that
user: trust authentication, a role `root` and a database `test`, TCP on a free
port of 127.0.0.1 and its Unix socket in the temp dir. fsync is off and the
buffers are small: nothing here has to survive a crash of the machine.

`initdb` runs once per test session (`pg_template`); each test copies that data
dir, so a cluster is up in well under a second. The `throwaway_pg` fixture yields
a started `Cluster`; the test may stop, start and restart it at will, and it is
stopped (immediate mode) and removed afterwards, also when the test fails.

Without initdb, pg_ctl or psycopg the tests that need a cluster are skipped with
one reason, unless LITEQ_TEST_POSTGRES is set (CI): then they fail.
"""

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from . import pg_helpers

OWNER = "postgres"
DATABASE = "test"
ROLE = "root"

# Appended to postgresql.conf: speed over durability, and few resources.
SETTINGS = """
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 40
max_wal_senders = 0
wal_level = minimal
autovacuum_naptime = 10s
log_min_messages = warning
log_line_prefix = '%m [%p] %a '
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(argv) -> list:
    """argv run as the postgres user (the server refuses to run as root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", OWNER, "--", *argv]
    return list(argv)


def _run(argv, cwd, timeout=60):
    """Run a PostgreSQL tool as the owner; fail the test, showing its output, if it fails."""
    out = subprocess.run(_as_owner(argv), cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {out.returncode}:\n"
                           f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _owned_temp_dir(prefix) -> str:
    """A temp dir the postgres user owns (the test process, root, can read it too)."""
    path = tempfile.mkdtemp(prefix=prefix)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(OWNER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def missing_tools():
    """Why no throwaway cluster can be made here, or None when it can."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not in PATH"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "runuser is not in PATH (needed to run PostgreSQL as postgres)"
        try:
            pwd.getpwnam(OWNER)
        except KeyError:
            return f"there is no {OWNER!r} user to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'liteq[postgres]')"
    return None


class Cluster:
    """One throwaway cluster in `base` (data dir `base/data`, its log `base/server.log`,
    its Unix socket in `base`), on `port` of 127.0.0.1."""

    def __init__(self, base, port):
        self.base = base
        self.data = os.path.join(base, "data")
        self.log_path = os.path.join(base, "server.log")
        self.port = port

    @property
    def url(self) -> str:
        """The libpq URL of its database `test`, as role `root`."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        """The URL of its database `postgres`: for sessions, terminations and ALTER
        DATABASE test, which work even while `test` takes no connections."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/postgres"

    def url_for(self, application_name) -> str:
        """The URL with ?application_name=..., so its sessions can be picked out."""
        return pg_helpers.with_query(self.url, application_name=application_name)

    # ---- the server ------------------------------------------------------------------

    def start(self, timeout=30):
        """Start the server on the same data dir and port; returns once it accepts
        connections."""
        _run(["pg_ctl", "-D", self.data, "-l", self.log_path, "-w", "-t", str(timeout),
              "start"], cwd=self.base, timeout=timeout + 10)

    def stop(self, mode="fast", timeout=30):
        """Stop the server: "fast" ends every session (they see an admin shutdown) and
        checkpoints, "immediate" is a crash."""
        _run(["pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", str(timeout), "stop"],
             cwd=self.base, timeout=timeout + 10)

    def restart(self, down_s=0.0):
        """Stop (fast), stay down `down_s` seconds, start again."""
        self.stop()
        time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        """True while the postmaster of this data dir runs."""
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def postmaster_pid(self):
        """The postmaster's pid from postmaster.pid, or None."""
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (FileNotFoundError, ValueError):
            return None

    def server_log(self) -> str:
        """What the server logged (for a failing test's output)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def destroy(self):
        """Crash-stop the server if it runs (SIGQUIT to the postmaster when pg_ctl cannot)
        and remove its dir."""
        if self.running:
            try:
                self.stop(mode="immediate", timeout=15)
            except (RuntimeError, subprocess.TimeoutExpired):
                pid = self.postmaster_pid()
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.kill(pid, signal.SIGQUIT)  # the postmaster's immediate shutdown
                deadline = time.monotonic() + 10
                while self.running and time.monotonic() < deadline:
                    time.sleep(0.05)
                if self.running:
                    with contextlib.suppress(ProcessLookupError, TypeError):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- SQL and sessions ------------------------------------------------------------

    def sql(self, statement, params=()) -> list:
        """The rows (dicts) of one statement, on a connection of its own."""
        return pg_helpers.rows(self.url, statement, params)

    def sessions(self, application_name=None) -> list:
        """The client sessions other than the caller's (pg_stat_activity rows: pid,
        application_name, query, state), of one application_name if given."""
        return pg_helpers.rows(
            self.admin_url, "SELECT pid, application_name, query, state FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
            "AND (%(name)s::text IS NULL OR application_name = %(name)s) ORDER BY pid",
            {"name": application_name})

    def terminate(self, application_name=None, pids=None) -> list:
        """pg_terminate_backend on the sessions of `application_name` (or the given
        `pids`; with neither, every client session but the caller's), waiting up to
        5 s for each to end. Returns the pids terminated."""
        if pids is None:
            pids = [s["pid"] for s in self.sessions(application_name)]
        return [pid for pid in pids if pg_helpers.terminate(self.admin_url, pid)]


def make_template() -> str:
    """initdb a data dir with the role `root` and the database `test`; returns the dir
    that holds it (the cluster's base), stopped."""
    base = _owned_temp_dir("liteq-pgtpl-")
    cluster = Cluster(base, _free_port())
    try:
        _run(["initdb", "-D", cluster.data, "--auth=trust", "-U", ROLE, "-E", "UTF8",
              "--locale=C", "--no-sync", "--no-instructions"], cwd=base)
        with open(os.path.join(cluster.data, "postgresql.conf"), "a") as f:
            f.write(SETTINGS)
        _configure(cluster)
        cluster.start()
        pg_helpers.rows(cluster.admin_url, f"CREATE DATABASE {DATABASE}")
        cluster.stop()
    except BaseException:
        cluster.destroy()
        raise
    return base


def _configure(cluster):
    """Point the data dir's port and socket at this cluster's (later lines win)."""
    with open(os.path.join(cluster.data, "postgresql.conf"), "a") as f:
        f.write(f"port = {cluster.port}\nunix_socket_directories = '{cluster.base}'\n")


def clone(template_base) -> Cluster:
    """A new stopped cluster: a copy of the template's data dir on a free port."""
    base = _owned_temp_dir("liteq-pg-")
    cluster = Cluster(base, _free_port())
    # cp -a keeps the owner and the 0700 mode the server insists on.
    subprocess.run(["cp", "-a", os.path.join(template_base, "data"), cluster.data],
                   check=True, timeout=60)
    _configure(cluster)
    return cluster


@contextlib.contextmanager
def throwaway_cluster(template_base=None):
    """A started cluster (cloned from `template_base`, or initdb'd afresh); stopped in
    immediate mode and removed on the way out."""
    own_template = None
    if template_base is None:
        template_base = own_template = make_template()
    cluster = None
    try:
        for attempt in range(3):  # another process may take the free port first
            cluster = clone(template_base)
            try:
                cluster.start()
                break
            except RuntimeError:
                log = cluster.server_log()
                cluster.destroy()
                cluster = None
                port_taken = "could not bind" in log or "already in use" in log
                if not port_taken or attempt == 2:
                    raise
        yield cluster
    finally:
        try:
            if cluster is not None:
                cluster.destroy()
        finally:
            if own_template is not None:
                shutil.rmtree(own_template, ignore_errors=True)


def _required() -> bool:
    return bool(os.environ.get(pg_helpers.ENV))


@pytest.fixture(scope="session")
def pg_template():
    """The session's initdb'd data dir (see make_template); removed at the end."""
    problem = missing_tools()
    if problem:
        if _required():
            pytest.fail(f"cannot make a throwaway PostgreSQL cluster: {problem}")
        pytest.skip(f"throwaway-cluster cases skipped: {problem}")
    base = make_template()
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def throwaway_pg(pg_template):
    """A started throwaway cluster of this test alone (see Cluster); on failure its
    server log is printed."""
    with throwaway_cluster(pg_template) as cluster:
        try:
            yield cluster
        finally:
            print(f"--- throwaway cluster {cluster.url} server log ---\n"
                  f"{cluster.server_log()[-5000:]}")
