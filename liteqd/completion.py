"""Shell completion for `liteq`, `liteqd` and `liteqctl`: `liteqctl completion bash`.

The script is generated from the commands' own argument parsers, so a new flag or
subcommand is completed without anyone editing it. It completes subcommands,
flags, the choices of flags that have them (`--log-format json|console|auto`),
and file names for --app, --db and --socket. No dependency: it is plain bash
(zsh loads it through bashcompinit).

    source <(liteqctl completion bash)          # now; or, for good:
    liteqctl completion bash > ~/.local/share/bash-completion/completions/liteqctl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

PROGRAMS = ("liteq", "liteqd", "liteqctl")
SHELLS = ("bash", "zsh")

# Flags whose value is a path: completed with file names.
_FILE_FLAGS = {"--app", "--db", "--socket"}
# The values of flags whose parser checks them itself (liteqd reads each flag and its
# LITEQ_* variable alike) rather than with argparse choices.
_KNOWN_VALUES = {"--log-format": ["json", "console", "auto"],
                 "--log-level": ["debug", "info", "warning", "error"],
                 "--status": ["done", "failed", "cancelled"]}


@dataclass
class Node:
    """One command level: its flags (flag -> None: takes no value; "@file": a path;
    a list: its choices; "": any value), its subcommands, its positional choices."""
    flags: dict[str, Any] = field(default_factory=dict[str, Any])
    hidden: set[str] = field(default_factory=set[str])
    subs: dict[str, Node] = field(default_factory=dict[str, "Node"])
    positional: list[str] = field(default_factory=list[str])


def node_of(parser: argparse.ArgumentParser) -> Node:
    """The completion data of an argparse parser, its subparsers included."""
    node = Node()
    for action in parser._actions:  # argparse keeps no public list of its actions
        choices: Any = action.choices
        if not action.option_strings and isinstance(choices, dict):
            # The subparsers: their choices map each command to its parser.
            commands = cast(dict[str, argparse.ArgumentParser], choices)
            for name, sub in commands.items():
                node.subs[name] = node_of(sub)
        elif action.option_strings:
            if action.nargs == 0:
                value: Any = None
            elif action.choices:
                value = [str(c) for c in action.choices]
            elif action.option_strings[-1] in _KNOWN_VALUES:
                value = _KNOWN_VALUES[action.option_strings[-1]]
            elif any(o in _FILE_FLAGS for o in action.option_strings):
                value = "@file"
            else:
                value = ""
            for option in action.option_strings:
                node.flags[option] = value
                if action.help == argparse.SUPPRESS:
                    node.hidden.add(option)
        elif action.choices:
            node.positional.extend(str(c) for c in action.choices)
    return node


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def captured_parser(main: Callable[[list[str]], Any]) -> argparse.ArgumentParser:
    """The parser a `main(argv)` builds, caught at its parse_args() (for the commands
    that build theirs inline); main goes no further."""
    original = argparse.ArgumentParser.parse_args

    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = catch  # type: ignore[method-assign]
    try:
        main([])
    except _Captured as got:
        return got.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise RuntimeError(f"{main!r} parsed no arguments")


def trees() -> dict[str, Node]:
    """The completion data of the three programs."""
    # The CLIs' own modules, imported only to generate the script.
    from liteq import bench, dbcli, grants
    from liteq.web import cli as monitor_cli

    from .config import build_parser as daemon_parser
    from .ctl_parser import build_parser as ctl_parser
    from .scheduler_cmd import build_parser as scheduler_parser

    daemon = node_of(daemon_parser())
    liteq = Node(flags={"--help": None, "-h": None, "--version": None})
    liteq.subs = {
        "worker": daemon,
        "scheduler": node_of(scheduler_parser()),
        "monitor": node_of(monitor_cli.build_parser()),
        "bench": node_of(captured_parser(bench.main)),  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
        "grants": node_of(captured_parser(grants.main)),  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
        "db": node_of(dbcli.build_parser()),
        "completion": Node(flags={"--help": None, "-h": None}, positional=list(SHELLS)),
    }
    return {"liteq": liteq, "liteqd": daemon, "liteqctl": node_of(ctl_parser())}


def _q(text: str) -> str:
    """`text` in single quotes for the shell."""
    return "'" + text.replace("'", "'\\''") + "'"


def _spec(value: Any) -> str:
    """A flag's value in the script: its choices joined by |, or @file, or empty."""
    if isinstance(value, list):
        return "|".join(str(v) for v in cast(list[Any], value))  # type: ignore[redundant-cast]
    return str(value)


