"""Shell completion: `liteqctl completion bash` (and `liteq completion bash`) print a
script that real bash loads and that completes subcommands, flags and flag values,
driven through COMP_WORDS / COMP_CWORD as bash itself drives it.
"""

import os
import shutil
import subprocess

import pytest

from support.daemon_helpers import LITEQCTL, PYTHON

LITEQ = os.path.join(os.path.dirname(PYTHON), "liteq")

# Calls the completion function for each line of words (a trailing space: an empty
# word being completed) and prints what it offers.
DRIVER = r'''
source "$1"
shift
for line in "$@"; do
    read -r -a COMP_WORDS <<< "$line"
    [ "${line: -1}" = " " ] && COMP_WORDS+=("")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMPREPLY=()
    _liteq_complete
    echo "${COMPREPLY[*]}"
done
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    out = subprocess.run([LITEQCTL, "completion", "bash"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    path = tmp_path_factory.mktemp("completion") / "liteq.bash"
    path.write_text(out.stdout)
    return path


def complete(script, *lines, cwd=None):
    """What bash offers for each line (the word under the cursor is the last one)."""
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", DRIVER, "driver",
                          str(script), *lines], capture_output=True, text=True, timeout=30,
                         cwd=cwd)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return [row.split() for row in out.stdout.splitlines()]


def test_the_script_loads_in_bash_and_registers_all_three_commands(script):
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c",
                          f"source {script} && complete -p liteq liteqd liteqctl"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.count("-F _liteq_complete") == 3
    # `liteq completion bash` prints the same script.
    same = subprocess.run([LITEQ, "completion", "bash"], capture_output=True, text=True,
                          timeout=60)
    assert same.stdout == script.read_text()


def test_subcommands_and_their_flags(script):
    got = complete(script, "liteqctl ", "liteqctl pu", "liteqctl --db q.db st",
                   "liteqctl purge --", "liteqctl failed --older-than 1d --q", "liteq ",
                   "liteq db ", "liteq db upgrade --s", "liteq worker --con", "liteqd --no-d")
    assert {"status", "failed", "retry", "purge", "completion", "schedules"} <= set(got[0])
    assert got[1] == ["purge"]
    assert got[2] == ["status"]            # --db's value is skipped, not taken for a command
    assert {"--older-than", "--status", "--yes", "--dry-run", "--json", "--queue"} <= \
        set(got[3])
    assert got[4] == ["--queue"]
    assert set(got[5]) == {"worker", "scheduler", "monitor", "bench", "grants", "db",
                           "completion"}
    assert got[6] == ["status", "upgrade"]
    assert got[7] == ["--sql"]
    assert got[8] == ["--concurrency"]
    assert got[9] == ["--no-ddl"]


def test_flag_values_and_positional_choices(script, tmp_path):
    (tmp_path / "tasks.py").write_text("")
    got = complete(script, "liteqctl completion ", "liteqctl purge --status c",
                   "liteqd --log-format ", "liteq scheduler --log-level w",
                   "liteqd --app ta", "liteqctl --reply-timeout ", cwd=tmp_path)
    assert got[0] == ["bash", "zsh"]
    assert got[1] == ["cancelled"]
    assert got[2] == ["json", "console", "auto"]
    assert got[3] == ["warning"]
    assert got[4] == ["tasks.py"]          # --app takes a file
    assert got[5] == []                    # a number: nothing to offer
    # The deprecated --timeout is not offered, though its value is still skipped.
    assert "--timeout" not in complete(script, "liteqctl --")[0]
    assert complete(script, "liteqctl --timeout 5 pi")[0] == ["ping"]


def test_zsh_script_wraps_the_bash_one(script):
    out = subprocess.run([LITEQCTL, "completion", "zsh"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith("#compdef liteq liteqd liteqctl\n")
    assert "bashcompinit" in out.stdout and script.read_text().strip() in out.stdout
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed: its loading is not checked here")
    # What zsh's bashcompinit does for each completion: COMP_WORDS is a zsh array
    # (1-based) of the words, COMP_CWORD the 0-based index of the current one; its
    # compgen does not filter by the word (zsh's compadd then does: done here).
    zsh_driver = r'''
        autoload -U compinit && compinit -u
        source "$1"; shift
        for line in "$@"; do
            words=(${=line}); [[ $line == *" " ]] && words+=("")
            COMP_WORDS=("${words[@]}"); COMP_CWORD=$(( ${#words} - 1 )); COMPREPLY=()
            _liteq_complete
            matches=()
            for m in "${COMPREPLY[@]}"; do [[ $m == ${words[-1]}* ]] && matches+=($m); done
            print -r -- "${matches[*]}"
        done
    '''
    zsh_script = script.parent / "liteq.zsh"
    zsh_script.write_text(out.stdout)
    check = subprocess.run(["zsh", "-f", "-c", zsh_driver, "driver", str(zsh_script),
                            "liteqctl pu", "liteqctl --db q.db st", "liteq db ",
                            "liteqd --log-format c", "liteqctl purge --dry"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines() == ["purge", "status", "status upgrade", "console",
                                         "--dry-run"], check.stdout + check.stderr
