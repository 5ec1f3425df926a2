"""LiteQ in a Flask app.

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    import liteq
    from liteq.contrib.flask import LiteQ

    db = SQLAlchemy()
    queue = LiteQ()

    @queue.task(queue="emails")          # runs inside an app context in the worker
    def send_receipt(order_id: int) -> None:
        db.session.get(Order, order_id) ...

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["LITEQ_DB"] = "sqlite:////srv/shop/shop.db"   # or postgresql://...
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:////srv/shop/shop.db"
        db.init_app(app)
        queue.init_app(app)
        return app

    @app.post("/orders")
    def create_order():
        with liteq.using(db.session):    # the task commits (or not) with the session
            db.session.add(order)
            db.session.flush()
            send_receipt.delay(order.id)
            db.session.commit()

    $ flask --app shop liteq worker --queues default,emails   # liteqd's own flags

The configuration keys: LITEQ_DB (the queue; else the LITEQ_DB environment
variable, else liteq.db), LITEQ_SOCKET (optional), LITEQ_IMPORTS (modules to import
at init_app, registering their tasks). LiteQ reads its database from the process's
environment: one queue per process, that of the last app initialised.

This module imports Flask; `import liteq` never does.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from ..core import Task, task
from ._daemon import run_liteqd

P = ParamSpec("P")
R = TypeVar("R")


class LiteQ:
    """The Flask extension: `LiteQ(app)`, or `queue = LiteQ()` then `queue.init_app(app)`."""

    def __init__(self, app: Flask | None = None) -> None:
        self.app: Flask | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Export app.config's LITEQ_DB (and LITEQ_SOCKET) to the environment LiteQ reads,
        import the LITEQ_IMPORTS modules, and add the `flask liteq` commands."""
        config = cast("dict[str, Any]", app.config)   # Flask's Config: a plain dict
        target: Any = config.get("LITEQ_DB")
        if target:
            os.environ["LITEQ_DB"] = os.fspath(target)
        sock: Any = config.get("LITEQ_SOCKET")
        if sock:
            os.environ["LITEQ_SOCKET"] = os.fspath(sock)
        self.app = app
        app.extensions["liteq"] = self
        imports: list[str] = list(config.get("LITEQ_IMPORTS") or [])
        for name in imports:
            importlib.import_module(name)
        app.cli.add_command(liteq_group)

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: None = None, /,
             **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """liteq.task, whose function runs inside the app's application context (so
        that db.session, current_app and app.config work in the worker). Use as
        `@queue.task` or `@queue.task(queue=..., ...)`."""
        def decorate(func: Callable[..., Any]) -> Task[..., Any]:
            if inspect.iscoroutinefunction(func):
                @functools.wraps(func)
                async def run_async(*args: Any, **kwargs: Any) -> Any:
                    with self._app().app_context():
                        return await func(*args, **kwargs)
                return cast("Task[..., Any]", task(**options)(run_async))

            @functools.wraps(func)
            def run(*args: Any, **kwargs: Any) -> Any:
                with self._app().app_context():
                    return func(*args, **kwargs)
            return cast("Task[..., Any]", task(**options)(run))
        return decorate if fn is None else decorate(fn)

    def _app(self) -> Flask:
        if self.app is None:
            raise RuntimeError("the LiteQ extension has no app yet: call init_app(app) "
                               "(the worker does when it loads the app)")
        return self.app


def _dispose_engines(app: Flask) -> None:
    """Close Flask-SQLAlchemy's pooled connections before the daemon forks its workers:
    a connection must not be shared by two processes (each worker opens its own)."""
    ext = app.extensions.get("sqlalchemy")
    engines = getattr(ext, "engines", None) if ext is not None else None
    if engines:
        for engine in engines.values():
            engine.dispose()


@click.group("liteq")
def liteq_group() -> None:
    """LiteQ's background tasks."""


@liteq_group.command("worker", context_settings={"ignore_unknown_options": True,
                                                 "help_option_names": []})
@click.argument("flags", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
def worker(flags: tuple[str, ...]) -> None:
    """Run liteqd for this app's tasks; every flag is liteqd's own (--help lists them)."""
    app: Flask = current_app
    _dispose_engines(app)
    code = run_liteqd(flags, app=app.import_name, prog="flask liteq worker", loaded=True)
    raise SystemExit(code)


__all__ = ["LiteQ", "liteq_group"]
