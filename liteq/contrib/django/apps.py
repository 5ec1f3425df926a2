"""The Django app: INSTALLED_APPS = [..., "liteq.contrib.django"]."""

from __future__ import annotations

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

        from . import autodiscover
        from .conf import configure

        from django.db.models.signals import post_migrate

        configure()
        post_migrate.connect(_create_queue, dispatch_uid="liteq.create_queue")
        if getattr(settings, "LITEQ_AUTODISCOVER", True):
            autodiscover()


def _create_queue(**kwargs: object) -> None:
    """After migrate: open the queue, which creates or migrates LiteQ's tables. On
    SQLite the first enqueue would otherwise create them, and inside a transaction
    holding the same file's write lock (the queue in the project's file) it would wait
    for that very transaction."""
    from ... import backends
    backends.get_backend()
