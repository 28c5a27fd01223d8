"""Charging the customer."""

from __future__ import annotations

import time

from shop import db
from shop.celery import app


@app.task(
    bind=True,
    acks_late=True,
    autoretry_for=(db.GatewayUnavailable,),
    retry_backoff=10,  # 10 s, 20 s, 40 s, ... between attempts
    retry_backoff_max=300,
    retry_jitter=False,
    max_retries=5,
)
def charge(self, order_id: int, amount: float) -> str:
    """Charge the order's amount, with the order as the idempotency key.

    ``acks_late``: a charge interrupted by a worker crash runs again; the gateway's
    idempotency key makes the second run return the first charge instead of a new one.
    """
    charge_id = db.charge_card(order_id, amount, idempotency_key=f"order-{order_id}")
    time.sleep(3)  # store the receipt
    db.orders[order_id]["status"] = "paid"
    return charge_id
