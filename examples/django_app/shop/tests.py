"""`python manage.py test shop`: on PostgreSQL, LiteQ's queue follows Django to its test
database, so a view's task is written in the test's transaction (and rolled back
with it)."""

from unittest import skipUnless

from django.db import connection
from django.test import TestCase

import liteq


@skipUnless(connection.vendor == "postgresql", "the queue follows Django's PostgreSQL "
            "database; on SQLite, tests set LITEQ_DB themselves")
class OrderTests(TestCase):
    """A request through Django's test client."""

    def test_the_order_and_its_task_are_in_the_test_transaction(self) -> None:
        """The view's task is in the test database, pending, seen by the test's own
        transaction."""
        reply = self.client.post("/orders", {"email": "ann@example.com", "total": "3"})
        self.assertEqual(reply.status_code, 200)
        task_id = reply.json()["task_id"]
        self.assertIn(connection.settings_dict["NAME"], liteq.backends.identity_of())
        with liteq.using(connection):   # this transaction sees its own uncommitted task
            status = liteq.get_task_status(task_id)
        assert status is not None
        self.assertEqual(status["status"], "pending")
