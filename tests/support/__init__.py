"""Helpers shared by the test suites: processes, databases and hosts for tests.

Fixtures defined here (`daemons`, `app`, `lab`, `fault_app`, `hosts`, `pg_template`,
`throwaway_pg`) are loaded for every test through `pytest_plugins` in tests/conftest.py.
"""

import os

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
APPS = os.path.join(TESTS, "apps")
