"""The Django app: INSTALLED_APPS = [..., "liteq.contrib.django"]."""

from __future__ import annotations

from django.apps import AppConfig


class LiteQConfig(AppConfig):
    """At start-up: export the project's queue as LITEQ_DB (liteq.contrib.django.conf)
    and import each installed app's tasks module (settings.LITEQ_AUTODISCOVER, True
    by default), so that its @task functions are registered in every process."""

    name = "liteq.contrib.django"
    label = "liteq"
    verbose_name = "LiteQ"

    def ready(self) -> None:
        """Configure LiteQ and discover the tasks."""
        from django.conf import settings

        from . import autodiscover
        from .conf import configure

        configure()
        if getattr(settings, "LITEQ_AUTODISCOVER", True):
            autodiscover()
