"""Real services for the integration tests: Redis and RabbitMQ on this machine.

A test asks for an adapter fixture; the fixture checks its broker answers. Under
``CI=true`` a broker that does not answer fails the test (CI machines run both
services, so a missing one is a broken machine, not a reason to skip); elsewhere the
test is skipped and the reason names the service.
"""

from __future__ import annotations

import os

import pytest

from simq_conformance.adapters._brokers import BrokerUnreachable
from simq_conformance.adapters.celery_adapter import (
    CeleryAdapter,
    celery_memory,
    celery_rabbitmq,
    celery_redis,
)


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _ready(adapter: CeleryAdapter) -> CeleryAdapter:
    try:
        adapter.setup()
    except BrokerUnreachable as exc:
        message = f"{adapter.name}: {exc}"
        if _on_ci():
            pytest.fail(f"CI=true and a required service is unreachable: {message}", pytrace=False)
        pytest.skip(f"service unreachable (set CI=true to make this a failure): {message}")
    return adapter


@pytest.fixture(scope="session")
def redis_adapter() -> CeleryAdapter:
    """celery-redis on the machine's Redis (a database of this xdist worker's own)."""
    return _ready(celery_redis())


@pytest.fixture(scope="session")
def rabbitmq_adapter() -> CeleryAdapter:
    """celery-rabbitmq on the machine's RabbitMQ (a vhost of this xdist worker's own)."""
    return _ready(celery_rabbitmq())


@pytest.fixture(scope="session")
def memory_adapter() -> CeleryAdapter:
    """celery-memory: a real Celery worker inside the test process."""
    return _ready(celery_memory())


@pytest.fixture(params=["redis", "rabbitmq"])
def real_adapter(request: pytest.FixtureRequest) -> CeleryAdapter:
    """Each real-broker adapter in turn."""
    adapter: CeleryAdapter = request.getfixturevalue(f"{request.param}_adapter")
    return adapter
