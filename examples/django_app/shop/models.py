"""An order, and whether its receipt was sent."""

from django.db import models


class Order(models.Model):
    """One order of the shop."""

    email = models.CharField(max_length=200)
    total = models.IntegerField()
    receipt_sent = models.BooleanField(default=False)
