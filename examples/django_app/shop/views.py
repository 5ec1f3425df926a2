"""Save an order and enqueue its receipt in the same transaction."""

from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import liteq
from liteq.contrib.django import delay_on_commit

from .models import Order
from .tasks import send_receipt


def _rejected(request: HttpRequest) -> bool:
    # A failure after the enqueue (payment refused, say): the whole transaction is
    # rolled back, the order and its task alike.
    return request.POST.get("reject") == "1"


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """POST email, total: the order row and its send_receipt task commit together, in
    the request's transaction (ATOMIC_REQUESTS; LiteQ's queue is in the project's
    database: liteq.using(connection))."""
    order = Order.objects.create(email=request.POST["email"], total=int(request.POST["total"]))
    with liteq.using(connection):
        task_id = send_receipt.delay(order.id)
    if _rejected(request):
        transaction.set_rollback(True)
        return JsonResponse({"error": "payment refused", "task_id": task_id}, status=402)
    return JsonResponse({"order": order.id, "task_id": task_id})


@csrf_exempt
@require_POST
@transaction.atomic
def create_order_later(request: HttpRequest) -> JsonResponse:
    """The same with delay_on_commit() in a transaction.atomic() block (here nested in
    the request's), which works wherever the queue is: in the transaction when it
    shares the database (the task id is returned), else on Django's on-commit hook
    (None)."""
    order = Order.objects.create(email=request.POST["email"], total=int(request.POST["total"]))
    task_id = delay_on_commit(send_receipt, order.id)
    if _rejected(request):
        transaction.set_rollback(True)
        return JsonResponse({"error": "payment refused", "task_id": task_id}, status=402)
    return JsonResponse({"order": order.id, "task_id": task_id})


def order_status(request: HttpRequest, order_id: int) -> JsonResponse:
    """GET: the order, whether its receipt was sent (404 for no such order)."""
    order = Order.objects.filter(id=order_id).first()
    if order is None:
        return JsonResponse({"error": "no such order"}, status=404)
    return JsonResponse({"order": order.id, "receipt_sent": order.receipt_sent})
