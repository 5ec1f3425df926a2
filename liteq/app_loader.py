"""Loading the user's app (the module that defines the tasks) from --app."""

import importlib
import importlib.util
import os
import sys

from .errors import ConfigError


def _module_name_for(path):
    return os.path.splitext(os.path.basename(path))[0]


def load_app(spec: str, reload: bool = False):
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
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(name, None)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise ConfigError(f"app file {spec!r} failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
        return module
    # A dotted module path, importable from the working directory.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if reload and spec in sys.modules:
            return importlib.reload(sys.modules[spec])
        return importlib.import_module(spec)
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
