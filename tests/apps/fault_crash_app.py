"""An app whose every worker dies at start-up (tests/daemon/test_fault_injection.py, crash loop).

The supervisor imports this file; the hook then runs in each child it forks and
kills that child before it can even report ready.
"""

import os

from liteq import task

os.register_at_fork(after_in_child=lambda: os._exit(1))


@task
def never_runs():
    return "a child would have to start first"
