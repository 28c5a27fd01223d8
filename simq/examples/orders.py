"""An order workflow, the app ``simq demo`` runs.

* ``place_order`` starts the workflow: it charges the payment and links a notification.
* ``charge_payment`` talks to a flaky payment gateway: a declined charge is retried with
  an exponential countdown (``self.retry(countdown=...)``), up to ``max_retries``.
* ``notify_customer`` is rate limited (``rate_limit="30/m"``): starts are spaced 2 s
  apart on each worker.
* ``hold_stock`` holds stock for a flash sale; its hold ``expires`` after 60 s, so a hold
  scheduled later than that is revoked as expired instead of running.
"""

from __future__ import annotations

import time
from typing import Any

import celery

app = celery.Celery("orders")
# The tasks are this app's alone (shared=False): importing the example, as `simq demo`
# does, must not add them to every other app of the process, as Celery's default would.

#: Charges the gateway declines, by order id: the demo's deterministic "flakiness".
DECLINES = {order: order % 4 for order in range(1000)}
#: What the tasks did, in order: (virtual time, what, order id). Reset per run.
LEDGER: list[tuple[float, str, int]] = []


class GatewayDeclined(Exception):
    """The payment gateway declined the charge; worth retrying later."""


@app.task(name="orders.charge_payment", bind=True, max_retries=3, acks_late=True, shared=False)
def charge_payment(self: Any, order_id: int, amount: float) -> dict[str, Any]:
    """Charge ``amount`` for ``order_id``; retry declines with 10, 20, 40 s countdowns.

    Not idempotent: the gateway charges, then the receipt is written. A worker lost
    between the two redelivers the message (``acks_late``) and the order is charged again.
    """
    time.sleep(0.2)  # the gateway call takes a fifth of a (virtual) second
    if self.request.retries < DECLINES[order_id]:
        LEDGER.append((time.time(), "declined", order_id))
        raise self.retry(
            exc=GatewayDeclined(f"order {order_id}"), countdown=10 * 2**self.request.retries
        )
    LEDGER.append((time.time(), "charged", order_id))
    time.sleep(0.3)  # writing the receipt
    return {"order_id": order_id, "charged": amount}


@app.task(name="orders.notify_customer", rate_limit="30/m", shared=False)
def notify_customer(receipt: dict[str, Any]) -> str:
    """Tell the customer the order is paid (rate limited by the mail provider)."""
    LEDGER.append((time.time(), "notified", receipt["order_id"]))
    return f"order {receipt['order_id']} paid"


@app.task(name="orders.hold_stock", shared=False)
def hold_stock(order_id: int) -> str:
    """Hold stock for a flash-sale order."""
    LEDGER.append((time.time(), "held", order_id))
    return f"stock held for {order_id}"


@app.task(name="orders.place_order", shared=False)
def place_order(order_id: int, amount: float) -> str:
    """Start the workflow for one order."""
    charge_payment.apply_async((order_id, amount), link=notify_customer.s())
    # Flash-sale holds must start within 60 s; some are scheduled too late and expire.
    hold_stock.apply_async((order_id,), countdown=45 * (order_id % 3), expires=60)
    return f"order {order_id} placed"
