"""The app module liteqd runs for a Django project: `manage.py liteqd` passes
`--app liteq.contrib.django.worker`. Imported by liteqd, it sets Django up
(DJANGO_SETTINGS_MODULE) unless the process already did, which imports every
installed app's tasks module; the daemon's SIGHUP reload re-imports those.
"""

from __future__ import annotations

import importlib
import os
import sys

import django
from django.apps import apps
from django.db import connections

from ...errors import ConfigError
from . import discovered_modules

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

# The daemon forks its workers from this process: a database connection opened here
# (by a tasks module at import) must not be shared with them; each opens its own.
connections.close_all()
