"""A user's conftest for celery.contrib.pytest (Celery 5 loads it through pytest_plugins).

Nothing here knows about simq: the same suite runs on a real worker with Redis and, with
``--simq-worker``, on simq's simulated worker.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

pytest_plugins = ("celery.contrib.pytest",)

REDIS = os.environ.get("CONTRIB_SUITE_REDIS", "redis://127.0.0.1:6379/15")
#: The queue of the function-scoped workers (the session worker's gets "-session").
QUEUE = os.environ.get("CONTRIB_SUITE_QUEUE", "contrib-suite")


@pytest.fixture(scope="session")
def celery_config() -> dict[str, Any]:
    return {
        "broker_url": REDIS,
        "result_backend": REDIS,
        "task_default_queue": QUEUE,
        "result_expires": 300,
        "broker_connection_retry_on_startup": False,
    }


@pytest.fixture(scope="session")
def celery_includes() -> list[str]:
    return ["suite_tasks"]
