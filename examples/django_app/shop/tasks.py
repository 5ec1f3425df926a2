"""The shop's tasks: found by liteq.contrib.django's autodiscovery in the web
server and in `python manage.py liteqd`."""

from liteq import task

from .models import Order


@task(queue="emails", max_retries=3)
def send_receipt(order_id: int) -> str:
    """Send the order's receipt (pretend) and mark it sent; runs in the daemon."""
    order = Order.objects.get(id=order_id)
    order.receipt_sent = True
    order.save(update_fields=["receipt_sent"])
    return f"receipt for order {order.id} sent to {order.email}"
