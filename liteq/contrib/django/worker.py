"""The app module liteqd runs for a Django project: `manage.py liteqd` passes
`--app liteq.contrib.django.worker`. Imported by liteqd, it sets Django up
(DJANGO_SETTINGS_MODULE) unless the process already did, which imports every
installed app's tasks module; the daemon's SIGHUP reload re-imports those.
"""

from __future__ import annotations

import importlib
import os
import sys

from typing import Any

import django
from django.apps import apps
from django.db import close_old_connections, connections

from ... import hooks
from ...errors import ConfigError
from . import discovered_modules


def _close_old_connections(*args: Any) -> None:
    """Around each task, as Django does around each request: drop the connections that
    are broken or older than CONN_MAX_AGE (0 by default: after every task), so that a
    long-lived worker never keeps a dead one."""
    close_old_connections()

if "_imported" in globals():
    # importlib.reload() by liteqd's SIGHUP: the task registry was emptied; import the
    # tasks modules again (fresh code, registered anew).
    for _name in discovered_modules():
        if _name in sys.modules:
            importlib.reload(sys.modules[_name])
elif not apps.ready:
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ConfigError("liteq.contrib.django.worker needs DJANGO_SETTINGS_MODULE; run "
                          "the daemon with `python manage.py liteqd`")
    django.setup()
_imported = True

for _register in (hooks.on_task_start, hooks.on_task_success, hooks.on_task_retry,
                  hooks.on_task_failure):
    _register(_close_old_connections)

# The daemon forks its workers from this process: a database connection opened here
# (by a tasks module at import) must not be shared with them; each opens its own.
connections.close_all()