def _cases(path: str, node: Node, out: list[str]) -> None:
    shown = [f for f in node.flags if f not in node.hidden]
    values = " ".join(f"{f}:{_spec(v)}" for f, v in node.flags.items() if v is not None)
    out.append(f"        {_q(path)})")
    out.append(f"            _lq_subs={_q(' '.join(node.subs))}")
    out.append(f"            _lq_flags={_q(' '.join(shown))}")
    out.append(f"            _lq_values={_q(values)}")
    out.append(f"            _lq_pos={_q(' '.join(node.positional))} ;;")
    for name, sub in node.subs.items():
        _cases(f"{path} {name}", sub, out)


_BODY = r'''
# What a command level offers: its subcommands, flags, flags with values
# (FLAG:SPEC, SPEC a|b|c choices, @file a path, empty any text), positional choices.
_liteq_data() {
    _lq_subs=""; _lq_flags=""; _lq_values=""; _lq_pos=""
    case "$1" in
@CASES@
    esac
}

# The value SPEC of flag $2 at level $1 in _lq_spec; false when it takes no value.
_liteq_value_of() {
    local item
    _liteq_data "$1"
    for item in $_lq_values; do
        if [ "${item%%:*}" = "$2" ]; then
            _lq_spec="${item#*:}"
            return 0
        fi
    done
    return 1
}

_liteq_complete() {
    # zsh (through bashcompinit): 0-based arrays and split words, as in bash.
    [ -n "${ZSH_VERSION:-}" ] && setopt localoptions ksharrays shwordsplit
    local cur prev lq_path word i skip=""
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev=""
    [ "$COMP_CWORD" -gt 0 ] && prev="${COMP_WORDS[COMP_CWORD-1]}"
    lq_path="${COMP_WORDS[0]##*/}"
    COMPREPLY=()
    # Walk the words before the cursor: flags that take a value skip it, and a
    # subcommand of the current level descends into it.
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        if [ -n "$skip" ]; then
            skip=""
            continue
        fi
        case "$word" in
            -*=*) ;;
            -*) _liteq_value_of "$lq_path" "$word" && skip=1 ;;
            *)
                _liteq_data "$lq_path"
                case " $_lq_subs " in
                    *" $word "*) lq_path="$lq_path $word" ;;
                esac ;;
        esac
    done
    case "$prev" in
        -*)
            if _liteq_value_of "$lq_path" "$prev"; then
                case "$_lq_spec" in
                    @file) COMPREPLY=($(compgen -f -- "$cur")) ;;
                    "") ;;
                    *) COMPREPLY=($(compgen -W "${_lq_spec//|/ }" -- "$cur")) ;;
                esac
                return 0
            fi ;;
    esac
    _liteq_data "$lq_path"
    case "$cur" in
        -*) COMPREPLY=($(compgen -W "$_lq_flags" -- "$cur")) ;;
        *) COMPREPLY=($(compgen -W "$_lq_subs $_lq_pos" -- "$cur")) ;;
    esac
    return 0
}

complete -o default -F _liteq_complete liteq liteqd liteqctl
'''


def bash_script() -> str:
    """The bash completion script for liteq, liteqd and liteqctl."""
    cases: list[str] = []
    for program, node in trees().items():
        _cases(program, node, cases)
    head = ("# bash completion for liteq, liteqd and liteqctl (generated by "
            "`liteqctl completion bash`)")
    return head + "\n" + _BODY.replace("@CASES@", "\n".join(cases)).lstrip("\n")


def zsh_script() -> str:
    """The zsh completion script: the bash one, loaded through zsh's bashcompinit."""
    return ("#compdef liteq liteqd liteqctl\n"
            "# zsh completion for liteq, liteqd and liteqctl (generated by "
            "`liteqctl completion zsh`)\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + bash_script())


def script(shell: str) -> str:
    """The completion script for `shell` (bash or zsh)."""
    if shell == "bash":
        return bash_script()
    if shell == "zsh":
        return zsh_script()
    raise ValueError(f"completion scripts are for {' and '.join(SHELLS)}; got {shell!r}")


def main(argv: list[str] | None = None, prog: str = "liteq completion") -> int:
    """`liteq completion bash|zsh`: print the script."""
    parser = argparse.ArgumentParser(prog=prog, description="Print a shell completion "
                                     "script for liteq, liteqd and liteqctl.")
    parser.add_argument("shell", choices=SHELLS)
    args = parser.parse_args(argv)
    sys.stdout.write(script(args.shell) + "\n")
    return 0
