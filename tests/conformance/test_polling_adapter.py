"""simq-polling: the simulator on kombu's polling transports, as a conformance adapter and
as the reference of the differential check for real Celery on such a transport."""

from __future__ import annotations

import json

import attrs
import pytest

from simq_conformance.adapter import Capabilities
from simq_conformance.adapters.simq_adapter import SimqAdapter
from simq_conformance.registry import resolve
from simq_conformance.session import ConformanceSession, reference_transport

pytest_plugins = ("pytester",)


def test_simq_polling_is_a_builtin_on_the_synchronous_loop() -> None:
    """simq-polling models kombu's virtual transports: the memory model on synloop, and a
    killed worker loses its unacked messages (G4 and L2 deviations, as on filesystem://)."""
    adapter = resolve("simq-polling")
    caps = adapter.capabilities
    assert repr(adapter) == "SimqAdapter(transport='polling')"
    assert (caps.adapter, caps.transport, caps.sync_loop, caps.simulated) == (
        "simq-polling",
        "memory",
        True,
        True,
    )
    assert sorted(d.guarantee for d in caps.deviations) == ["G14", "G4", "L2"]


def test_each_real_transport_gets_its_simulated_reference() -> None:
    """A real adapter on a polling transport is compared with simq-polling; memory:// in
    process (no synloop) and SQS have no reference."""
    caps = Capabilities(adapter="real", transport="memory")
    assert reference_transport(attrs.evolve(caps, sync_loop=True)) == "polling"
    assert reference_transport(caps) is None
    assert reference_transport(attrs.evolve(caps, transport="redis")) == "redis"
    assert reference_transport(attrs.evolve(caps, transport="amqp")) == "amqp"
    assert reference_transport(attrs.evolve(caps, transport="sqs")) is None


class PolledLikeCelery(SimqAdapter):
    """simq-polling dressed as a real adapter on filesystem:// (not simulated)."""

    transport_options = {"polling_interval": 0.1}  # noqa: RUF012 - read by the session

    def __init__(self) -> None:
        super().__init__("polling", polling_interval=0.1)
        self.capabilities = attrs.evolve(self.capabilities, adapter="celery-fs", simulated=False)


def test_the_differential_runs_a_polling_adapter_against_simq_polling() -> None:
    """The session picks simq-polling as the reference of a real polling adapter, runs
    both on the same workloads and finds them in agreement."""
    session = ConformanceSession(
        {"simq-polling": SimqAdapter("polling"), "celery-fs": PolledLikeCelery()},
        examples=4,
        seed=0,
        ci=False,
        defaults=(4, 4),
    )
    assert session.differential_names() == ["celery-fs"]
    campaign = session.campaign("celery-fs")
    assert campaign.reference == "simq-polling"
    assert campaign.error is None
    assert campaign.compared >= 4
    assert campaign.disagreements == []


def test_simq_polling_is_certified_strict(pytester: pytest.Pytester) -> None:
    """The reference model keeps every guarantee it can be judged on and exercises each
    one (strict): aimed faults land while a task runs though a worker polls for it, and
    G14 is a declared deviation (restored messages come back unflagged, so Celery's
    deduplication never applies)."""
    result = pytester.runpytest_subprocess(
        "--conformance=simq-polling", "--conformance-strict", "--conformance-report=report",
        "-p", "no:cacheprovider",
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.OK, "\n".join(result.outlines[-40:])
    report = json.loads((pytester.path / "report.json").read_text())["adapters"]["simq-polling"]
    statuses = {g: v["status"] for g, v in report["guarantees"].items()}
    assert statuses["G7"] == "pass"
    assert statuses["G14"] == "not-applicable"
    assert "never applies" in report["guarantees"]["G14"]["reason"]
