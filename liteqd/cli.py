"""`liteqd`: run the supervisor daemon in the foreground (systemd runs it so)."""

import os
import sys

from liteq.backends import identity_of, open_backend
from liteq import hooks
from liteq.app_loader import load_app
from liteq.core import TASK_REGISTRY
from liteq.errors import ConfigError, DatabaseError, DatabaseUnavailable
from liteq.paths import socket_path

from . import config as config_mod


def _app_reloader(spec):
    def reload_app():
        saved, saved_hooks = dict(TASK_REGISTRY), hooks.snapshot()
        TASK_REGISTRY.clear()
        hooks.restore({})  # the fresh import registers its hooks again
        try:
            load_app(spec, reload=True)
        except BaseException:
            TASK_REGISTRY.clear()
            TASK_REGISTRY.update(saved)
            hooks.restore(saved_hooks)
            raise
    return reload_app


def build_supervisor(cfg, *, load=True):
    """Load the app (unless already loaded), check the database, and make the Supervisor."""
    from .control_server import ControlServer
    from .logs import configure
    from .notify import SystemdNotifier
    from .supervisor import Supervisor
    from .wake_listener import WakeListener

    os.environ["LITEQ_DB"] = cfg.db  # tasks that enqueue follow-ups use the same queue
    if cfg.socket:
        os.environ["LITEQ_SOCKET"] = cfg.socket
    configure(cfg.log_format, cfg.log_level)
    if load:
        load_app(cfg.app)
    if not TASK_REGISTRY:
        raise ConfigError(f"app {cfg.app!r} registers no tasks (decorate functions with @task)")
    try:
        open_backend(cfg.db).close()  # fail now, clearly, on a bad database
    except DatabaseUnavailable:
        pass  # a server that is down: the supervisor waits for it, saying so
    sock = cfg.socket or socket_path(identity_of(cfg.db))
    # The control socket is claimed first: it is the one that refuses a second daemon.
    plugins = [ControlServer(sock, group=cfg.socket_group)]
    if not cfg.poll_only:
        plugins.append(WakeListener(sock))
    plugins.append(SystemdNotifier())
    return Supervisor(cfg, reload_app=_app_reloader(cfg.app) if load else None,
                      plugins=plugins)


def run(cfg, *, load=True) -> int:
    """Run the daemon with this configuration; returns the exit code."""
    try:
        sup = build_supervisor(cfg, load=load)
        return sup.run()
    except (ConfigError, DatabaseError, OSError) as exc:
        print(f"liteqd: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def main(argv=None, prog="liteqd") -> int:
    """Entry point of the `liteqd` command."""
    parser = config_mod.build_parser(prog=prog)
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.resolve(args)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
