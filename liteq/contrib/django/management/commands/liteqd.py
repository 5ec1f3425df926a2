"""`python manage.py liteqd [liteqd's flags]`: the daemon for this Django project."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ..._daemon_glue import liteqd_argv
from ...._daemon import run_liteqd

APP = "liteq.contrib.django.worker"


class Command(BaseCommand):
    """Run liteqd beside manage.py: the project's settings, its installed apps' tasks
    and its queue database (LITEQ_DB, see liteq.contrib.django.conf)."""

    help = ("Run the LiteQ daemon for this project. Every flag is liteqd's own "
            "(python manage.py liteqd --help lists them); --app defaults to this project.")

    def run_from_argv(self, argv: list[str]) -> None:
        """Pass every flag after `liteqd` to liteqd (not to Django's parser)."""
        code = run_liteqd(liteqd_argv(argv[2:]), app=APP, prog=f"{argv[0]} liteqd",
                          loaded=False)
        sys.exit(code)

    def add_arguments(self, parser: CommandParser) -> None:
        """call_command("liteqd", "--queues", "default"): the flags as arguments."""
        parser.add_argument("flags", nargs=argparse.REMAINDER, help="liteqd's flags")

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the daemon until it stops; CommandError on a non-zero exit."""
        flags = [*args, *(options.get("flags") or [])]
        code = run_liteqd(liteqd_argv(flags), app=APP, prog="liteqd", loaded=False)
        if code:
            raise CommandError(f"liteqd exited with status {code}")
