"""The type checkers see LiteQ's API: mypy --strict and pyright (strict), configured in
pyproject.toml, report nothing on liteq/, liteqd/, every example and
tests/typing/typed_calls.py, and reject each wrong call in tests/typing/wrong_calls.py.

Both run from the repository root, where `liteq` is the source tree (an editable
install's import hook is invisible to checkers)."""

import os
import re
import subprocess
import sys

import pytest

from support import REPO

# A checker reads the whole of liteq/ and liteqd/: minutes on a busy machine.
pytestmark = pytest.mark.timeout(900)

TYPING = os.path.join("tests", "typing")

#: Everything: the library, the daemon, every example and typed_calls.py. (Modules still
#: listed in pyproject.toml's mypy overrides and pyright ignore are skipped by the checkers.)
CLEAN = ["liteq", "liteqd", "examples", os.path.join(TYPING, "typed_calls.py")]
WRONG = os.path.join(TYPING, "wrong_calls.py")


def _run(argv, timeout=600):
    """Run a checker in the repository root; (exit code, output)."""
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONPATH": REPO})
    return p.returncode, p.stdout + p.stderr


def mypy(paths, tmp_path):
    """mypy with the project's settings (strict) on `paths`."""
    return _run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache"),
                 "--no-error-summary", "--show-error-codes", *paths])


def pyright(paths):
    """pyright with the project's settings (strict) on `paths`, against this interpreter's
    packages. (The first run fetches pyright's node package from npm.)"""
    return _run([sys.executable, "-m", "pyright", "--pythonpath", sys.executable, *paths])


def _error_lines(output, path, pattern):
    """Line numbers of `path` with an error in a checker's output."""
    name = re.escape(os.path.basename(path))
    return {int(m.group(1)) for m in re.finditer(name + pattern, output)}


def _wrong_lines():
    """{line number: what} of each `# wrong: WHAT` line of wrong_calls.py."""
    with open(os.path.join(REPO, WRONG)) as f:
        return {n: line.split("# wrong:")[1].strip()
                for n, line in enumerate(f, 1) if "# wrong:" in line}


def test_the_package_says_it_is_typed():
    assert os.path.isfile(os.path.join(REPO, "liteq", "py.typed"))
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        assert '"py.typed"' in f.read()  # shipped in the wheel as package data


def test_mypy_strict_passes_on_the_library_the_daemon_the_examples_and_typed_calls(tmp_path):
    code, out = mypy(CLEAN, tmp_path)
    assert code == 0, out


def test_pyright_strict_passes_on_the_library_the_daemon_the_examples_and_typed_calls():
    code, out = pyright(CLEAN)
    assert code == 0, out
    assert "0 errors" in out


def test_mypy_rejects_every_wrong_call(tmp_path):
    code, out = mypy([WRONG], tmp_path)
    assert code == 1, out
    found = _error_lines(out, WRONG, r":(\d+): error:")
    expected = _wrong_lines()
    assert set(expected) - found == set(), f"not rejected: {expected}\n{out}"
    assert found - set(expected) == set(), out


def test_pyright_rejects_every_wrong_call():
    code, out = pyright([WRONG])
    assert code == 1, out
    found = _error_lines(out, WRONG, r":(\d+):\d+ - error:")
    expected = _wrong_lines()
    assert set(expected) - found == set(), f"not rejected: {expected}\n{out}"
    assert found - set(expected) == set(), out


@pytest.mark.parametrize("checker", ["mypy", "pyright"])
def test_the_expected_reasons_are_given(checker, tmp_path):
    """The checkers name the problem: the parameter's type, the missing argument, the
    result's type."""
    out = mypy([WRONG], tmp_path)[1] if checker == "mypy" else pyright([WRONG])[1]
    wants = {"mypy": ['Argument 1 to "delay" of "Task" has incompatible type "str"; '
                      'expected "int"',
                      'Missing positional argument "b" in call to "delay"',
                      '"int" has no attribute "upper"',
                      'expression has type "int", variable has type "str"'],
             "pyright": ['cannot be assigned to parameter "a" of type "int" in function '
                         '"delay"',
                         'Argument missing for parameter "b"',
                         'Cannot access attribute "upper" for class "int"',
                         'Type "int" is not assignable to declared type "str"']}[checker]
    for want in wants:
        assert want in out, out
