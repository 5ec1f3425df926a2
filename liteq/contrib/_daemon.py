"""Run liteqd inside a framework's own command (manage.py liteqd, flask liteq worker)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def has_flag(argv: Sequence[str], flag: str) -> bool:
    """True when `flag` is in argv (as `--flag VALUE` or `--flag=VALUE`)."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def run_liteqd(argv: Sequence[str], *, app: str, prog: str, loaded: bool) -> int:
    """Run liteqd with `argv` (its own flags) in this process; returns its exit code.

    `app` is the --app given when argv has none. `loaded`: the framework already
    imported the app and its tasks in this process, so liteqd does not import
    `app` (it names it in its logs) and SIGHUP restarts the workers without a
    re-import; otherwise liteqd imports `app` as `liteqd --app` does.
    """
    import sys

    from ..compat import daemon_cli, daemon_config

    cli: Any = daemon_cli()
    config_mod: Any = daemon_config()

    from ..errors import ConfigError

    flags = list(argv)
    if has_flag(flags, "--app"):
        loaded = False   # the user's own app module: liteqd imports it
    else:
        flags = ["--app", app, *flags]
    if not loaded:
        return int(cli.main(flags, prog=prog))
    cli.catch_stop_signals()
    try:
        args = config_mod.build_parser(prog=prog).parse_args(flags)
        cfg = config_mod.resolve(args)
    except cli.StopDuringStartup:
        return 0
    except ConfigError as exc:   # one clear line, as liteqd prints it
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return int(cli.run(cfg, load=False))
