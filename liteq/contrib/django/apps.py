"""The Django app: INSTALLED_APPS = [..., "liteq.contrib.django"]."""

from __future__ import annotations

import os
from typing import Any

from django.apps import AppConfig


class LiteQConfig(AppConfig):
    """At start-up: export the project's queue as LITEQ_DB (liteq.contrib.django.conf)
    and import each installed app's tasks module (settings.LITEQ_AUTODISCOVER, True
    by default), so that its @task functions are registered in every process.
    `manage.py migrate` creates (or migrates) LiteQ's tables too."""

    name = "liteq.contrib.django"
    label = "liteq"
    verbose_name = "LiteQ"

    def ready(self) -> None:
        """Configure LiteQ and discover the tasks."""
        from django.conf import settings
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_migrate

        from . import autodiscover
        from .conf import configure, follows_database

        configure()
        post_migrate.connect(_create_queue, dispatch_uid="liteq.create_queue")
        if follows_database():
            connection_created.connect(_follow_database, dispatch_uid="liteq.follow")
        if getattr(settings, "LITEQ_AUTODISCOVER", True):
            autodiscover()


def _create_queue(**kwargs: object) -> None:
    """After migrate: open the queue, which creates or migrates LiteQ's tables. On
    SQLite the first enqueue would otherwise create them, and inside a transaction
    holding the same file's write lock (the queue in the project's file) it would wait
    for that very transaction."""
    from ... import backends
    backends.get_backend()


def _follow_database(sender: object, connection: Any, **kwargs: object) -> None:
    """The queue follows Django's database when it is its own: when Django's test
    runner (or anything else) points the connection at another database, LITEQ_DB
    follows it, so liteq.using(connection) keeps working and tests write their tasks
    in the test database."""
    from django.db.backends.base.base import NO_DB_ALIAS

    from ... import backends
    from ...errors import ConfigError
    from .conf import database_alias, database_target

    if connection.alias == NO_DB_ALIAS:
        # Django connects without a database to create or drop one (the test
        # database): LiteQ's connections must not keep the one being dropped open.
        backends.forget_backends()
        return
    if connection.alias != database_alias():
        return
    try:
        target = database_target(connection.alias)
    except ConfigError:
        return   # an in-memory SQLite test database: the queue stays where it was
    if os.environ.get("LITEQ_DB") != target:
        os.environ["LITEQ_DB"] = target
        backends.forget_backends()   # the previous database's connections
