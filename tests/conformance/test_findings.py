"""What the differential check found where simq and real Celery disagreed, pinned down.

Each test runs the workload that exposed a difference on the simulator; the services
tests (test_conformance_services.py) run the same workloads on the real brokers.
"""

from __future__ import annotations

from simq_conformance import ProbeCall, RunSettings, Workload
from simq_conformance.adapters.simq_adapter import SimqAdapter
from simq_conformance.differential import outcomes
from simq_conformance.properties import FAIL, check_run

#: c2 expires after 0.3 s while it waits in the queue behind c1 (the one slot is held
#: by the unacked acks_late c1, so the prefetch window is full).
EXPIRES_IN_QUEUE = Workload(
    RunSettings(workers=1, concurrency=1, prefetch_multiplier=1, conf={"task_acks_late": True}),
    calls=(ProbeCall("sleep", (1.0,), key="c1"), ProbeCall("ret", (2,), {"expires": 0.3}, "c2")),
    seed=1,
)


def test_rabbitmq_drops_a_message_that_expires_in_the_queue() -> None:
    """On amqp the TTL drops c2 in the broker: lost 'expired', never delivered, PENDING (G9)."""
    result = SimqAdapter("amqp").run(EXPIRES_IN_QUEUE)
    c2 = result.history.where(task_id=result.task_ids["c2"])
    assert c2.kinds() == ["published", "lost"]
    assert c2.last()["reason"] == "expired"
    assert outcomes(result) == {"c1": ("SUCCESS", 1), "c2": ("PENDING", 0)}
    assert not [v for v in check_run(result).values() if v.status == FAIL]


def test_redis_delivers_the_expired_message_and_the_worker_revokes_it() -> None:
    """Redis ignores the TTL: c2 is delivered late and revoked as expired, REVOKED (G9)."""
    result = SimqAdapter("redis").run(EXPIRES_IN_QUEUE)
    c2 = result.history.where(task_id=result.task_ids["c2"])
    assert c2.kinds() == ["published", "delivered", "revoked", "state", "acked"]
    assert outcomes(result) == {"c1": ("SUCCESS", 1), "c2": ("REVOKED", 0)}


def test_a_retry_starts_no_earlier_than_the_eta_its_header_says() -> None:
    """The ETA a worker waits for is the header's, to the microsecond (G16)."""
    workload = Workload(calls=(ProbeCall("retry", ("c1", 2, 0.1), key="c1"),), seed=0)
    result = SimqAdapter().run(workload)
    assert check_run(result)["G16"].status == "pass"
    starts = [e.time for e in result.history.where(kind="started")]
    etas = [e["eta"] for e in result.history.where(kind="published") if e["eta"]]
    assert len(starts) == 3 and len(etas) == 2
