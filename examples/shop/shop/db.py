"""The shop's storage and payment gateway, in memory: what the tasks change in the world.

A real shop keeps these in a database and behind a payment provider's API. Tests read
them to see what the tasks did, and call :func:`reset` between tests.
"""

from __future__ import annotations

from typing import Any

#: Units in stock, by SKU.
stock: dict[str, int] = {}
#: Units held for an order, by (order id, SKU): the idempotent reservation record.
reservations: dict[tuple[int, str], int] = {}
#: Orders by id: {"status": ..., "amount": ...}.
orders: dict[int, dict[str, Any]] = {}
#: Every charge the payment gateway made: what the customer's card statement shows.
charges: list[dict[str, Any]] = []
#: How many more charge calls the gateway refuses with GatewayUnavailable.
gateway_outages = [0]
#: E-mails sent, as (recipient, subject).
outbox: list[tuple[str, str]] = []
#: Task runs, as (task name, args): recorded by the custom base task, shop.base.ShopTask.
runs: list[tuple[str, tuple[Any, ...]]] = []
#: Failures recorded by the task_failure signal handler, as (task name, exception text).
audit: list[tuple[str, str]] = []


class GatewayUnavailable(Exception):
    """The payment provider did not answer; retrying later may succeed."""


def charge_card(order_id: int, amount: float, idempotency_key: str | None = None) -> str:
    """Charge the customer; a repeated ``idempotency_key`` returns the first charge.

    Payment providers (Stripe, Adyen, ...) offer idempotency keys for exactly this: a
    request sent twice with one key charges once.
    """
    if gateway_outages[0] > 0:
        gateway_outages[0] -= 1
        raise GatewayUnavailable("payment gateway timed out")
    if idempotency_key is not None:
        for charge in charges:
            if charge["key"] == idempotency_key:
                return str(charge["id"])
    charge_id = f"ch_{len(charges) + 1}"
    charges.append({"id": charge_id, "order": order_id, "amount": amount, "key": idempotency_key})
    return charge_id


def reset() -> None:
    """Empty every table, as a test database is emptied between tests."""
    for table in (stock, reservations, orders, outbox):
        table.clear()
    for log in (charges, runs, audit):
        log.clear()
    gateway_outages[0] = 0
