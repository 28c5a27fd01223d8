"""Placing an order: reserve every item (a chord), then charge and confirm."""

from __future__ import annotations

from celery import chord

from shop import db
from shop.celery import app
from shop.emails.tasks import REVIEW_REMINDER_DELAY, remind_to_review, send_email
from shop.inventory.tasks import reserve
from shop.payments.tasks import charge


@app.task
def place_order(order_id: int, email: str, items: dict[str, int], amount: float) -> str:
    """Record the order and start its workflow: reservations, then :func:`confirm`."""
    db.orders[order_id] = {"status": "placed", "email": email, "amount": amount}
    header = [reserve.s(order_id, sku, quantity) for sku, quantity in sorted(items.items())]
    result = chord(header)(confirm.s(order_id))
    remind_to_review.apply_async((order_id,), countdown=REVIEW_REMINDER_DELAY)
    return str(result.id)


@app.task
def confirm(reserved: list[str], order_id: int) -> str:
    """The chord body: every item is held, so charge the card and tell the customer."""
    order = db.orders[order_id]
    order["status"] = "reserved"
    order["reserved"] = sorted(reserved)
    charge.delay(order_id, order["amount"])
    send_email.delay(order["email"], f"Order {order_id} confirmed")
    return "confirmed"
