"""Real Celery workers on real Redis and RabbitMQ, recorded as simq histories.

Each test runs one short workload through a Celery adapter of simq_conformance (real
``celery worker`` prefork processes, real SIGKILLs) and asserts what the history shows.
"""

from __future__ import annotations

import re

import pytest

from simq.history import History
from simq_conformance import Fault, ProbeCall, RunResult, RunSettings, Workload
from simq_conformance.adapters.celery_adapter import CeleryAdapter

pytestmark = pytest.mark.services


def _run(adapter: CeleryAdapter, workload: Workload) -> RunResult:
    result = adapter.run(workload)
    assert result.complete, "\n".join(result.notes)
    return result


def _of(result: RunResult, key: str) -> History:
    return result.history.where(task_id=result.task_ids[key])


def _kinds(history: History, *wanted: str) -> list[str]:
    return [k for k in history.kinds() if k in wanted]


def test_returned_value_is_stored_then_acked(real_adapter: CeleryAdapter) -> None:
    """An acks_late task that returns is stored SUCCESS, then acked (§3.1, §3.2 G2)."""
    result = _run(
        real_adapter,
        Workload(
            RunSettings(conf={"task_acks_late": True}), calls=(ProbeCall("ret", (7,), key="c1"),)
        ),
    )
    events = _of(result, "c1")
    assert _kinds(events, "published", "delivered", "started", "state", "succeeded", "acked") == [
        "published",
        "delivered",
        "started",
        "state",
        "succeeded",
        "acked",
    ]
    (state,) = events.where(kind="state")
    assert (state["state"], state["result"]) == ("SUCCESS", 7)
    assert len({e.message_id for e in events if e.kind != "state"}) == 1
    assert events.where(kind="delivered")[0]["redelivered"] is False
    assert result.history.where(kind="worker-online").first()["concurrency"] == 1


def test_memory_worker_runs_retries_and_rejects_in_process(memory_adapter: CeleryAdapter) -> None:
    """celery-memory sends a retry as a new message and redelivers a requeued Reject (G8, G18)."""
    result = _run(
        memory_adapter,
        Workload(
            RunSettings(conf={"task_acks_late": True}),
            calls=(
                ProbeCall("fail_n", ("c1", 1, "v"), key="c1"),
                ProbeCall("reject", ("c2", 1, True), key="c2"),
            ),
        ),
    )
    retried = _of(result, "c1")
    assert [e["retries"] for e in retried.where(kind="published")] == [0, 1]
    assert retried.where(kind="state").last()["state"] == "SUCCESS"
    rejected = _of(result, "c2")
    assert _kinds(rejected, "declined", "rejected", "delivered", "succeeded") == [
        "delivered",
        "declined",
        "rejected",
        "delivered",
        "succeeded",
    ]
    # kombu's memory transport requeues without setting delivery_info["redelivered"]
    # (celery-memory's documented G2 deviation).
    assert [d["redelivered"] for d in rejected.where(kind="delivered")] == [False, False]


def test_memory_adapter_refuses_the_die_probe(memory_adapter: CeleryAdapter) -> None:
    """celery-memory refuses a workload whose probe would end the test process."""
    with pytest.raises(
        ValueError,
        match=(
            r"^celery-memory: capability probe 'die' not supported \(celery-memory runs its "
            r"worker inside the test process \(memory:// cannot cross processes\): os\._exit "
            r"would end the test run\); check capabilities\.probes before running$"
        ),
    ):
        memory_adapter.run(Workload(calls=(ProbeCall("die", ("c1", 1), key="c1"),)))


@pytest.mark.parametrize(
    ("adapter_name", "reject_on_worker_lost"), [("redis", False), ("rabbitmq", True)]
)
def test_lost_child_fails_or_requeues(
    adapter_name: str, reject_on_worker_lost: bool, request: pytest.FixtureRequest
) -> None:
    """A lost child means FAILURE and an ack, or a rerun with reject_on_worker_lost (§3.2 G3)."""
    adapter: CeleryAdapter = request.getfixturevalue(f"{adapter_name}_adapter")
    result = _run(
        adapter,
        Workload(
            RunSettings(
                concurrency=2,
                conf={"task_acks_late": True, "task_reject_on_worker_lost": reject_on_worker_lost},
            ),
            calls=(ProbeCall("sleep", (1.0,), key="c1"), ProbeCall("die", ("c2", 1), key="c2")),
            faults=(Fault("kill_child", 0.3, "c1"),),
        ),
    )
    killed, died = _of(result, "c1"), _of(result, "c2")
    assert killed.where(kind="child-killed").first()["exitcode"] == -9
    assert [e["exitcode"] for e in killed.where(kind="child-lost")] == [-9]
    assert [e["exitcode"] for e in died.where(kind="child-lost")] == [1]
    for events in (killed, died):
        if reject_on_worker_lost:
            assert events.where(kind="rejected").first()["requeue"] is True
            assert len(events.where(kind="started")) == 2
            assert events.where(kind="delivered").last()["redelivered"] is True
            assert [e["state"] for e in events.where(kind="state")] == ["SUCCESS"]
        else:
            assert len(events.where(kind="started")) == 1
            (state,) = events.where(kind="state")
            assert state["state"] == "FAILURE"
            assert state["result"]["exc_type"] == "WorkerLostError"
            assert _kinds(events, "child-lost", "state", "acked") == [
                "child-lost",
                "state",
                "acked",
            ]
    if not reject_on_worker_lost:
        (message,) = died.where(kind="state").first()["result"]["exc_message"]
        assert re.match(r"^Worker exited prematurely: exitcode 1 Job: \d+\.$", message)


