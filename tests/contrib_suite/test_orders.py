"""delay/get, retries, errors, ETA, configuration and the ``celery`` marker."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from conftest import QUEUE
from suite_tasks import PaymentDeclined, add, charge, fail


def test_task_defined_in_the_test(celery_app: Any, celery_worker: Any) -> None:
    @celery_app.task(name="suite.greet", shared=False)
    def greet(name: str) -> str:
        return f"hello {name}"

    celery_worker.reload()
    assert greet.delay("ada").get(timeout=10) == "hello ada"


def test_shared_task_on_the_current_app(depends_on_current_app: Any, celery_worker: Any) -> None:
    result = add.delay(1, 2)
    assert result.get(timeout=10) == 3
    assert result.state == "SUCCESS"


def test_retry_with_countdown_then_success(depends_on_current_app: Any, celery_worker: Any) -> None:
    result = charge.delay("o-1", 2)
    assert result.get(timeout=30) == "charged o-1 after 2 retries"


def test_retries_exhausted_raise_the_last_error(
    depends_on_current_app: Any, celery_worker: Any
) -> None:
    result = charge.delay("o-2", 10)
    with pytest.raises(PaymentDeclined):
        result.get(timeout=30)
    assert result.state == "FAILURE"


def test_task_error_is_stored(depends_on_current_app: Any, celery_worker: Any) -> None:
    result = fail.delay("out of stock")
    with pytest.raises(ValueError, match="out of stock"):
        result.get(timeout=10)
    assert result.failed()
    assert "out of stock" in result.traceback


def test_countdown_runs_later(depends_on_current_app: Any, celery_worker: Any) -> None:
    sent = dt.datetime.now(dt.timezone.utc)
    result = add.apply_async((1, 1), countdown=2)
    assert result.state == "PENDING"
    assert result.get(timeout=10) == 2
    done = result.date_done
    if done.tzinfo is None:
        done = done.replace(tzinfo=dt.timezone.utc)
    assert done >= sent + dt.timedelta(seconds=2)


def test_celery_config_reaches_the_worker(celery_app: Any, celery_worker: Any) -> None:
    @celery_app.task(name="suite.where", bind=True, shared=False)
    def where(self: Any) -> str:
        return str(self.request.delivery_info["routing_key"])

    celery_worker.reload()
    assert where.delay().get(timeout=10) == QUEUE


@pytest.mark.celery(result_extended=True, task_default_rate_limit="100/s")
def test_marker_overrides_the_config(celery_app: Any, celery_worker: Any) -> None:
    assert celery_app.conf.result_extended is True
    result = celery_app.tasks["suite.add"].delay(5, 5)
    assert result.get(timeout=10) == 10
    assert result.name == "suite.add"
    assert result.args == [5, 5]
