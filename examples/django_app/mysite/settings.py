"""Settings of the example shop: the smallest Django project that uses LiteQ.

SHOP_DATA_DIR is where its SQLite files go (this directory by default).
SHOP_DATABASE_URL=postgresql://user@host/db puts it on PostgreSQL instead.
"""

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import django

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SHOP_DATA_DIR") or BASE_DIR)

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "liteq.contrib.django",       # LITEQ_DB, tasks autodiscovery, manage.py liteqd
    "shop",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _postgres(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    return {"ENGINE": "django.db.backends.postgresql", "NAME": parts.path.lstrip("/"),
            "USER": unquote(parts.username or ""), "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "", "PORT": str(parts.port or ""),
            "OPTIONS": dict(parse_qsl(parts.query))}


# Each request in a transaction: a view's rows and the tasks it enqueues with
# liteq.using(connection) commit together when it returns, and roll back if it raises.
ATOMIC_REQUESTS = True

if os.environ.get("SHOP_DATABASE_URL", "").startswith("postgresql://"):
    # LiteQ's tables go in the same database (LITEQ_DB unset: Django's database).
    DATABASES = {"default": dict(_postgres(os.environ["SHOP_DATABASE_URL"]),
                                 ATOMIC_REQUESTS=ATOMIC_REQUESTS)}
    if os.environ.get("SHOP_TEST_DB_NAME"):   # `manage.py test`'s database
        DATABASES["default"]["TEST"] = {"NAME": os.environ["SHOP_TEST_DB_NAME"]}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                             "NAME": str(DATA_DIR / "shop.sqlite3"),
                             "OPTIONS": {"timeout": 20},
                             "ATOMIC_REQUESTS": ATOMIC_REQUESTS}}
    if django.VERSION >= (5, 1):
        # Take the write lock at BEGIN: no deadlock between two upgrading readers.
        DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    if not os.environ.get("SHOP_LITEQ_OWN_FILE"):
        # The queue in the project's own file, so that an order and its task commit
        # together (liteq.using(connection)). Without this line LiteQ would use a file
        # of its own, liteq.db beside it, and delay_on_commit() the on-commit hook.
        LITEQ_DB = DATABASES["default"]["NAME"]

# The demo refuses a payment on purpose: no "Payment Required" warning for it.
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "loggers": {"django.request": {"level": "ERROR"}}}
