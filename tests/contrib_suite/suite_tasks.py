"""The project's tasks: shared tasks, found by the worker through ``celery_includes``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

CALLS: dict[str, int] = {}


class PaymentDeclined(Exception):
    pass


@shared_task(name="suite.add")
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="suite.mul")
def mul(x: int, y: int) -> int:
    return x * y


@shared_task(name="suite.total")
def total(numbers: list[int]) -> int:
    return sum(numbers)


@shared_task(name="suite.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@shared_task(bind=True, name="suite.charge", max_retries=3)
def charge(self: Any, order: str, declines: int) -> str:
    """Declined ``declines`` times, retried one second later each time."""
    if self.request.retries < declines:
        raise self.retry(exc=PaymentDeclined(order), countdown=1)
    return f"charged {order} after {self.request.retries} retries"


@shared_task(name="suite.order")
def order(items: list[int]) -> str:
    """Calls another task; returns the id of the total it asked for."""
    return str(total.delay(items).id)


@shared_task(name="suite.audit", ignore_result=True)
def audit(x: int, y: int) -> int:
    """Its result is never stored."""
    return x + y


@shared_task(name="suite.same")
def same(value: Any) -> Any:
    return value
