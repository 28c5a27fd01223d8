"""The conformance suite against the real brokers, with a few workloads (CI's bounded run).

`nox -s conformance-<adapter>` runs the long version. Under CI=true an unreachable
broker fails these tests instead of skipping them (the suite's own rule).
"""

from __future__ import annotations

import json
import os

import pytest

from simq_conformance import ProbeCall, RunSettings, Workload

pytest_plugins = ("pytester",)

#: Workloads per adapter: enough to cross every fault kind once in a while, few enough
#: to keep a build fast (a real run takes one to a few seconds).
EXAMPLES = "4"


def _run(pytester: pytest.Pytester, adapters: str) -> tuple[pytest.RunResult, dict]:
    result = pytester.runpytest_subprocess(
        f"--conformance={adapters}",
        f"--conformance-examples={EXAMPLES}",
        "--conformance-report=report",
        "-p",
        "no:cacheprovider",
        "-rfs",
        timeout=900,
    )
    report = pytester.path / "report.json"
    return result, json.loads(report.read_text()) if report.exists() else {}


def _failures(result: pytest.RunResult) -> str:
    return "\n".join(result.outlines[-200:])


@pytest.mark.services
@pytest.mark.parametrize("adapter", ["celery-redis", "celery-rabbitmq"])
def test_real_broker_keeps_every_guarantee_and_agrees_with_simq(
    pytester: pytest.Pytester, adapter: str
) -> None:
    """Real Celery on the broker keeps every applicable guarantee and agrees with simq (§3.2)."""
    result, report = _run(pytester, f"simq,{adapter}")
    assert result.ret == pytest.ExitCode.OK, _failures(result)
    runs = report["adapters"][adapter]
    assert runs["runs"] == int(EXAMPLES)
    # The differential compares the generated runs and the runs aimed at coverage.
    assert runs["differential"]["compared"] >= int(EXAMPLES)
    assert runs["differential"]["disagreements"] == []


@pytest.mark.services
def test_memory_broker_keeps_every_applicable_guarantee(pytester: pytest.Pytester) -> None:
    """Celery's in-memory broker keeps every guarantee its capabilities let the suite judge."""
    result, report = _run(pytester, "celery-memory")
    assert result.ret == pytest.ExitCode.OK, _failures(result)
    statuses = {g["status"] for g in report["adapters"]["celery-memory"]["guarantees"].values()}
    assert statuses <= {"pass", "not-applicable"}


@pytest.mark.skipif(os.environ.get("CI", "").lower() != "true", reason="CI=true only")
def test_ci_fails_an_unreachable_broker(pytester: pytest.Pytester) -> None:
    """Under CI=true a broker that does not answer fails the suite; it is never skipped."""
    result = pytester.runpytest_subprocess(
        "--conformance=celery-redis",
        "--conformance-url=redis://127.0.0.1:1/0",
        "--conformance-examples=1",
        "-k",
        "G1]",
        timeout=300,
    )
    result.assert_outcomes(failed=1, deselected=20)  # G2-G18, L1, L2 and the differential


@pytest.mark.services
@pytest.mark.parametrize(
    ("factory", "final"), [("celery_rabbitmq", "PENDING"), ("celery_redis", "REVOKED")]
)
def test_a_message_expiring_in_the_queue_on_real_brokers(factory: str, final: str) -> None:
    """RabbitMQ drops a message whose TTL ran out in the queue; Redis delivers it (G9)."""
    from simq_conformance.adapters import celery_adapter
    from simq_conformance.differential import outcomes

    # The workload of test_findings.py: c2 expires while it waits behind c1.
    workload = Workload(
        RunSettings(concurrency=1, prefetch_multiplier=1, conf={"task_acks_late": True}),
        calls=(
            ProbeCall("sleep", (1.0,), key="c1"),
            ProbeCall("ret", (2,), {"expires": 0.3}, "c2"),
        ),
    )
    result = getattr(celery_adapter, factory)().run(workload)
    assert result.complete, result.notes
    assert outcomes(result) == {"c1": ("SUCCESS", 1), "c2": (final, 0)}