@pytest.mark.parametrize("adapter_name", ["redis", "rabbitmq"])
def test_killed_worker_redelivers_acks_late_task(
    adapter_name: str, request: pytest.FixtureRequest
) -> None:
    """A SIGKILLed worker's unacked acks_late message is redelivered and rerun (§3.2 G2, G4)."""
    adapter: CeleryAdapter = request.getfixturevalue(f"{adapter_name}_adapter")
    # Redis returns unacked messages after the visibility timeout only: keep it short.
    conf = {"task_acks_late": True, "broker_transport_options": {"visibility_timeout": 2}}
    result = _run(
        adapter,
        Workload(
            RunSettings(conf=conf),
            calls=(ProbeCall("sleep", (0.8,), key="c1"),),
            faults=(Fault("kill_worker", 0.3, 0),),
        ),
    )
    events = _of(result, "c1")
    crash = result.history.where(kind="worker-crashed").first()
    deliveries = events.where(kind="delivered")
    assert [d["redelivered"] for d in deliveries] == [False, True]
    assert deliveries[0].time < crash.time < deliveries[1].time
    assert len(events.where(kind="started")) == 2
    assert len({d.message_id for d in deliveries}) == 1
    assert _kinds(events, "state", "acked") == ["state", "acked"]
    assert events.where(kind="state").first()["state"] == "SUCCESS"


def test_cut_connection_redelivers_on_rabbitmq(rabbitmq_adapter: CeleryAdapter) -> None:
    """A cut RabbitMQ connection redelivers the unacked message; its old ack fails (§3.2 G7)."""
    result = _run(
        rabbitmq_adapter,
        Workload(
            RunSettings(conf={"task_acks_late": True}),
            calls=(ProbeCall("sleep", (0.8,), key="c1"),),
            faults=(Fault("cut_connection", 0.3, 0),),
        ),
    )
    events = _of(result, "c1")
    lost = result.history.where(kind="connection-lost").first()
    restored = result.history.where(kind="connection-restored").first()
    assert lost.time < restored.time
    assert [d["redelivered"] for d in events.where(kind="delivered")] == [False, True]
    assert _kinds(events, "acked", "ack-failed") == ["ack-failed", "acked"]
    assert [e.kind for e in events.where(kind=["state", "state-discarded"])] == [
        "state",
        "state-discarded",
    ]


def test_cut_redis_connection_goes_unnoticed_with_a_full_window(
    redis_adapter: CeleryAdapter,
) -> None:
    """With a full prefetch window a killed Redis connection goes unnoticed (§3.2 G7 deviation)."""
    # concurrency 1 x multiplier 2 with acks_late: c1 runs, c2 is reserved, so the
    # consumer is not blocked in BRPOP when the connection dies.
    result = _run(
        redis_adapter,
        Workload(
            RunSettings(prefetch_multiplier=2, conf={"task_acks_late": True}),
            calls=(ProbeCall("sleep", (0.8,), key="c1"), ProbeCall("ret", (1,), key="c2")),
            faults=(Fault("cut_connection", 0.3, 0),),
        ),
    )
    assert redis_adapter.capabilities.deviation("G7") is not None
    reserved = _of(result, "c2")
    lost = result.history.where(kind="connection-lost").first()
    (delivery,) = reserved.where(kind="delivered")
    assert delivery.time < lost.time
    assert _kinds(reserved, "started", "succeeded", "acked") == ["started", "succeeded", "acked"]
    assert not result.history.where(kind="connection-restored")


def test_a_second_shutdown_waits_for_the_replacement_to_come_online(
    redis_adapter: CeleryAdapter,
) -> None:
    """A shutdown aimed at a slot whose replacement is still starting waits until it is
    online: the run ends in seconds, with both shutdowns injected (it used to hang until
    the 30 s timeout, waiting for a worker the early signal had killed)."""
    import time

    started = time.monotonic()
    result = _run(
        redis_adapter,
        Workload(
            RunSettings(),
            calls=(ProbeCall("sleep", (0.3,), key="c1"), ProbeCall("ret", (2,), key="c2")),
            # The first shutdown's replacement starts at about 1.1 s and takes a second or
            # more to come online: the second shutdown comes before it is.
            faults=(Fault("warm_shutdown", 0.1, 0), Fault("warm_shutdown", 1.4, 0)),
        ),
    )
    assert time.monotonic() - started < 20
    shutdowns = result.history.where(kind="shutdown")
    assert len(shutdowns) == 2
    assert len({e.worker for e in shutdowns}) == 2  # the replacement, once online
    online = result.history.where(kind="worker-online", worker=shutdowns[1].worker).first()
    assert online.time < shutdowns[1].time
