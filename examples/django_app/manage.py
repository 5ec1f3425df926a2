#!/usr/bin/env python
"""Django's command-line utility for the example shop (python manage.py liteqd ...)."""

import os
import sys


def main() -> None:
    """Run a manage.py command."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
