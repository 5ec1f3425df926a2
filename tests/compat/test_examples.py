"""Every script in examples/ runs as it is, the way the README tells a user to run it.

Each one is started as `python examples/NAME.py` from the repository root, with
an environment that names no database or socket (so it must set up its own),
and must exit 0, print its expected words, and leave no process behind.

A new example is picked up by the glob; add its expected words to EXPECTED.
"""

import ast
import glob
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from importlib import metadata

import psutil
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support import REPO as ROOT

EXAMPLES_DIR = os.path.join(ROOT, "examples")
RUN_TIMEOUT = 60.0    # a hang guard, not a speed test
MARKER = "LITEQ_EXAMPLE_TEST_RUN"

# Words each example must print (plain substrings of its stdout).
EXPECTED = {
    "basic.py": ["send_email: done", "generate_report: done", "fetch_data: done",
                 "daemon stopped; done."],
    "multiple_queues.py": ["a pool per queue", "one shared pool", "with its own pool an email",
                           "daemon stopped; done."],
    "priorities.py": ["part 1", "part 2", "paused queues: ['default']",
                      "the order follows priority (ties: first enqueued runs first): yes",
                      "daemon stopped; done."],
    "monitoring.py": ["get_queue_stats():", "list_queues(): ['billing', 'default', 'images']",
                      "get_recent_tasks(limit=6):", "get_failed_tasks(limit=5):",
                      "get_active_workers():",
                      "ValueError: order 102: amount must be positive",
                      "after the daemon stopped, get_active_workers() returns []", "done."],
    "email_campaign.py": ["fake SMTP server listening on 127.0.0.1:", "delivered: 21",
                          "bounced:    2", "failed:     1",
                          "each delivered email arrived exactly once",
                          "daemon and SMTP server stopped; done."],
    "cron.py": ["heartbeat-every-2s", "nightly_backup", "fire #1", "fire #3",
                "3 schedule.fired events", "done."],
    "timeouts_and_retries.py": ["TaskTimeout: timed out after 1 s",
                                "the child was killed 0.5 s after the limit",
                                "worker process", "gone",
                                "flaky_task: done after 3 attempts",
                                "'succeeded on attempt 3'", "daemon stopped; done."],
    "bulk.py": ["enqueued 100,000 tasks", "tasks/s", "drained 100,000 tasks",
                "returned 199998", "daemon stopped; done."],
    "fastapi_app.py": ["HTTP 200", "done."],
    "django_app/run_demo.py": ["python manage.py liteqd: ready",
                               "POST /orders: HTTP 200", "POST /orders (payment refused): "
                               "HTTP 402", "None (rolled back with the order)",
                               "POST /orders/later: HTTP 200",
                               "send_receipt: done -> 'receipt for order 1 sent to ann@",
                               "receipt_sent=True", "server and daemon stopped; done."],
    "flask_app.py": ["flask liteq worker: ready", "POST /orders: HTTP 200",
                     "POST /orders (payment refused): HTTP 402",
                     "None (rolled back with the order)",
                     "send_receipt: done -> 'receipt for order 1 sent to ann@",
                     "receipt_sent=True", "server and worker stopped; done."],
    "rate_limits.py": ["enqueued 15 API calls", "in any one second: within the limits",
                       "did not wait for the limited tasks: yes", "daemon stopped; done."],
    "async_concurrency.py": ["fetch: 100 of 100 done", "ran in 1 worker process(es)",
                             "slow_fetch: failed (TaskTimeout: timed out after 1 s)",
                             "ran beside no coroutine: yes",
                             "the same worker process went on: yes",
                             "daemon stopped; done."],
    "workflows.py": ["report: done -> 'the page has 32 characters'", ": the same task",
                     "long_export: cancelled (TaskCancelled", "ran one after another: yes",
                     "daemon stopped; done."],
}

# Examples that are planned but may not be written yet: a skip until they exist.
PLANNED = {"fastapi_app.py"}

# Examples that take over 20 s; marked slow. None does on a quiet 2-CPU machine:
# bulk.py, the longest, takes 10-17 s there (over 20 s only when the machine is busy).
SLOW = set()


def _example_names():
    found = {os.path.basename(p) for p in glob.glob(os.path.join(EXAMPLES_DIR, "*.py"))}
    # Helper modules (_common.py, __init__.py) are not examples of their own.
    found = {n for n in found if not n.startswith("_")}
    return sorted(found | PLANNED)


def _params():
    return [pytest.param(name, id=name,
                         marks=[pytest.mark.slow] if name in SLOW else [])
            for name in _example_names()]


def _clean_env(token):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITEQ_")}
    # Inherited by everything the example starts (daemon, children, subprocesses),
    # so what it leaves behind is found without touching anyone else's processes.
    env[MARKER] = token
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _ours(proc, token, path, since):
    """True when `proc` is a live process this example run started."""
    try:
        if proc.pid == os.getpid() or proc.create_time() < since - 1.0:
            return False
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False  # already dead; its parent reaps it
        if path in " ".join(proc.cmdline()):
            return True
        return proc.environ().get(MARKER) == token
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _leftovers(token, path, since):
    return [p for p in psutil.process_iter() if _ours(p, token, path, since)]


