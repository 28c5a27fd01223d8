"""Fixtures for the shop's tests: an empty database and the app's settings as they were."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import shop.emails.tasks
from shop import app, db


@pytest.fixture(autouse=True)
def clean_world() -> Iterator[None]:
    """Each test starts with stock, no orders, no charges, and the shop's own settings."""
    db.reset()
    db.stock.update({"apple": 10, "pear": 10, "plum": 10})
    shop.emails.tasks.smtp_busy[0] = 0
    saved = {
        key: app.conf[key]
        for key in ("task_always_eager", "broker_transport_options", "result_backend")
    }
    yield
    app.conf.update(saved)


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager mode runs tasks on the real clock: skip their sleeps, as eager suites do."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
