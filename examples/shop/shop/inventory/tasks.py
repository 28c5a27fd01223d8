"""Stock reservations: the header tasks of the order chord."""

from __future__ import annotations

import time

from shop import db
from shop.celery import app


@app.task(acks_late=True)
def reserve(order_id: int, sku: str, quantity: int) -> str:
    """Hold ``quantity`` units of ``sku`` for the order, once, however often it runs.

    ``acks_late``: if the worker dies mid-reservation the message is delivered again,
    so the reservation is keyed by (order, SKU) and a second run changes nothing.
    """
    if (order_id, sku) not in db.reservations:
        db.reservations[(order_id, sku)] = quantity
        db.stock[sku] -= quantity
    time.sleep(2)  # write the warehouse pick list
    return sku
