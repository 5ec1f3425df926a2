"""The control channel against real daemons: the protocol on a raw Unix socket,
liteq.control, the liteqctl command, bad input and floods, socket security and
paths, scaling under load, and enqueue wake-ups.

Every daemon is a real `python -m liteqd.cli` subprocess in its own session, on a
real database on each backend (conftest's `db`), with its socket in a short temp dir
under /tmp (sun_path holds 107 bytes). Each
test SIGKILLs every process it started (process group, then every descendant seen
via psutil) in teardown, and every wait has a deadline. No test asserts speed; the
few time bounds here tell "woken up" from "found by a 5 s poll" and are far from
what a working daemon needs.
"""

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from liteq import backends, control, get_task_status
from liteq.paths import SUN_PATH_MAX, socket_path, wake_path

from support.control_client import Client, connect, request
from support.daemon_helpers import (LITEQCTL, PYTHON as PY, TempDaemons, load_app_module,
                                    registry_restored, running)
from support.processes import fd_count, wait_for
from support.task_table import status

APP_SOURCE = '''
"""Tasks for tests/daemon/test_control_channel.py (written to a temp dir by the test module)."""
import os
import time

from liteq import task


def _append(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


@task(max_retries=0)
def stamp():
    return time.time()   # the task's first line: when it really started


@task(max_retries=0)
def add(a, b):
    return a + b


@task(max_retries=0)
def boom(message):
    raise ValueError(message)


@task(queue="reports", max_retries=0)
def report(n):
    return n


@task(max_retries=0)
def hold(path, seconds):
    _append(path, str(os.getpid()))
    time.sleep(seconds)
    return seconds


@task(max_retries=0)
def work(path, n):
    _append(path, "%d %d" % (n, os.getpid()))
    time.sleep(0.005)
    return n
'''


# ---- helpers ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app_path():
    d = tempfile.mkdtemp(prefix="lqapp-", dir="/tmp")
    path = os.path.join(d, "ctl_app.py")
    with open(path, "w") as f:
        f.write(APP_SOURCE)
    try:
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def app(app_path):
    """The app module loaded in the test process (for .delay()); the registry is restored."""
    with registry_restored():
        return load_app_module(app_path, name=f"_ctl_app_{uuid.uuid4().hex}")


@pytest.fixture
def lq(db, workdir, monkeypatch, app_path):
    """TempDaemons of the test app on conftest's `db`, with d.sock in `workdir`."""
    with running(TempDaemons(workdir, app_path, db=db), monkeypatch) as env:
        yield env


def pool0(path):
    st = request(path, "status")
    assert st["ok"], st
    return st["pools"][0]


def wait_done(task_ids, timeout=20.0, lq_env=None, statuses=("done",)):
    store = backends.get_backend()
    ids = list(task_ids)

    def check():
        rows = store.get_tasks(ids)
        return rows if len(rows) == len(ids) and all(
            r["status"] in ("done", "failed", "cancelled") for r in rows) else None
    rows = wait_for(check, timeout, lambda: f"tasks {ids[:10]}... not finished: "
                    f"{[(r['id'], r['status']) for r in store.get_tasks(ids)][:20]}\n"
                    + (lq_env.dump() if lq_env else ""))
    bad = [r for r in rows if r["status"] not in statuses]
    assert not bad, [(r["id"], r["status"], r["error"]) for r in bad]
    return {r["id"]: r for r in rows}


def result_of(task_id):
    return status(task_id)["result"]


