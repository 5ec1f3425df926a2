"""manage.py's own options among liteqd's flags."""

from __future__ import annotations

from collections.abc import Sequence

# Options ManagementUtility has already applied (they take a value).
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


def liteqd_argv(argv: Sequence[str]) -> list[str]:
    """`argv` without manage.py's --settings and --pythonpath, which Django applied
    before it ran the command and which liteqd does not know."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _DJANGO_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(o + "=" for o in _DJANGO_OPTIONS)):
            out.append(arg)
    return out
