"""A Django process for tests/web/test_django.py: the example shop's project (settings
from the environment, as examples/django_app/mysite/settings.py reads them),
driven line by line on stdin; each command answers one JSON line on stdout.

    migrate                   -> "ok"
    begin                     -> "ok"      (enters transaction.atomic())
    order EMAIL               -> order id  (Order.objects.create, in the open block)
    using                     -> task id   (send_receipt.delay in liteq.using(connection))
    later                     -> task id or None (delay_on_commit)
    commit | rollback         -> "ok"      (leaves the block)
    discovered                -> {"modules": [...], "tasks": [...]}
    using-autocommit          -> the ConfigError's message
    settings                  -> {"LITEQ_DB": ..., "shares": bool}
"""

import json
import os
import sys

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "examples", "django_app")
sys.path.insert(0, EXAMPLE)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

import django  # noqa: E402

django.setup()

import liteq  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from liteq.contrib.django import delay_on_commit, discovered_modules, shares_database  # noqa: E402
from shop.models import Order  # noqa: E402
from shop.tasks import send_receipt  # noqa: E402


def main():
    block = None
    order_id = None
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "migrate":
            call_command("migrate", verbosity=0)
            out = "ok"
        elif cmd == "begin":
            block = transaction.atomic()
            block.__enter__()
            out = "ok"
        elif cmd == "order":
            order_id = out = Order.objects.create(email=arg, total=1).id
        elif cmd == "using":
            with liteq.using(connection):
                out = send_receipt.delay(order_id)
        elif cmd == "later":
            out = delay_on_commit(send_receipt, order_id)
        elif cmd in ("commit", "rollback"):
            if cmd == "rollback":
                transaction.set_rollback(True)
            block.__exit__(None, None, None)
            block, out = None, "ok"
        elif cmd == "discovered":
            out = {"modules": discovered_modules(), "tasks": sorted(liteq.TASK_REGISTRY)}
        elif cmd == "using-autocommit":
            try:
                with liteq.using(connection):
                    out = "the block ran"
            except liteq.ConfigError as exc:
                out = str(exc)
        elif cmd == "settings":
            out = {"LITEQ_DB": os.environ.get("LITEQ_DB"), "shares": shares_database()}
        else:
            out = f"unknown command {cmd!r}"
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
