"""LiteQ in a Django project.

    # settings.py
    INSTALLED_APPS = [..., "liteq.contrib.django"]
    LITEQ_DB = "postgresql://app@db/shop"   # optional: see liteq.contrib.django.conf

    # shop/tasks.py: found at start-up (autodiscover), in the web server and the daemon
    from liteq import task

    @task(queue="emails")
    def send_receipt(order_id: int) -> None: ...

    # shop/views.py
    from django.db import connection, transaction
    import liteq
    from liteq.contrib.django import delay_on_commit

    @transaction.atomic
    def checkout(request):
        order = Order.objects.create(...)
        with liteq.using(connection):            # LiteQ on Django's PostgreSQL database
            send_receipt.delay(order.id)         # written in this transaction
        delay_on_commit(send_receipt, order.id)  # any set-up: once the transaction commits

    $ python manage.py liteqd --queues default,emails    # liteqd's own flags

This package imports Django only: `import liteq` never does.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, TypeVar

from ...core import Task

R = TypeVar("R")

# The tasks modules autodiscover() imported, in order.
_discovered: list[str] = []


def tasks_module_name() -> str:
    """The module name searched in each installed app (settings.LITEQ_TASKS_MODULE,
    "tasks" by default)."""
    from django.conf import settings
    return str(getattr(settings, "LITEQ_TASKS_MODULE", "tasks"))


def autodiscover() -> list[str]:
    """Import each installed app's tasks module (a missing one is skipped; an error
    in one is raised); returns the names of those imported."""
    from django.apps import apps
    from django.utils.module_loading import autodiscover_modules

    leaf = tasks_module_name()
    autodiscover_modules(leaf)
    found = [f"{cfg.name}.{leaf}" for cfg in apps.get_app_configs()
             if f"{cfg.name}.{leaf}" in sys.modules]
    _discovered[:] = found
    return list(found)


def discovered_modules() -> list[str]:
    """The tasks modules the last autodiscover() imported."""
    return list(_discovered)


@functools.lru_cache(maxsize=32)
def _same_database(target: str, django_target: str) -> bool:
    from ... import backends
    try:
        return backends.identity_of(target) == backends.identity_of(django_target)
    except Exception:   # an unusable target is not Django's database
        return False


def shares_database(alias: str | None = None) -> bool:
    """True when LiteQ's queue (LITEQ_DB) is in Django's database `alias`, so that
    liteq.using(connections[alias]) can enqueue in its transactions."""
    from ... import settings
    from .conf import database_alias, django_database
    theirs = django_database(alias or database_alias())
    return theirs is not None and _same_database(settings.db_path(), theirs)


def delay_on_commit(task: Task[..., R], *args: Any, _database: str | None = None,
                    **kwargs: Any) -> int | None:
    """Enqueue `task(*args, **kwargs)` so that it exists once the current transaction
    of Django's database `_database` (default: settings.LITEQ_DATABASE, "default")
    commits, and never if it rolls back.

    When LiteQ's queue is in that database and a transaction.atomic() block is open,
    the task is written in the transaction itself (liteq.using) and its id returned.
    Otherwise it is enqueued by transaction.on_commit() and None is returned (outside
    any atomic block Django runs it at once).
    """
    import liteq
    from django.db import connections, transaction

    from .conf import database_alias

    alias = _database or database_alias()
    conn = connections[alias]
    if conn.in_atomic_block and shares_database(alias):
        with liteq.using(conn):
            task_id = task.delay(*args, **kwargs)
        if conn.vendor == "sqlite":
            _wake_on_commit(alias)
        return task_id
    transaction.on_commit(functools.partial(task.delay, *args, **kwargs), using=alias)
    return None


def _wake_on_commit(alias: str) -> None:
    """SQLite: nudge the daemon when Django commits (it would find the task at its
    next poll anyway)."""
    from django.db import transaction

    from ... import backends
    from ...backends.sqlite.wake import wake

    identity = backends.get_backend().identity
    transaction.on_commit(lambda: wake(identity), using=alias)


__all__ = ["autodiscover", "delay_on_commit", "discovered_modules", "shares_database",
           "tasks_module_name"]
