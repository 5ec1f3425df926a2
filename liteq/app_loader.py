"""Loading the user's app (the module that defines the tasks) from --app."""

import contextlib
import importlib
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Generator

from .errors import ConfigError

# What this thread is importing for LiteQ, if anything: ("app file", "tasks.py").
_importing = threading.local()


class AppStartsLoop(ConfigError):
    """An app called Scheduler.run() or Worker.run() while LiteQ was importing it."""


@contextlib.contextmanager
def _importing_app(kind: str, spec: str) -> Generator[None, None, None]:
    previous = getattr(_importing, "app", None)
    _importing.app = (kind, spec)
    try:
        yield
    finally:
        _importing.app = previous


def refuse_loop_at_import(call: str) -> None:
    """Raise AppStartsLoop when LiteQ is importing an app in this thread.

    Scheduler.run() and Worker.run() call it first: reached at the app's import
    (the snippets of liteq 0.2's README end with such a call), the loop would block the
    import forever and the CLI would never start.
    """
    app = getattr(_importing, "app", None)
    if app is None:
        return
    kind, spec = app
    caller = sys._getframe(2)  # pyright: ignore[reportPrivateUsage]  # the app's line that called run()
    where = f"{os.path.basename(caller.f_code.co_filename)} line {caller.f_lineno}"
    raise AppStartsLoop(
        f"{kind} {spec!r} starts its own loop at import ({call} at {where}); wrap that "
        f"call in `if __name__ == \"__main__\":` so that running the file starts the loop "
        f"and importing it (as liteqd and liteq do) does not")


def _module_name_for(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def load_app(spec: str, reload: bool = False) -> types.ModuleType:
    """Import the app named by `spec` and return the module.

    `spec` is a file path (`tasks.py`, `examples/basic.py`) or a dotted module
    path (`myapp.tasks`). A file's directory is put on sys.path so its own
    imports work, and it is imported under its file name, so the daemon and a
    producer that does `import tasks` register the same task names.
    Raises ConfigError naming the app when it is missing or fails to import.
    """
    if not spec or not isinstance(spec, str):
        raise ConfigError("no app given: pass --app tasks.py or --app myapp.tasks")
    is_file = spec.endswith(".py") or os.sep in spec
    if is_file:
        path = os.path.abspath(spec)
        if os.path.isdir(path):
            raise ConfigError(f"app {spec!r} is a directory ({path}); name the file that "
                              f"defines the tasks (--app {os.path.join(spec, 'tasks.py')}) "
                              f"or a module (--app myapp.tasks)")
        if not os.path.isfile(path):
            raise ConfigError(f"app file {spec!r} does not exist (looked at {path})")
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        name = _module_name_for(path)
        existing = sys.modules.get(name)
        if existing is not None and not reload and \
                os.path.abspath(getattr(existing, "__file__", "") or "") == path:
            return existing
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"app file {spec!r} cannot be imported: not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            with _importing_app("app file", spec):
                module_spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(name, None)
            if isinstance(exc, (KeyboardInterrupt, AppStartsLoop)):
                raise
            raise ConfigError(f"app file {spec!r} failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
        return module
    # A dotted module path, importable from the working directory.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        with _importing_app("app module", spec):
            if reload and spec in sys.modules:
                return importlib.reload(sys.modules[spec])
            return importlib.import_module(spec)
    except AppStartsLoop:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise ConfigError(f"app module {spec!r} was not found (no module named "
                              f"{exc.name!r}); pass a file path or a module on sys.path") from exc
        raise ConfigError(f"app module {spec!r} failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ConfigError(f"app module {spec!r} failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc
