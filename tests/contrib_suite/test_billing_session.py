"""Session fixtures: one app and one worker for every test of this module."""

from __future__ import annotations

from typing import Any

import pytest
from celery import group
from suite_tasks import add, mul


@pytest.fixture(scope="session")
def celery_config() -> dict[str, Any]:
    # The session worker keeps running during the other modules' tests: its own queue.
    from conftest import QUEUE, REDIS

    return {
        "broker_url": REDIS,
        "result_backend": REDIS,
        "task_default_queue": f"{QUEUE}-session",
        "broker_connection_retry_on_startup": False,
    }


def test_session_worker_runs_shared_tasks(
    celery_session_app: Any, celery_session_worker: Any
) -> None:
    assert add.delay(20, 22).get(timeout=10) == 42
    assert celery_session_worker.app is celery_session_app


def test_session_worker_is_shared_between_tests(
    celery_session_app: Any, celery_session_worker: Any
) -> None:
    results = group(mul.s(i, 3) for i in range(4)).delay()
    assert results.get(timeout=10) == [0, 3, 6, 9]
    assert celery_session_app.conf.task_default_queue.endswith("-session")
