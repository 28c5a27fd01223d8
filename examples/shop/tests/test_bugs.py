"""Three bugs that ``task_always_eager`` hides and simq catches.

Each bug has three tests: the buggy version on simq, with the history that shows the
bug; the same buggy version in eager mode, where the test passes and the bug stays
hidden; and the shop's fixed version on simq. The buggy versions are defined here, on
the shop's app (``shared=False``); the shop's own modules hold the fixed ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import chord
from shop import app, db
from shop.emails.tasks import REVIEW_REMINDER_DELAY, remind_to_review
from shop.inventory.tasks import reserve
from shop.orders.tasks import confirm
from shop.payments.tasks import charge

Sim = Callable[..., Any]


# ------------------------------------------------ 1. acks_late, not idempotent: charged twice
@app.task(shared=False, acks_late=True, name="buggy.charge")
def charge_without_key(order_id: int, amount: float) -> str:
    """The first version of payments.charge: no idempotency key."""
    charge_id = db.charge_card(order_id, amount)
    time.sleep(3)  # store the receipt
    return charge_id


def test_bug1_crash_during_an_acks_late_charge_charges_twice(simulation: Sim) -> None:
    sim = simulation(app)
    result = charge_without_key.delay(1, 9.5)
    sim.crash_worker("worker-1", at=1, restart_after=5)  # while the receipt is stored
    assert result.get() == "ch_2"
    history = sim.history.where(task_id=result.id)
    assert history.kinds() == [
        "published",
        "delivered",
        "started",
        "state",  # attempt 1 charges the card...
        "requeued",  # ...the worker dies; acks_late: the message goes back
        "delivered",
        "started",
        "state",
        "state",
        "succeeded",
        "acked",  # attempt 2
    ]
    assert [e["attempt"] for e in history.where(kind="started")] == ["m1.1", "m1.2"]
    assert [e["redelivered"] for e in history.where(kind="delivered")] == [False, True]
    assert [(c["id"], c["order"]) for c in db.charges] == [("ch_1", 1), ("ch_2", 1)]  # twice!


def test_bug1_is_invisible_in_eager_mode(no_sleep: None) -> None:
    app.conf.task_always_eager = True
    assert charge_without_key.delay(1, 9.5).get() == "ch_1"
    assert len(db.charges) == 1  # passes: eager mode has no worker to crash


def test_bug1_fixed_by_an_idempotency_key(simulation: Sim) -> None:
    sim = simulation(app)
    db.orders[1] = {"status": "reserved", "email": "ann@example.com", "amount": 9.5}
    result = charge.delay(1, 9.5)
    sim.crash_worker("worker-1", at=1, restart_after=5)
    assert result.get() == "ch_1"
    assert len(sim.history.where(kind="started", task_id=result.id)) == 2  # still runs twice
    assert [c["id"] for c in db.charges] == ["ch_1"]  # but charges once


# ------------------------------- 2. a countdown longer than Redis's visibility timeout
def test_bug2_countdown_beyond_the_visibility_timeout_sends_the_reminder_again(
    simulation: Sim,
) -> None:
    app.conf.broker_transport_options = {}  # the bug: kombu's default timeout, one hour
    sim = simulation(app, transport="redis")
    db.orders[1] = {"status": "paid", "email": "ann@example.com", "amount": 9.5}
    remind_to_review.apply_async((1,), countdown=REVIEW_REMINDER_DELAY)  # one day
    sim.run()
    restored = sim.history.where(kind="requeued", reason="visibility-timeout")
    # every hour Redis hands the waiting message out again (kombu #337)
    # (the last one falls at 24 h, the instant the reminder is due)
    hours = [(e.time - sim.started_at) / 3600 for e in restored]
    assert hours == [float(n) for n in range(1, len(hours) + 1)]
    assert len(hours) >= 23
    runs = sim.history.where(kind="started", task="shop.emails.tasks.remind_to_review")
    assert len(runs) == 1 + len(restored)  # the original and each copy
    assert db.outbox == [("ann@example.com", "How was order 1?")] * len(runs)


def test_bug2_is_invisible_in_eager_mode(no_sleep: None) -> None:
    app.conf.task_always_eager = True
    app.conf.broker_transport_options = {}
    db.orders[1] = {"status": "paid", "email": "ann@example.com", "amount": 9.5}
    remind_to_review.apply_async((1,), countdown=REVIEW_REMINDER_DELAY)  # runs now
    assert db.outbox == [("ann@example.com", "How was order 1?")]  # passes


def test_bug2_fixed_by_a_visibility_timeout_above_the_longest_countdown(
    simulation: Sim,
) -> None:
    # shop/celeryconfig.py sets visibility_timeout to two days
    assert app.conf.broker_transport_options["visibility_timeout"] > REVIEW_REMINDER_DELAY
    sim = simulation(app, transport="redis")
    db.orders[1] = {"status": "paid", "email": "ann@example.com", "amount": 9.5}
    remind_to_review.apply_async((1,), countdown=REVIEW_REMINDER_DELAY)
    sim.run()
    assert len(sim.history.where(kind="requeued", reason="visibility-timeout")) == 0
    assert db.outbox == [("ann@example.com", "How was order 1?")]


def test_bug2_fixed_on_rabbitmq_which_has_no_visibility_timeout(simulation: Sim) -> None:
    app.conf.broker_transport_options = {}
    sim = simulation(app, transport="amqp")
    db.orders[1] = {"status": "paid", "email": "ann@example.com", "amount": 9.5}
    remind_to_review.apply_async((1,), countdown=REVIEW_REMINDER_DELAY)
    sim.run()
    assert len(db.outbox) == 1


# ------------------------------------- 3. a chord whose header task is redelivered
@app.task(shared=False, acks_late=True, name="buggy.reserve")
def reserve_without_record(order_id: int, sku: str, quantity: int) -> str:
    """The first version of inventory.reserve: takes the stock on every run."""
    db.stock[sku] -= quantity
    time.sleep(2)  # write the warehouse pick list
    return sku


def _order_chord(header_task: Any) -> Any:
    db.orders[1] = {"status": "placed", "email": "ann@example.com", "amount": 9.5}
    header = [header_task.s(1, "apple", 2), header_task.s(1, "pear", 1)]
    return chord(header)(confirm.s(1))


def test_bug3_a_header_task_redelivered_mid_chord_takes_the_stock_twice(
    simulation: Sim,
) -> None:
    sim = simulation(app, concurrency=1)
    body = _order_chord(reserve_without_record)
    # apple's reservation ends (and is acked) at 2 s; the worker dies during pear's
    sim.crash_worker("worker-1", at=3, restart_after=5)
    sim.run()
    assert body.get() == "confirmed"
    starts = sim.history.where(kind="started", task="buggy.reserve")
    assert [(e.time - sim.started_at, e["attempt"]) for e in starts] == [
        (0.0, "m1.1"),
        (2.0, "m2.1"),
        (8.0, "m2.2"),  # pear's reservation runs twice
    ]
    assert db.stock["apple"] == 8
    assert db.stock["pear"] == 8  # the bug: one unit ordered, two taken from stock
    # The chord body is not the problem: it runs once, with each header result once.
    # Celery counts a header part when it stores its result (Backend.mark_as_done calls
    # on_chord_part_return); the crashed run stored none. Celery 5.7's Redis backend also
    # counts a part once per (task id, header index) and claims the body's dispatch once.
    bodies = sim.history.where(kind="started", task="shop.orders.tasks.confirm")
    assert len(bodies) == 1
    assert db.orders[1]["reserved"] == ["apple", "pear"]


def test_bug3_is_invisible_in_eager_mode(no_sleep: None) -> None:
    app.conf.task_always_eager = True
    assert _order_chord(reserve_without_record).get() == "confirmed"
    assert db.stock["pear"] == 9  # passes


def test_bug3_fixed_by_an_idempotent_header_task(simulation: Sim) -> None:
    sim = simulation(app, concurrency=1)
    body = _order_chord(reserve)
    sim.crash_worker("worker-1", at=3, restart_after=5)
    sim.run()
    assert body.get() == "confirmed"
    assert len(sim.history.where(kind="started", task="shop.inventory.tasks.reserve")) == 3
    assert db.stock == {"apple": 8, "pear": 9, "plum": 10}
    assert db.reservations == {(1, "apple"): 2, (1, "pear"): 1}
