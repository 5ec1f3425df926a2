"""`liteqd`: run the supervisor daemon in the foreground (systemd runs it so)."""

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from liteq.backends import identity_of, open_backend
from liteq import hooks
from liteq.app_loader import load_app
from liteq.core import TASK_REGISTRY
from liteq.errors import ConfigError, DatabaseError, DatabaseRefused, DatabaseUnavailable
from liteq.paths import socket_path

from . import config as config_mod

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from .supervisor import Supervisor


class StopDuringStartup(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived while liteqd was starting (importing the app, opening
    the database): a stop request, handled like Ctrl-C, before anything runs. A
    KeyboardInterrupt, so the app loader lets it through as it lets Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_during_startup(signum: int, frame: FrameType | None) -> NoReturn:
    # A second signal must not interrupt the clean exit this one starts.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise StopDuringStartup(signum)


def catch_stop_signals() -> None:
    """Until the supervisor installs its own handlers, a stop signal ends the start-up
    cleanly (exit 0, a log line) instead of killing the process with no word."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_during_startup)


def _log_stopped_during_startup(cfg: config_mod.DaemonConfig | None, signum: int) -> None:
    from .logs import configure, flush, get_logger
    if cfg is not None:
        configure(cfg.log_format, cfg.log_level)
    get_logger().info("daemon.stopped", tasks_done=0, tasks_failed=0, exit_code=0,
                      reason=f"{signal.Signals(signum).name} during start-up")
    flush()


def warn_unserved_queues(cfg: config_mod.DaemonConfig, log: "FilteringBoundLogger") -> None:
    """One warning naming the app's tasks whose queue no pool serves: they would wait
    for ever with no hint (the quick start's `reports` task under plain `--app`)."""
    served = set(cfg.queues)
    unserved: dict[str, list[str]] = {}
    for name, task in sorted(TASK_REGISTRY.items()):
        if task.queue not in served:
            unserved.setdefault(task.queue, []).append(name)
    if unserved:
        log.warning("app.unserved_queues", queues=sorted(unserved), tasks=unserved,
                    served=cfg.queues,
                    hint="serve them with --queues " + ",".join(cfg.queues + sorted(unserved))
                         + " or a --pool; until then their tasks stay pending")


def _app_reloader(spec: str) -> Callable[[], None]:
    def reload_app() -> None:
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


def build_supervisor(cfg: config_mod.DaemonConfig, *, load: bool = True) -> "Supervisor":
    """Load the app (unless already loaded), check the database, and make the Supervisor."""
    from .control_server import ControlServer
    from .logs import configure, get_logger
    from .notify import SystemdNotifier
    from .supervisor import Supervisor
    from .wake_listener import WakeListener

    os.environ["LITEQ_DB"] = cfg.db  # tasks that enqueue follow-ups use the same queue
    if cfg.socket:
        os.environ["LITEQ_SOCKET"] = cfg.socket
    if cfg.no_ddl:
        # The supervisor, the app's own calls and the children all open the database.
        os.environ["LITEQ_NO_DDL"] = "1"
    configure(cfg.log_format, cfg.log_level)
    if load:
        load_app(cfg.app)
    if not TASK_REGISTRY:
        raise ConfigError(f"app {cfg.app!r} registers no tasks (decorate functions with @task)")
    warn_unserved_queues(cfg, get_logger())
    try:
        open_backend(cfg.db).close()  # fail now, clearly, on a bad database
    except DatabaseRefused:
        raise  # a wrong database, role or password: waiting would not help
    except DatabaseUnavailable:
        pass  # a server that is down: the supervisor waits for it, saying so
    sock = cfg.socket or socket_path(identity_of(cfg.db))
    # The control socket is claimed first: it is the one that refuses a second daemon.
    plugins: list[Any] = [ControlServer(sock, group=cfg.socket_group)]
    if not cfg.poll_only:
        plugins.append(WakeListener(sock))
    plugins.append(SystemdNotifier())
    return Supervisor(cfg, reload_app=_app_reloader(cfg.app) if load else None,
                      plugins=plugins)


def run(cfg: config_mod.DaemonConfig, *, load: bool = True) -> int:
    """Run the daemon with this configuration; returns the exit code."""
    try:
        sup = build_supervisor(cfg, load=load)
        return sup.run()
    except StopDuringStartup as stop:
        _log_stopped_during_startup(cfg, stop.signum)
        return 0
    except (ConfigError, DatabaseError, OSError) as exc:
        if "liteqd.logs" in sys.modules:
            sys.modules["liteqd.logs"].flush()  # what was logged before the error
        print(f"liteqd: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def main(argv: list[str] | None = None, prog: str = "liteqd") -> int:
    """Entry point of the `liteqd` command."""
    catch_stop_signals()
    try:
        parser = config_mod.build_parser(prog=prog)
        args = parser.parse_args(argv)
        try:
            cfg = config_mod.resolve(args)
        except ConfigError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
    except StopDuringStartup as stop:
        _log_stopped_during_startup(None, stop.signum)
        return 0
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
