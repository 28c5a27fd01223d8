"""The shop's features, on simq: the order workflow, retries, rate limits, signals."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import shop.emails.tasks
from shop import app, db
from shop.emails.tasks import REVIEW_REMINDER_DELAY, send_email
from shop.orders.tasks import place_order
from shop.payments.tasks import charge

Sim = Callable[..., Any]


def test_config_and_autodiscovery() -> None:
    """config_from_object and autodiscover_tasks find the settings and every task module.

    In a fresh process, importing the package loads only the app; the task modules come
    from ``autodiscover_tasks`` when the worker imports its modules (simq's worker too).
    """
    script = (
        "import shop, sys\n"
        "before = sorted(n for n in shop.app.tasks if n.startswith('shop.'))\n"
        "shop.app.loader.import_default_modules()\n"
        "after = sorted(n for n in shop.app.tasks if n.startswith('shop.'))\n"
        "print(before, after, shop.app.conf.task_track_started)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    after = [
        "shop.emails.tasks.remind_to_review",
        "shop.emails.tasks.send_email",
        "shop.inventory.tasks.reserve",
        "shop.orders.tasks.confirm",
        "shop.orders.tasks.place_order",
        "shop.payments.tasks.charge",
    ]
    assert done.stdout.strip() == f"[] {after} True"
    assert app.conf.broker_transport_options["visibility_timeout"] > REVIEW_REMINDER_DELAY


def test_an_order_goes_through(simulation: Sim) -> None:
    """Reservations (a chord) -> confirm -> charge and e-mail; the reminder a day later."""
    sim = simulation(app, transport="redis", concurrency=2)
    place_order.delay(1, "ann@example.com", {"apple": 2, "pear": 1}, 9.5)
    sim.run()
    assert db.orders[1]["status"] == "paid"
    assert db.orders[1]["reserved"] == ["apple", "pear"]
    assert db.stock == {"apple": 8, "pear": 9, "plum": 10}
    assert [(c["order"], c["amount"]) for c in db.charges] == [(1, 9.5)]
    assert db.outbox == [
        ("ann@example.com", "Order 1 confirmed"),
        ("ann@example.com", "How was order 1?"),
    ]
    reminder = sim.history.where(kind="started", task="shop.emails.tasks.remind_to_review")
    assert [e.time - sim.started_at for e in reminder] == [REVIEW_REMINDER_DELAY]
    assert sim.check() == []


def test_charge_retries_with_exponential_backoff(simulation: Sim) -> None:
    """autoretry_for + retry_backoff: the gateway is down twice; retries wait 10 s, 20 s."""
    sim = simulation(app)
    db.orders[7] = {"status": "reserved", "email": "bo@example.com", "amount": 5.0}
    db.gateway_outages[0] = 2
    result = charge.delay(7, 5.0)
    assert result.get() == "ch_1"
    starts = sim.history.where(kind="started", task_id=result.id)
    assert [e.time - sim.started_at for e in starts] == [0.0, 10.0, 30.0]
    assert [e["eta"] is not None for e in sim.history.where(kind="published")] == [
        False,
        True,
        True,
    ]
    assert db.orders[7]["status"] == "paid"


def test_charge_gives_up_and_the_signal_audits_it(simulation: Sim) -> None:
    """After max_retries the task fails; the task_failure handler writes the audit log."""
    simulation(app)
    db.orders[8] = {"status": "reserved", "email": "cy@example.com", "amount": 5.0}
    db.gateway_outages[0] = 100
    result = charge.delay(8, 5.0)
    try:
        result.get()
    except db.GatewayUnavailable:
        pass
    else:
        raise AssertionError("the charge should have failed")
    assert result.state == "FAILURE"
    assert db.audit == [
        ("shop.payments.tasks.charge", "GatewayUnavailable('payment gateway timed out')")
    ]
    # six runs: the first and five retries, counted by the custom base task
    assert [name for name, _ in db.runs].count("shop.payments.tasks.charge") == 6
    assert db.charges == []


def test_email_is_rate_limited_and_retried(simulation: Sim) -> None:
    """rate_limit="6/m" spaces the sends 10 s apart; a busy relay retries after 30 s."""
    sim = simulation(app)
    shop.emails.tasks.smtp_busy[0] = 1
    results = [send_email.delay("di@example.com", f"news {n}") for n in range(3)]
    sim.run()
    assert [r.get() for r in results] == ["news 0", "news 1", "news 2"]
    starts = sim.history.where(kind="started", task="shop.emails.tasks.send_email")
    # news 0 meets the busy relay and retries at 30 s; the bucket spaces the others
    assert [(e.task_id == results[0].id, e.time - sim.started_at) for e in starts] == [
        (True, 0.0),
        (False, 10.0),
        (False, 20.0),
        (True, 30.0),
    ]
    assert [subject for _, subject in db.outbox] == ["news 1", "news 2", "news 0"]