def ctl(*args, timeout=60):
    """Run the liteqctl console script; returns the CompletedProcess."""
    return subprocess.run([LITEQCTL, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def run_as(uid, gid, groups, fn, timeout=20.0):
    """Fork, drop to uid/gid/groups, run fn() there, and return its JSON-able result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            out = {"uid": os.getuid(), "result": fn()}
            code = 0
        except BaseException as exc:  # noqa: B902 - report everything to the parent
            out = {"exception": f"{type(exc).__name__}: {exc}"}
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"forked peer (uid {uid}) did not finish within {timeout} s")
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    out = json.loads(data)
    assert "exception" not in out, out
    assert out["uid"] == uid
    return out["result"]


# ---- the protocol on a raw socket ---------------------------------------------------

def test_ping_answers_with_daemon_pid(lq):
    d = lq.daemon("--concurrency", "1")
    reply = request(lq.sock, "ping")
    assert reply == {"ok": True, "pong": True, "pid": d.pid}


def test_status_reports_pid_uptime_db_pools_and_children(lq):
    d = lq.daemon("--concurrency", "2")
    st = request(lq.sock, "status")
    assert st["ok"] is True
    assert st["pid"] == d.pid
    assert isinstance(st["uptime_s"], (int, float)) and st["uptime_s"] >= 0
    assert st["db"] == backends.identity_of(lq.db)
    assert len(st["pools"]) == 1
    pool = st["pools"][0]
    assert pool["name"] == "default" and pool["queues"] == ["default"] and pool["size"] == 2
    assert len(pool["children"]) == 2
    real = {c.pid for c in d.children()}
    assert {c["pid"] for c in pool["children"]} == real
    for c in pool["children"]:
        assert set(c) >= {"pid", "state", "task_id", "task_name", "rss_bytes", "tasks_done"}
        assert c["state"] == "idle" and c["task_id"] is None and c["task_name"] is None
        assert isinstance(c["rss_bytes"], int) and c["rss_bytes"] > 0
        assert c["tasks_done"] == 0
    time.sleep(0.2)
    assert request(lq.sock, "status")["uptime_s"] > st["uptime_s"]


def test_pipelined_requests_get_replies_in_order(lq):
    """Several requests sent in one write get one reply each, in order: more than the
    server serves per read (64), so the ones left over must be served too."""
    lq.daemon("--concurrency", "1")
    n = 150
    lines = []
    for i in range(n):
        if i % 3 == 0:
            lines.append({"op": "ping"})
        elif i % 3 == 1:
            lines.append({"op": "status"})
        else:
            lines.append({"op": f"no_such_op_{i}"})
    with Client(lq.sock, timeout=10) as c:
        c.send_raw(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
        replies = [c.recv() for _ in range(n)]
    for i, reply in enumerate(replies):
        if i % 3 == 0:
            assert reply.get("pong") is True, (i, reply)
        elif i % 3 == 1:
            assert reply["ok"] is True and "pools" in reply, (i, reply)
        else:
            assert reply["ok"] is False and f"no_such_op_{i}" in reply["error"], (i, reply)


def test_pause_stops_claiming_and_resume_runs_it(lq, app):
    lq.daemon("--concurrency", "1", "--poll-interval", "0.2")
    reply = request(lq.sock, "pause", queue="default")
    assert reply == {"ok": True, "paused": ["default"]}
    assert request(lq.sock, "status")["paused"] == ["default"]
    task_id = app.add.delay(2, 3)
    time.sleep(1.0)  # a wake-up and several polls happen meanwhile
    row = backends.get_backend().get_task(task_id)
    assert row["status"] == "pending" and row["attempts"] == 0, row
    reply = request(lq.sock, "resume", queue="default")
    assert reply == {"ok": True, "paused": []}
    wait_done([task_id], lq_env=lq)
    assert result_of(task_id) == 5


def test_reload_replaces_every_child(lq, app):
    d = lq.daemon("--concurrency", "2")
    before = {c["pid"] for c in pool0(lq.sock)["children"]}
    assert len(before) == 2
    assert request(lq.sock, "reload") == {"ok": True}

    def replaced():
        children = pool0(lq.sock)["children"]
        pids = {c["pid"] for c in children}
        return len(children) == 2 and not pids & before and \
            all(c["state"] == "idle" for c in children) and pids
    after = wait_for(replaced, 15, lambda: f"children not replaced\n{d.dump()}")
    assert {c.pid for c in d.children()} == after
    task_id = app.add.delay(1, 1)
    wait_done([task_id], lq_env=lq)


def test_shutdown_lets_running_task_finish_and_exits_zero(lq, app):
    d = lq.daemon("--concurrency", "1")
    trace = os.path.join(lq.tmp, "hold.txt")
    task_id = app.hold.delay(trace, 0.5)
    wait_for(lambda: os.path.exists(trace), 10, "the task never started")
    assert request(lq.sock, "shutdown") == {"ok": True}
    assert d.wait(20) == 0
    assert backends.get_backend().get_task(task_id)["status"] == "done"
    assert not os.path.exists(lq.sock)


@pytest.mark.sqlite_only
def test_wake_op_claims_a_task_enqueued_without_wakeup(lq, app, monkeypatch):
    """With a 30 s poll, a task enqueued while the wake-up goes elsewhere waits; the
    `wake` op makes the daemon claim it.

    SQLite only: the wake-up is diverted through LITEQ_SOCKET (SQLite's wake-ups are
    datagrams beside the control socket; PostgreSQL's NOTIFY cannot be diverted so)."""
    lq.daemon("--concurrency", "1", "--poll-interval", "30")
    monkeypatch.setenv("LITEQ_SOCKET", os.path.join(lq.tmp, "elsewhere.sock"))
    task_id = app.add.delay(20, 22)
    monkeypatch.setenv("LITEQ_SOCKET", lq.sock)
    time.sleep(1.0)
    assert backends.get_backend().get_task(task_id)["status"] == "pending"
    assert request(lq.sock, "wake") == {"ok": True}
    wait_done([task_id], timeout=10, lq_env=lq)
    assert result_of(task_id) == 42


@pytest.mark.sqlite_only
def test_control_wake_wakes_an_idle_daemon(lq, app, monkeypatch):
    """liteq.control.wake() (the datagram) does what the op does.

    SQLite only: the enqueue's own wake-up is diverted through LITEQ_SOCKET, as above."""
    lq.daemon("--concurrency", "1", "--poll-interval", "30")
    monkeypatch.setenv("LITEQ_SOCKET", os.path.join(lq.tmp, "elsewhere.sock"))
    task_id = app.add.delay(1, 2)
    monkeypatch.setenv("LITEQ_SOCKET", lq.sock)
    time.sleep(1.0)
    assert backends.get_backend().get_task(task_id)["status"] == "pending"
    assert control.wake() is None
    wait_done([task_id], timeout=10, lq_env=lq)


# ---- liteq.control -------------------------------------------------------------------

def test_control_status_includes_queue_counts(lq, app):
    lq.daemon("--concurrency", "2")
    done = [app.add.delay(i, i) for i in range(3)]
    failed = app.boom.delay("on purpose")
    wait_done(done, lq_env=lq)
    wait_done([failed], statuses=("failed",), lq_env=lq)
    pending = app.report.delay(7)          # "reports" is not served by this daemon
    trace = os.path.join(lq.tmp, "hold.txt")
    running = app.hold.delay(trace, 5.0)
    wait_for(lambda: os.path.exists(trace), 10, "hold never started")
    # The daemon writes a start shortly after the child's (liteqd.dispatch
    # MARK_STARTED_AFTER_S); until then the task counts as claimed.
    wait_for(lambda: get_task_status(running)["state"] == "running", 10, "never marked")

    st = control.status()
    assert set(st) >= {"pid", "uptime_s", "db", "pools", "queues"}
    queues = {q["queue"]: q for q in st["queues"]}
    assert queues["default"]["done"] == 3
    assert queues["default"]["failed"] == 1
    assert queues["default"]["running"] == 1
    assert queues["default"]["pending"] == 0
    assert queues["reports"]["pending"] == 1 and queues["reports"]["done"] == 0
    busy = [c for c in st["pools"][0]["children"] if c["state"] == "running"]
    assert [(c["task_id"], c["task_name"]) for c in busy] == [(running, "hold")]
    assert backends.get_backend().get_task(pending)["status"] == "pending"
    assert "queues" not in control.status(include_queues=False)


def test_control_client_operations(lq, app):
    d = lq.daemon("--concurrency", "1")
    assert control.ping()["pid"] == d.pid
    assert control.scale(2)["size"] == 2
    wait_for(lambda: len([c for c in pool0(lq.sock)["children"] if c["state"] == "idle"]) == 2,
             15, "scale(2) did not reach 2 idle children")
    assert control.pause("reports")["paused"] == ["reports"]
    assert control.resume("reports")["paused"] == []
    with pytest.raises(control.ControlError, match="no pool named 'nope'"):
        control.scale(3, pool="nope")
    with pytest.raises(control.ControlError, match="unknown op"):
        control.request("frobnicate")
    import liteq
    liteq.register_schedule(app.add, "*/5 * * * *", 1, 2, name="ctl-test-schedule")
    names = [s["name"] for s in control.schedules()]
    assert names == ["ctl-test-schedule"]
    assert control.reload()["ok"] is True
    assert control.shutdown()["ok"] is True
    assert d.wait(20) == 0


def test_control_raises_daemon_not_running_and_wake_is_silent(lq, app, monkeypatch):
    # No daemon at all: the socket file does not exist.
    for call in (control.ping, control.status, lambda: control.scale(2),
                 lambda: control.pause("default"), lambda: control.resume("default"),
                 control.reload, control.shutdown, control.schedules):
        with pytest.raises(control.DaemonNotRunning, match="no liteqd is running"):
            call()
    assert control.wake() is None
    assert isinstance(app.add.delay(1, 2), int)   # enqueue never needs the daemon
    # A stale socket file (bound, nobody listening): still "not running".
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(lq.sock)
    dead.close()
    with pytest.raises(control.DaemonNotRunning):
        control.ping()
    # A socket directory that does not exist.
    monkeypatch.setenv("LITEQ_SOCKET", os.path.join(lq.tmp, "no-such-dir", "d.sock"))
    with pytest.raises(control.DaemonNotRunning):
        control.status()
    assert control.wake() is None


# ---- liteqctl --------------------------------------------------------------------------

def test_liteqctl_status_prints_aligned_text(lq, app):
    d = lq.daemon("--concurrency", "2")
    wait_done([app.add.delay(i, 1) for i in range(4)], lq_env=lq)
    wait_done([app.boom.delay("x")], statuses=("failed",), lq_env=lq)
    children = sorted(c["pid"] for c in pool0(lq.sock)["children"])
    res = ctl("status")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    lines = out.splitlines()
    assert f"pid {d.pid}" in lines[0] and "up " in lines[0]
    assert any(line.split() == ["database", backends.identity_of(lq.db)] for line in lines)
    assert "pool default: 2/2 children, queues default" in out

    def table_after(header_word):
        i = next(n for n, line in enumerate(lines) if line.lstrip().startswith(header_word))
        rows = []
        for line in lines[i + 1:]:
            if not line.strip():
                break
            rows.append(line)
        return lines[i], rows

    header, rows = table_after("PID")
    assert header.split() == ["PID", "SLOT", "STATE", "TASK", "NAME", "RUNNING", "RSS", "DONE"]
    assert sorted(int(r.split()[0]) for r in rows) == children
    assert all(r.split()[2] == "idle" for r in rows)
    # Aligned: the right-aligned last column ends where its header ends.
    assert all(len(r) == len(header) for r in rows), (header, rows)

    header, rows = table_after("QUEUE")
    assert header.split() == ["QUEUE", "PENDING", "CLAIMED", "RUNNING", "FAILED", "DONE"]
    assert [r.split() for r in rows] == [["default", "0", "0", "0", "1", "4"]]
    assert all(len(r) == len(header) for r in rows), (header, rows)
    for word in ("PENDING", "CLAIMED", "RUNNING", "FAILED", "DONE"):   # numbers right-aligned
        end = header.index(word) + len(word)
        assert rows[0][end - 1].isdigit() and (end == len(rows[0]) or rows[0][end] == " ")


def test_liteqctl_status_json_has_every_documented_key(lq, app):
    d = lq.daemon("--concurrency", "2")
    wait_done([app.add.delay(1, 1)], lq_env=lq)
    res = ctl("status", "--json")
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert set(st) >= {"pid", "uptime_s", "db", "pools", "queues"}
    assert st["pid"] == d.pid and st["db"] == backends.identity_of(lq.db)
    assert isinstance(st["uptime_s"], (int, float))
    [pool] = st["pools"]
    assert set(pool) >= {"name", "queues", "size", "children"}
    assert (pool["name"], pool["queues"], pool["size"]) == ("default", ["default"], 2)
    assert len(pool["children"]) == 2
    for c in pool["children"]:
        assert set(c) >= {"pid", "state", "task_id", "task_name", "rss_bytes", "tasks_done"}
    assert sum(c["tasks_done"] for c in pool["children"]) == 1
    [q] = st["queues"]
    assert set(q) >= {"queue", "pending", "running", "done", "failed"}
    assert (q["queue"], q["pending"], q["running"], q["done"], q["failed"]) == \
        ("default", 0, 0, 1, 0)


def test_liteqctl_scale_returns_once_the_children_exist(lq):
    d = lq.daemon("--concurrency", "1")
    res = ctl("scale", "3")
    assert res.returncode == 0, res.stderr
    assert "3 children" in res.stdout
    pool = pool0(lq.sock)   # right after: no waiting here
    assert pool["size"] == 3 and len(pool["children"]) == 3
    assert all(c["state"] == "idle" for c in pool["children"])
    assert len(d.children()) == 3
    res = ctl("scale", "default", "1")
    assert res.returncode == 0, res.stderr
    pool = pool0(lq.sock)
    assert pool["size"] == 1 and len(pool["children"]) == 1
    wait_for(lambda: len(d.children()) == 1, 10, "retired children still running")


def test_liteqctl_pause_resume_reload_ping_schedules_shutdown(lq, app):
    d = lq.daemon("--concurrency", "1", "--poll-interval", "0.2")
    res = ctl("ping")
    assert res.returncode == 0 and res.stdout.strip() == f"pong from liteqd pid {d.pid}"

    res = ctl("pause", "default")
    assert res.returncode == 0 and "default" in res.stdout, res.stderr
    task_id = app.add.delay(3, 4)
    time.sleep(0.8)
    assert backends.get_backend().get_task(task_id)["status"] == "pending"
    res = ctl("resume", "default")
    assert res.returncode == 0 and "none" in res.stdout, res.stdout + res.stderr
    wait_done([task_id], lq_env=lq)

    res = ctl("schedules")
    assert res.returncode == 0 and res.stdout.strip() == "no schedules"
    import liteq
    liteq.register_schedule(app.add, "0 3 * * *", 1, 2, name="nightly-add")
    res = ctl("schedules")
    assert res.returncode == 0
    assert res.stdout.splitlines()[0].split()[:3] == ["NAME", "CRON", "TASK"]
    assert "nightly-add" in res.stdout and "0 3 * * *" in res.stdout
    res = ctl("schedules", "--json")
    assert [s["name"] for s in json.loads(res.stdout)] == ["nightly-add"]

    before = {c["pid"] for c in pool0(lq.sock)["children"]}
    res = ctl("reload")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: {c["pid"] for c in pool0(lq.sock)["children"]}.isdisjoint(before)
             and len(pool0(lq.sock)["children"]) == 1, 15, "reload kept the old child")

    res = ctl("shutdown")
    assert res.returncode == 0 and "stopping" in res.stdout
    assert d.wait(20) == 0


def test_liteqctl_exits_3_with_one_line_when_no_daemon(lq):
    missing = os.path.join(lq.tmp, "never-made.db")
    for args in (["status"], ["status", "--json"], ["ping"], ["scale", "2"],
                 ["pause", "default"], ["reload"], ["shutdown"],
                 ["--db", missing, "--socket", lq.sock, "schedules"]):
        res = ctl(*args)
        assert res.returncode == 3, (args, res.returncode, res.stdout, res.stderr)
        assert res.stdout == ""
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "no liteqd is running" in lines[0], (args, res.stderr)
        assert lq.sock in lines[0]
    assert "does not exist" in res.stderr and not os.path.exists(missing)


def test_liteqctl_schedules_reads_the_database_when_no_daemon_runs(lq, app):
    import liteq
    liteq.register_schedule(app.add, "0 3 * * *", 1, 2, name="nightly-add")
    res = ctl("schedules")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split()[:3] == ["NAME", "CRON", "TASK"]
    assert "nightly-add" in res.stdout and "0 3 * * *" in res.stdout
    note = res.stderr.strip().splitlines()
    assert len(note) == 1 and "no liteqd is running" in note[0], res.stderr
    assert f"read from {backends.identity_of(lq.db)}" in note[0], res.stderr
    res = ctl("schedules", "--json")
    assert res.returncode == 0, res.stderr
    assert [s["name"] for s in json.loads(res.stdout)] == ["nightly-add"]


def test_liteqctl_exits_1_on_an_error_reply(lq):
    lq.daemon("--concurrency", "1")
    for args, needle in ((["scale", "nope", "3"], "no pool named 'nope'"),
                         (["scale", "-1"], "whole number >= 0"),
                         (["scale", "x"], "whole number"),
                         (["pause", ""], "non-empty string")):
        res = ctl(*args)
        assert res.returncode == 1, (args, res.returncode, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, res.stderr)
    pool = pool0(lq.sock)
    assert pool["size"] == 1 and len(pool["children"]) == 1


def test_liteqctl_finds_the_daemon_from_flags(lq, monkeypatch):
    d = lq.daemon("--concurrency", "1")
    monkeypatch.delenv("LITEQ_SOCKET")
    monkeypatch.delenv("LITEQ_DB")
    res = ctl("--socket", lq.sock, "ping")
    assert res.returncode == 0 and str(d.pid) in res.stdout, res.stderr


# ---- bad input -------------------------------------------------------------------------

MALFORMED = [
    (b"this is not json\n", "malformed JSON"),
    (b"[1, 2, 3]\n", "JSON object"),
    (b'"ping"\n', "JSON object"),
    (b"null\n", "JSON object"),
    (b'{"no_op": 1}\n', "missing \"op\""),
    (b'{"op": 5}\n', "missing \"op\""),
    (b'{"op": "explode"}\n', "unknown op 'explode'"),
    (b'{"op": "scale", "size": "x"}\n', "whole number"),
    (b'{"op": "scale", "size": true}\n', "whole number"),
    (b'{"op": "scale", "size": 2.5}\n', "whole number"),
    (b'{"op": "scale", "size": -3}\n', "whole number"),
    (b'{"op": "scale"}\n', "whole number"),
    (b'{"op": "scale", "size": 2, "pool": 5}\n', "\"pool\" must be a string"),
    (b'{"op": "scale", "size": ' + b"9" * 5000 + b"}\n", "malformed JSON"),
    (b'{"op": "pause", "queue": 5}\n', "\"queue\" must be a non-empty string"),
    (b'{"op": "pause"}\n', "\"queue\" must be a non-empty string"),
    (b'{"op": "resume", "queue": ["default"]}\n', "\"queue\" must be a non-empty string"),
    (b"\xff\xfe\x00\x80garbage\n", "malformed JSON"),
    (b"[" * 60000 + b"\n", "malformed JSON"),     # nesting deeper than the parser's stack
]


def test_malformed_requests_get_error_replies_and_the_daemon_carries_on(lq, app):
    d = lq.daemon("--concurrency", "2")
    with Client(lq.sock) as c:
        for data, needle in MALFORMED:
            c.send_raw(data)
            reply = c.recv()
            assert reply["ok"] is False and needle in reply["error"], (data[:60], reply)
        assert c.request("ping")["pong"] is True   # the same connection still works
    # Binary garbage with newlines: error replies, then the connection still serves.
    with Client(lq.sock) as c:
        garbage = os.urandom(4096).replace(b"{", b"(")  # no accidental JSON objects
        c.send_raw(garbage + b"\n")
        lines = [x for x in garbage.split(b"\n") if x.strip()]
        for _ in range(len(lines)):
            reply = c.recv()
            assert reply["ok"] is False, reply
        assert c.request("ping")["pong"] is True
    # An oversize line (no newline, > 64 KiB): an error reply, then the server hangs up.
    with Client(lq.sock) as c:
        c.send_raw(b"a" * (70 * 1024))
        reply = c.recv()
        assert reply["ok"] is False and "longer than" in reply["error"]
        assert c.at_eof()
    assert d.alive()
    pool = pool0(lq.sock)
    assert pool["size"] == 2 and len(pool["children"]) == 2
    assert request(lq.sock, "status")["paused"] == []
    task_id = app.add.delay(5, 6)
    wait_done([task_id], lq_env=lq)
    assert result_of(task_id) == 11



def _padded_ping(size):
    """A ping request line of exactly `size` bytes (spaces pad the JSON), newline extra."""
    line = b'{"op":"ping"}'
    return line + b" " * (size - len(line)) + b"\n"


def test_the_line_cap_is_exact(lq):
    # The cap was checked only on what one read left over, so a 72,002-byte line whose
    # newline came in the next read was served.
    from liteqd.control_server import MAX_LINE
    d = lq.daemon("--concurrency", "1")
    with Client(lq.sock) as c:
        c.send_raw(_padded_ping(MAX_LINE))
        assert c.recv()["pong"] is True
        assert c.request("ping")["pong"] is True
    for size in (MAX_LINE + 1, 72_001):
        with Client(lq.sock) as c:
            c.send_raw(_padded_ping(size))
            reply = c.recv()
            assert reply["ok"] is False, (size, reply)
            assert f"longer than {MAX_LINE} bytes" in reply["error"]
            assert c.at_eof()
    # Several lines in one write: those within the cap are served, the long one ends it.
    with Client(lq.sock) as c:
        c.send_raw(_padded_ping(100) + _padded_ping(MAX_LINE + 10) + _padded_ping(100))
        assert c.recv()["pong"] is True
        assert "longer than" in c.recv()["error"]
        assert c.at_eof()
    assert request(lq.sock, "ping")["pid"] == d.pid

# ---- floods ----------------------------------------------------------------------------

def test_silent_client_does_not_block_others(lq, app):
    d = lq.daemon("--concurrency", "1")
    silent = []
    try:
        for i in range(100):
            c = Client(lq.sock)
            if i % 2:
                c.send_raw(b'{"op": "pi')   # half a request, never finished
            silent.append(c)
        reply = request(lq.sock, "ping")
        assert reply["pong"] is True and reply["pid"] == d.pid
        task_id = app.add.delay(1, 1)
        wait_done([task_id], lq_env=lq)
    finally:
        for c in silent:
            c.close()


def _connect_many(path, n):
    return [connect(path) for _ in range(n)]


def test_flood_of_silent_and_garbage_connections(lq, app):
    d = lq.daemon("--concurrency", "2")
    trace = os.path.join(lq.tmp, "work.txt")
    first = [app.work.delay(trace, n) for n in range(100)]
    wait_done(first[:1], lq_env=lq)
    request(lq.sock, "ping")
    baseline = fd_count(d.pid)

    socks = []
    try:
        # 300 silent and 200 spewing connections, interleaved, all open at once.
        for _ in range(100):
            socks.append(("silent", _connect_many(lq.sock, 3)))
            socks.append(("spew", _connect_many(lq.sock, 2)))
        spewers = [s for kind, group in socks if kind == "spew" for s in group]
        silent = [s for kind, group in socks if kind == "silent" for s in group]
        assert len(silent) == 300 and len(spewers) == 200
        more = []
        for rnd in range(6):
            for s in spewers:
                junk = os.urandom(2048) + (b"\n" if rnd % 2 else b"")
                with contextlib.suppress(OSError):
                    s.send(junk)
            more += [app.work.delay(trace, 100 + rnd * 20 + k) for k in range(20)]
            # Drain what the daemon answered, so it is the garbage that is tested.
            for s in spewers:
                with contextlib.suppress(OSError):
                    while s.recv(65536):
                        pass
        assert d.alive()
    finally:
        for _, group in socks:
            for s in group:
                s.close()
    ids = first + more
    wait_done(ids, timeout=30, lq_env=lq)
    lines = open(trace).read().split()
    assert sorted(int(x) for x in lines[::2]) == list(range(220))
    reply = request(lq.sock, "ping")
    assert reply["pong"] is True and reply["pid"] == d.pid
    wait_for(lambda: fd_count(d.pid) <= baseline + 3, 15,
             lambda: f"fds did not come back: {fd_count(d.pid)} now, {baseline} before")
    assert len(pool0(lq.sock)["children"]) == 2



def _timed_out(c):
    """The server's goodbye to a connection that sent no complete request in time."""
    reply = c.recv()
    assert reply["ok"] is False and "no complete request line within 2 s" in reply["error"]
    assert c.at_eof()
    return True


def test_connections_without_a_complete_request_are_closed_within_seconds(lq):
    # They stayed for 30 s, so 128 of them locked everyone out for that long.
    lq.daemon("--concurrency", "1")
    silent, partial, answered = Client(lq.sock, 15), Client(lq.sock, 15), Client(lq.sock, 15)
    try:
        partial.send_raw(b'{"op": "pi')            # and then nothing more
        assert answered.request("ping")["pong"] is True   # then silence
        for c in (silent, partial, answered):
            assert _timed_out(c)   # Client's 15 s timeout bounds each wait
    finally:
        for c in (silent, partial, answered):
            c.close()


def test_a_crowd_of_silent_connections_locks_liteqctl_out_only_briefly(lq):
    from liteqd.control_server import MAX_CONNECTIONS
    d = lq.daemon("--concurrency", "1")
    crowd = _connect_many(lq.sock, MAX_CONNECTIONS)
    try:
        def pinged():
            res = ctl("--timeout", "5", "ping")
            if res.returncode == 0:
                return res
            assert "too many control connections" in res.stderr, res.stderr
            return None
        res = wait_for(pinged, 15, lambda: f"liteqctl still locked out\n{lq.dump()}",
                       interval=0.2)
        assert str(d.pid) in res.stdout
    finally:
        for s in crowd:
            s.close()


def _connections_of(uid, path, n, timeout=20.0):
    """Open n connections to `path` from a forked process running as `uid`, and bring
    them back here (SCM_RIGHTS): the daemon sees that uid as their peer (SO_PEERCRED
    is taken at connect time) while this test drives them."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            ours.close()
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            socks = [connect(path) for _ in range(n)]
            socket.send_fds(theirs, [b"x"], [s.fileno() for s in socks])
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    try:
        ours.settimeout(timeout)
        _, fds, _, _ = socket.recv_fds(ours, 16, n)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    assert len(fds) == n, f"the uid {uid} process passed {len(fds)} of {n} connections"
    socks = []
    for fd in fds:
        s = socket.socket(fileno=fd)
        s.settimeout(10)
        socks.append(s)
    return socks


def _ping_on(s):
    """A ping on a raw connection: the first line the server sent (its reply, or why it
    closed the connection), or None when it hung up without a word."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(b'{"op":"ping"}\n')
    data = b""
    while b"\n" not in data:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return None
        data += chunk
    return json.loads(data.split(b"\n", 1)[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_the_last_connection_slot_is_kept_for_the_operator(lq):
    from liteqd.control_server import MAX_CONNECTIONS
    d = lq.daemon("--concurrency", "1")
    os.chmod(lq.tmp, 0o755)
    os.chmod(lq.sock, 0o666)   # let uid 65534 reach the socket
    others = _connections_of(65534, lq.sock, MAX_CONNECTIONS)
    try:
        # Every slot but the last went to uid 65534; its last connection was refused.
        replies = [_ping_on(s) for s in others]
        refused = [r for r in replies if r is None or not r.get("pong")]
        assert len(refused) == 1, refused[:3]
        assert refused[0] == {"ok": False, "error": "too many control connections"}
        # An operator (the daemon's own uid, root here) still gets in, and then the
        # daemon is full for everyone.
        with Client(lq.sock) as op:
            assert op.request("ping")["pid"] == d.pid
            assert op.request("scale", size=2)["ok"] is True
            with pytest.raises(control.ControlError, match="too many control connections"):
                control.ping(path=lq.sock)
        # The reserved slot is free again, but not for uid 65534.
        late = _connections_of(65534, lq.sock, 1)[0]
        others.append(late)
        assert _ping_on(late) == {"ok": False, "error": "too many control connections"}
        # uid 65534's connections were served all along: it was the reserve that let
        # the operator in, not a slot freed by the request timeout.
        assert [_ping_on(s)["pong"] for s, r in zip(others, replies) if r and r.get("pong")] \
            == [True] * (MAX_CONNECTIONS - 1)
    finally:
        for s in others:
            s.close()

def _fill_backlog(path):
    """Connect (without being accepted) until the listen backlog is full."""
    held = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            return held
        held.append(s)
        assert len(held) < 5000, "the backlog never filled"


@pytest.mark.parametrize("caller", ["liteqctl", "liteq.control"])
def test_clients_wait_while_the_daemon_backlog_is_full(lq, caller):
    """A daemon too busy to accept (SIGSTOPped here for 1 s) with its backlog full: the
    client waits for room within its timeout instead of failing at once with EAGAIN."""
    d = lq.daemon("--concurrency", "1")
    held = []
    resume = threading.Timer(1.0, os.kill, (d.pid, signal.SIGCONT))
    os.kill(d.pid, signal.SIGSTOP)
    try:
        held = _fill_backlog(lq.sock)
        resume.start()
        if caller == "liteqctl":
            res = ctl("--timeout", "10", "ping")
            assert res.returncode == 0 and str(d.pid) in res.stdout, res.stderr
        else:
            assert control.ping(timeout=10)["pid"] == d.pid
    finally:
        resume.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.kill(d.pid, signal.SIGCONT)
        for s in held:
            s.close()
    assert request(lq.sock, "ping")["pid"] == d.pid


# ---- security -----------------------------------------------------------------------------

def test_socket_file_is_owner_only(lq):
    lq.daemon("--concurrency", "1")
    st = os.stat(lq.sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()


def _peer_session(path):
    """Run in a forked peer: one connection per op, replies as a dict."""
    return {op: request(path, op, **args)
            for op, args in (("ping", {}), ("status", {}), ("scale", {"size": 4}),
                             ("shutdown", {}), ("pause", {"queue": "default"}),
                             ("reload", {}))}


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_refused_peer_of_another_uid(lq):
    d = lq.daemon("--concurrency", "1")
    os.chmod(lq.tmp, 0o755)
    os.chmod(lq.sock, 0o666)   # let uid 65534 reach the socket; the daemon still checks it
    replies = run_as(65534, 65534, [], lambda: _peer_session(lq.sock))
    assert replies["ping"]["ok"] is True and replies["ping"]["pid"] == d.pid
    assert replies["status"]["ok"] is True and replies["status"]["pid"] == d.pid
    for op in ("scale", "shutdown", "pause", "reload"):
        assert replies[op]["ok"] is False, (op, replies[op])
        assert "permission denied" in replies[op]["error"]
        assert "uid 65534" in replies[op]["error"]
    time.sleep(0.3)
    assert d.alive()
    st = request(lq.sock, "status")
    assert st["pools"][0]["size"] == 1 and st["paused"] == [] and st["state"] == "running"
    assert len(d.children()) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_socket_group_gets_mode_0660_and_its_members_may_change_state(lq):
    import grp
    try:
        group = grp.getgrgid(65534).gr_name
    except KeyError:
        pytest.skip("no group with gid 65534 here")
    d = lq.daemon("--concurrency", "1", "--socket-group", group)
    st = os.stat(lq.sock)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 65534
    os.chmod(lq.tmp, 0o755)

    def scale(size):
        return request(lq.sock, "scale", size=size)

    # A member through its primary group, then through a supplementary group.
    assert run_as(65533, 65534, [], lambda: scale(2))["ok"] is True
    assert run_as(65533, 65533, [65534], lambda: scale(3))["ok"] is True
    wait_for(lambda: len(pool0(lq.sock)["children"]) == 3, 10, "scale by a group member")
    # Not a member (the file is made reachable by hand): refused.
    os.chmod(lq.sock, 0o666)
    refused = run_as(65533, 65533, [], lambda: scale(1))
    assert refused["ok"] is False and "permission denied" in refused["error"]
    assert pool0(lq.sock)["size"] == 3 and d.alive()


# ---- socket paths, stale and live sockets ----------------------------------------------

def test_stale_socket_of_a_killed_daemon_is_replaced(lq, app):
    first = lq.daemon("--concurrency", "1")
    first.kill_everything()   # SIGKILL: no clean-up, the socket file stays behind
    assert os.path.exists(lq.sock)
    with pytest.raises(control.DaemonNotRunning):
        control.ping()
    second = lq.daemon("--concurrency", "1")
    assert request(lq.sock, "ping")["pid"] == second.pid
    task_id = app.add.delay(2, 2)
    wait_done([task_id], lq_env=lq)


def test_second_daemon_refuses_a_live_socket(lq, app):
    first = lq.daemon("--concurrency", "1")
    second = lq.daemon("--concurrency", "1", ready=False)
    rc = second.wait(20)
    assert rc != 0
    err = second.stderr()
    assert "another liteqd is already listening" in err and lq.sock in err, err
    assert not second.events("daemon.ready")
    assert first.alive()
    assert request(lq.sock, "ping")["pid"] == first.pid
    if not backends.is_postgres(lq.db):  # SQLite's wake-up socket lives beside it
        assert os.path.exists(wake_path(lq.sock))
    task_id = app.add.delay(3, 3)
    wait_done([task_id], lq_env=lq)


@pytest.mark.sqlite_only
def test_default_socket_path_is_derived_from_the_db(monkeypatch, tmp_path):
    """SQLite only: the socket path is derived from a database file's path."""
    monkeypatch.delenv("LITEQ_SOCKET", raising=False)
    short_dir = tempfile.mkdtemp(prefix="lqp-", dir="/tmp")
    try:
        db = os.path.join(short_dir, "app.db")
        path = socket_path(db)
        assert path == os.path.join(short_dir, ".app.db.liteqd.sock")
        assert wake_path(path) == os.path.join(short_dir, ".app.db.liteqd.wake")
        monkeypatch.setenv("LITEQ_DB", db)
        assert socket_path(backends.identity_of()) == path   # the queue LITEQ_DB names
    finally:
        shutil.rmtree(short_dir, ignore_errors=True)
    long_dir = os.path.join(str(tmp_path), *["d" * 40] * 4)
    db = os.path.join(long_dir, "queue.db")
    assert len(os.path.join(long_dir, ".queue.db.liteqd.sock").encode()) > SUN_PATH_MAX
    path = socket_path(db)
    assert len(path.encode()) <= SUN_PATH_MAX
    assert len(wake_path(path).encode()) <= SUN_PATH_MAX
    assert not path.startswith(long_dir)
    assert socket_path(db) == path                       # stable
    assert socket_path(os.path.join(long_dir, "other.db")) != path
    monkeypatch.setenv("LITEQ_SOCKET", "/tmp/explicit.sock")
    assert socket_path(db) == "/tmp/explicit.sock"


@pytest.mark.sqlite_only
@pytest.mark.parametrize("where", ["next_to_db", "long_dir_fallback"])
def test_daemon_and_clients_meet_with_only_the_db_path(lq, monkeypatch, where):
    """SQLite only: the socket is found beside (or derived from) a database file's path."""
    if where == "next_to_db":
        db = os.path.join(lq.tmp, "found.db")
    else:
        deep = os.path.join(lq.tmp, *["x" * 30] * 4)
        os.makedirs(deep)
        db = os.path.join(deep, "found.db")
    monkeypatch.delenv("LITEQ_SOCKET")
    monkeypatch.setenv("LITEQ_DB", db)
    backends.forget_backends()
    expected = socket_path(db)
    try:
        d = lq.daemon("--concurrency", "1", db=db, sock=None)
        assert os.path.exists(expected)
        if where == "next_to_db":
            assert os.path.dirname(expected) == lq.tmp
        else:
            assert not expected.startswith(lq.tmp) and len(expected.encode()) <= SUN_PATH_MAX
        assert control.ping()["pid"] == d.pid
        res = ctl("--db", db, "ping")
        assert res.returncode == 0 and str(d.pid) in res.stdout, res.stderr
    finally:
        if where != "next_to_db":
            for d in lq.daemons:
                d.kill_everything()
            for p in (expected, wake_path(expected)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)


# ---- scale under load -------------------------------------------------------------------

PRODUCER = r'''
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("producer_app", sys.argv[1])
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
trace, n = sys.argv[2], int(sys.argv[3])
for i in range(n):
    print(app.work.delay(trace, i), flush=True)
    if i % 20 == 19:
        time.sleep(0.05)
'''


def test_scale_1_to_6_to_1_under_load_loses_nothing(lq, app):
    d = lq.daemon("--concurrency", "1", "--poll-interval", "0.5")
    trace = os.path.join(lq.tmp, "work.txt")
    n = 600
    producer = lq.popen([PY, "-c", PRODUCER, lq.app_path, trace, str(n)],
                        stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.exists(trace), 15, "no task ran")
        res = ctl("scale", "6")
        assert res.returncode == 0, res.stderr
        assert len(pool0(lq.sock)["children"]) == 6
        wait_for(lambda: sum(1 for c in pool0(lq.sock)["children"]
                             if c["tasks_done"] > 0) >= 3, 15,
                 "the new children never took work")
        res = ctl("scale", "1")
        assert res.returncode == 0, res.stderr
        out, _ = producer.communicate(timeout=60)
    finally:
        if producer.poll() is None:
            producer.kill()
    assert producer.returncode == 0
    ids = [int(x) for x in out.split()]
    assert len(ids) == n
    wait_done(ids, timeout=60, lq_env=lq)
    runs = [line.split() for line in open(trace).read().splitlines()]
    counts = {}
    for num, _pid in runs:
        counts[int(num)] = counts.get(int(num), 0) + 1
    assert sorted(counts) == list(range(n)), "a task never ran"
    assert [k for k, v in counts.items() if v > 1] == [], "a task ran twice"
    assert len({pid for _, pid in runs}) >= 3          # the extra children did run tasks
    pool = pool0(lq.sock)
    assert pool["size"] == 1 and len(pool["children"]) == 1
    wait_for(lambda: len(d.children()) == 1, 10, "more than one child process remains")
    assert d.events("pool.scaled")


# ---- wake-ups ---------------------------------------------------------------------------

def test_delay_wakes_an_idle_daemon_at_once(lq, app):
    """With a 5 s poll, only the wake-up can start a task within half a second."""
    lq.daemon("--concurrency", "2", "--poll-interval", "5")
    time.sleep(0.3)   # idle: the start-up claims are over
    gaps = []
    for _ in range(20):
        task_id = app.stamp.delay()
        t0 = time.time()
        wait_done([task_id], timeout=10, lq_env=lq)
        gaps.append(result_of(task_id) - t0)
        time.sleep(0.05)
    assert max(gaps) < 0.5, [round(g, 4) for g in gaps]


def test_task_scheduled_ahead_starts_on_time_without_fast_polling(lq, app):
    lq.daemon("--concurrency", "1", "--poll-interval", "5")
    time.sleep(0.3)
    t0 = time.time()
    task_id = app.stamp.schedule(1.5)
    wait_done([task_id], timeout=10, lq_env=lq)
    started = result_of(task_id) - t0
    assert 1.4 <= started < 3.0, started
