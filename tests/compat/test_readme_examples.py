"""Every Python block of README.md marked for testing runs as shown.

Markers (an HTML comment on the line before a ```python block):
  <!-- readme-test: file NAME -->             write the block to NAME
  <!-- readme-test: run -->                   run it as a script
  <!-- readme-test: run-with-daemon APP -->   run it while a liteqd serves APP
  <!-- readme-test: run-until-sigterm -->     run it, SIGTERM it after 3 s, expect exit 0
All blocks share one temporary directory and database (each backend: conftest's `db`),
in README order.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (?P<mode>[\w-]+)(?: (?P<arg>\S+))? -->\n"
                   r"```python\n(?P<code>.*?)```", re.S)


def blocks():
    """The marked blocks, in README order."""
    return [(m["mode"], m["arg"], m["code"]) for m in BLOCK.finditer(README.read_text())]


def test_readme_has_marked_blocks():
    modes = [mode for mode, _, _ in blocks()]
    assert modes.count("run") >= 4 and "file" in modes
    # Every python block is marked: none is left untested.
    assert README.read_text().count("```python") == len(modes)


def test_readme_blocks_run(db, workdir):
    tmp_path = Path(workdir)
    # LITEQ_DB and LITEQ_SOCKET come from conftest's db.
    env = dict(os.environ, PYTHONPATH=workdir)
    for n, (mode, arg, code) in enumerate(blocks()):
        if mode == "file":
            (tmp_path / arg).write_text(code)
            continue
        script = tmp_path / f"block_{n}.py"
        script.write_text(code)
        argv = [sys.executable, str(script)]
        if mode == "run":
            proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=60)
        elif mode == "run-with-daemon":
            from liteq.launcher import start_daemon
            with start_daemon(str(tmp_path / arg), db=env["LITEQ_DB"], concurrency=1,
                              socket=env["LITEQ_SOCKET"]):
                proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True,
                                      text=True, timeout=60)
        elif mode == "run-until-sigterm":
            p = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
            try:
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGTERM)
                out, err = p.communicate(timeout=30)
            finally:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
            proc = subprocess.CompletedProcess(argv, p.returncode, out, err)
        else:
            pytest.fail(f"unknown readme-test mode {mode!r}")
        assert proc.returncode == 0, f"README block {n} ({mode}) failed:\n{code}\n" \
                                     f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