def _describe(procs):
    out = []
    for p in procs:
        try:
            out.append(f"pid {p.pid}: {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            out.append(f"pid {p.pid}")
    return "; ".join(out)


def _stray_files():
    # A database or socket made in the working directory: the example did not use
    # a temporary database as it must.
    return {n for n in os.listdir(ROOT)
            if n.endswith((".db", ".db-wal", ".db-shm", ".sock", ".wake"))}


@pytest.mark.parametrize("name", _params())
def test_example_runs_as_is(name, record_property):
    _run_example(name, record_property)


# Examples in a directory of their own (a project), run by their demo script.
PROJECTS = ["django_app/run_demo.py"]


@pytest.mark.parametrize("name", PROJECTS)
def test_project_example_runs_as_is(name, record_property):
    _run_example(name, record_property)


@pytest.mark.parametrize("name", ["basic.py", "cron.py", "flask_app.py", *PROJECTS])
def test_example_runs_on_postgresql(name, record_property):
    """The same scripts, with LITEQ_DB naming a PostgreSQL queue (a schema of its own)."""
    from support import pg_helpers
    server = pg_helpers.server_url()
    schema, url = pg_helpers.create_schema(server)
    try:
        _run_example(name, record_property, LITEQ_DB=url)
    finally:
        pg_helpers.drop_schema(server, schema)


def _run_example(name, record_property, **env):
    """Run examples/NAME as a user would; check its words, exit code and leftovers."""
    path = os.path.join(EXAMPLES_DIR, name)
    if not os.path.exists(path):
        pytest.skip(f"examples/{name} is not written yet")
    token = uuid.uuid4().hex
    files_before = _stray_files()
    since = time.time()
    proc = subprocess.Popen([sys.executable, os.path.join("examples", name)], cwd=ROOT,
                            env=dict(_clean_env(token), **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Its daemon (a session of its own) holds the output pipes open: stop it
            # too, or reading the rest of the output would wait for it forever. Found
            # as a descendant while the example lives: the daemon's process title
            # overwrites the environment that carries MARKER.
            try:
                started = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                started = []
            os.killpg(proc.pid, signal.SIGKILL)
            for p in started + _leftovers(token, path, since):
                try:
                    p.kill()
                except psutil.Error:
                    pass
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                out, err = "(not read: the pipes stayed open)", ""
            pytest.fail(f"examples/{name} did not finish within {RUN_TIMEOUT:g} s\n"
                        f"--- stdout ---\n{out}\n--- stderr ---\n{err}")
        seconds = time.time() - since
        record_property("seconds", round(seconds, 2))
        report = f"--- stdout ---\n{out}\n--- stderr ---\n{err}"
        assert proc.returncode == 0, f"examples/{name} exited with {proc.returncode}\n{report}"
        assert out.strip(), f"examples/{name} printed nothing\n{report}"
        missing = [w for w in EXPECTED.get(name, []) if w not in out]
        assert not missing, f"examples/{name} did not print {missing}\n{report}"

        # Everything it started is stopped: give processes that are exiting a moment.
        deadline = time.monotonic() + 3.0
        left = _leftovers(token, path, since)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = _leftovers(token, path, since)
        assert not left, f"examples/{name} left processes running: {_describe(left)}"

        new_files = _stray_files() - files_before
        assert not new_files, (f"examples/{name} created {sorted(new_files)} in the "
                               f"repository root instead of a temporary directory")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for p in _leftovers(token, path, since):
            try:
                p.kill()
            except psutil.Error:
                pass


# ---- each example needs only the extras its README line names -------------------------------

README = os.path.join(ROOT, "README.md")


def _readme_extras():
    """{example: the extras its line in the README's Examples table names}: a line with
    `pip install -e '.[web,fastapi]'` names web and fastapi; one without, none."""
    lines = {}
    with open(README) as f:
        for line in f:
            found = re.match(r"\| `[^`]*examples/(\w+\.py)`", line)
            if found:
                extras = re.search(r"\.\[([\w,]+)\]", line)
                lines[found.group(1)] = set(extras.group(1).split(",")) if extras else set()
    return lines


def _distributions_of(dist, extras, seen):
    """Every distribution installing liteq with these extras brings (dist itself too)."""
    name = canonicalize_name(dist)
    if (name, frozenset(extras)) in seen:
        return
    seen.add((name, frozenset(extras)))
    for text in metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            continue
        _distributions_of(req.name, set(req.extras), seen)


def _imports(path):
    """The top-level modules a script imports, anywhere in it."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", sorted(n for n in _example_names()
                                         if os.path.exists(os.path.join(EXAMPLES_DIR, n))))
def test_example_imports_only_what_its_readme_extras_install(name):
    """`pip install -e '.[EXTRAS]'` with the extras the README's line names is enough:
    each module the example imports is the standard library's, its own, LiteQ's, or
    comes with those extras (the dev extra's test tools do not count)."""
    extras = _readme_extras()
    assert name in extras, f"the README's Examples table has no line for examples/{name}"
    seen = set()
    _distributions_of("liteq", extras[name], seen)
    allowed = {dist for dist, _ in seen}
    owners = metadata.packages_distributions()
    local = {os.path.splitext(os.path.basename(p))[0]
             for p in glob.glob(os.path.join(EXAMPLES_DIR, "*.py"))}
    missing = {}
    for module in _imports(os.path.join(EXAMPLES_DIR, name)):
        if module in sys.stdlib_module_names or module in local | {"liteq", "liteqd"}:
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if not dists & allowed:
            missing[module] = sorted(dists) or "not installed"
    assert not missing, (f"examples/{name} imports {missing}, which "
                         f"pip install -e '.[{','.join(sorted(extras[name]))}]' does not install")
