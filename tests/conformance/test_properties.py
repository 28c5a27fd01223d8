"""The suite's pieces: the registry, workloads, guarantees as properties, the differential."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simq.checkers import CheckConfig, check_g1, check_g2, check_g9
from simq.history import Event, History
from simq_conformance import (
    FAULTS,
    Capabilities,
    Deviation,
    Fault,
    ProbeCall,
    RunResult,
    RunSettings,
    Workload,
)
from simq_conformance.adapters.simq_adapter import SimqAdapter
from simq_conformance.differential import compare, outcomes
from simq_conformance.properties import (
    FAIL,
    GUARANTEES,
    NOT_APPLICABLE,
    PASS,
    applicability,
    check_run,
    config_for,
)
from simq_conformance.registry import UnknownAdapter, resolve
from simq_conformance.workloads import workloads

T0 = 1_893_456_000.0


def _event(kind: str, at: float, worker: str | None = "w1", **details: object) -> Event:
    return Event(kind, T0 + at, "t1", "m1", worker, dict(details))


def _published(**details: object) -> Event:
    return Event("published", T0, "t1", "m1", None, {"task": "probes.ret", "retries": 0, **details})


# -- registry ------------------------------------------------------------------------


def test_builtin_names_resolve_to_adapters() -> None:
    """``simq`` and ``simq-redis`` are the simulator on the amqp and redis models."""
    assert resolve("simq").capabilities.transport == "amqp"
    assert resolve("simq-redis").capabilities.adapter == "simq-redis"


def test_module_object_accepts_a_class_an_instance_and_a_factory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``module:object`` may name an adapter class, an instance or a zero-argument factory."""
    from simq_conformance.adapters import simq_adapter

    monkeypatch.setattr(simq_adapter, "INSTANCE", SimqAdapter("redis"), raising=False)
    monkeypatch.setattr(simq_adapter, "factory", lambda: SimqAdapter("sqs"), raising=False)
    module = "simq_conformance.adapters.simq_adapter"
    assert resolve(f"{module}:SimqAdapter").capabilities.transport == "amqp"
    assert resolve(f"{module}:INSTANCE").capabilities.transport == "redis"
    assert resolve(f"{module}:factory").capabilities.transport == "sqs"


def test_an_unimportable_module_is_named_in_the_error() -> None:
    """A ``module:object`` whose module cannot be imported says which and how to fix it."""
    with pytest.raises(
        UnknownAdapter,
        match=r"^conformance adapter 'nope\.mod:X': cannot "
        r"import module 'nope\.mod' \(No module named 'nope'\); check the "
        r"module is importable \(installed or on sys\.path\)$",
    ):
        resolve("nope.mod:X")


# -- workloads -----------------------------------------------------------------------

LIMITED = Capabilities(
    "limited",
    "amqp",
    faults=frozenset({"kill_child"}),
    probes=frozenset({"ret", "sleep", "exceed"}),
)


@settings(max_examples=60, deadline=None)
@given(workloads(LIMITED))
def test_workloads_use_only_the_adapters_faults_and_probes(workload: Workload) -> None:
    """Generated workloads use only declared faults and probes, and no exceed without limits."""
    assert {f.kind for f in workload.faults} <= {"kill_child"}
    assert {c.probe for c in workload.calls} <= {"ret", "sleep"}
    assert all(0 <= f.at <= 2 for f in workload.faults)
    keys = [c.key for c in workload.calls]
    assert all(f.target in keys for f in workload.faults)


@settings(max_examples=60, deadline=None)
@given(workloads(SimqAdapter().capabilities))
def test_no_workload_requeues_a_timed_out_task_forever(workload: Workload) -> None:
    """acks_on_timeout=False (an endless requeue with acks_late) never meets an exceed call."""
    if any(c.probe == "exceed" for c in workload.calls):
        assert workload.settings.conf.get("task_acks_on_timeout", True)


# -- applicability and configuration -------------------------------------------------


def test_not_applicable_reasons_come_from_capabilities() -> None:
    """A guarantee skipped for a missing fault, time limits or a deviation says so."""
    caps = Capabilities("mine", "amqp", deviations=(Deviation("G6", "no timeout here"),))
    assert applicability(GUARANTEES["G4"], caps) == (
        "mine: capability fault 'kill_worker' not supported"
    )
    assert applicability(GUARANTEES["G17"], caps) == (
        "mine: capability fault 'warm_shutdown' or fault 'cold_shutdown' not supported"
    )
    assert applicability(GUARANTEES["G6"], caps) == (
        "mine: documented deviation from G6: no timeout here"
    )
    assert applicability(GUARANTEES["G1"], caps) == (
        "mine: capability observes 'delivered' not available"
    )
    full = SimqAdapter().capabilities
    assert all(applicability(g, full) is None for g in GUARANTEES.values())


def test_config_follows_the_workload_settings_and_capabilities() -> None:
    """The check configuration carries the ack settings, the prefetch window and limits."""
    workload = Workload(
        RunSettings(
            workers=2,
            concurrency=2,
            prefetch_multiplier=2,
            conf={"task_acks_late": True, "task_acks_on_failure_or_timeout": False},
        ),
        calls=(
            ProbeCall("exceed", (1.5,), {"time_limit": 0.5}, "c1"),
            ProbeCall("exceed", (2.0,), {"time_limit": 1.0}, "c2"),
        ),
    )
    caps = Capabilities("real", "redis", visibility_timeout=8.0, slack=2.0)
    config = config_for(RunResult(History(), True, caps, workload))
    assert (config.transport, config.effective_visibility_timeout, config.slack) == (
        "redis",
        8.0,
        2.0,
    )
    assert config.window("worker-7") == 4
    assert config.late("probes.ret") and not config.setting("acks_on_timeout", "probes.ret")
    assert config.setting("time_limit", "probes.exceed") == 1.0
    assert config.complete


# -- judging runs --------------------------------------------------------------------


def test_the_reference_keeps_every_guarantee_through_faults() -> None:
    """The simulator keeps every guarantee on a run with a crash, a dead child and a revoke."""
    workload = Workload(
        RunSettings(workers=2, conf={"task_acks_late": True}),
        calls=(
            ProbeCall("sleep", (1.0,), key="c1"),
            ProbeCall("retry", ("c2", 2, 0.3), key="c2"),
            ProbeCall("sleep", (1.5,), key="c3"),
            ProbeCall("ret", (1,), key="c4"),
        ),
        faults=(
            Fault("kill_worker", 0.5, 0),
            Fault("kill_child", 0.2, "c3"),
            Fault("revoke", 0.0, "c4"),
        ),
        seed=4,
    )
    verdicts = check_run(SimqAdapter().run(workload))
    assert {v.status for v in verdicts.values()} == {PASS}
    assert verdicts["G4"].exercised and verdicts["G10"].exercised


def test_a_doctored_history_fails_with_its_seed() -> None:
    """A run whose early ack came after the task ended fails G1 with its seed and history."""
    result = SimqAdapter().run(Workload(calls=(ProbeCall("ret", (1,), key="c1"),), seed=9))
    events = list(result.history)
    ack = next(e for e in events if e.kind == "acked")
    rest = [e for e in events if e is not ack]
    late = attrs.evolve(ack, time=rest[-1].time + 0.5)
    doctored = attrs.evolve(result, history=History([*rest, late]))
    verdict = check_run(doctored)["G1"]
    assert (verdict.status, verdict.seed) == (FAIL, 9)
    assert verdict.history is not None and verdict.history.kinds()[-1] == "acked"


def test_not_applicable_verdicts_need_no_run() -> None:
    """A guarantee the adapter cannot be judged on is not-applicable whatever the history."""
    caps = Capabilities("bare", "amqp")
    verdicts = check_run(RunResult(History(), True, caps, Workload()))
    assert {v.status for v in verdicts.values()} == {NOT_APPLICABLE}


def test_the_differential_compares_final_states_of_race_free_workloads() -> None:
    """Two runs that end a call in different states disagree on the outcome."""
    workload = Workload(calls=(ProbeCall("fail", ("boom",), key="c1"),), seed=2)
    ours = SimqAdapter().run(workload)
    assert outcomes(ours) == {"c1": ("FAILURE", 1)}
    theirs = attrs.evolve(
        ours,
        history=History(e for e in ours.history if e.kind != "state"),
        capabilities=attrs.evolve(ours.capabilities, adapter="other"),
    )
    found = compare(theirs, check_run(theirs), ours, check_run(ours))
    assert [d.topic for d in found] == ["outcome"]
    assert found[0].message == (
        "outcome: c1 (fail): other PENDING after 1 run(s), simq FAILURE after 1"
    )


# -- checker tolerances for histories recorded across processes -----------------------

_PREFORK_ACK = History(
    [
        _published(),
        _event("delivered", 0.01, redelivered=False),
        _event("acked", 0.02),
        _event("started", 0.021, task="probes.ret", retries=0),
        _event("state", 0.03, state="SUCCESS", result=1),
        _event("succeeded", 0.03),
    ]
)


@pytest.mark.parametrize(("slack", "expected"), [(0.0, 1), (2.0, 0)])
def test_a_prefork_ack_just_before_the_start_is_tolerated_within_slack(
    slack: float, expected: int
) -> None:
    """An early ack recorded a moment before the child's start passes only with slack (G1)."""
    assert len(check_g1(_PREFORK_ACK, CheckConfig(slack=slack, complete=True))) == expected


def test_a_redelivery_after_a_crash_needs_no_requeued_event() -> None:
    """A real broker's silent return of a crashed worker's message is a return (G2)."""
    history = History(
        [
            _published(),
            _event("delivered", 0.0, redelivered=False),
            _event("started", 0.0, task="probes.ret", retries=0),
            Event("worker-crashed", T0 + 0.1, None, None, "w1", {}),
            _event("delivered", 1.0, worker="w2", redelivered=True),
            _event("started", 1.0, worker="w2", task="probes.ret", retries=0),
            _event("state", 1.1, worker="w2", state="SUCCESS", result=1),
            _event("succeeded", 1.1, worker="w2"),
            _event("acked", 1.1, worker="w2"),
        ]
    )
    config = CheckConfig(acks_late={"*": True}, complete=True)
    assert check_g2(history, config) == []


def test_memory_redeliveries_carry_no_redelivered_flag() -> None:
    """kombu's memory transport requeues without the redelivered flag; amqp sets it (G2)."""
    history = History(
        [
            _published(),
            _event("delivered", 0.0, redelivered=False),
            _event("started", 0.0, task="probes.ret", retries=0),
            _event("declined", 0.0, requeue=True),
            _event("rejected", 0.0, requeue=True),
            _event("delivered", 0.1, redelivered=False),
            _event("started", 0.1, task="probes.ret", retries=0),
            _event("state", 0.1, state="SUCCESS", result=1),
            _event("succeeded", 0.1),
            _event("acked", 0.1),
        ]
    )
    late = {"acks_late": {"*": True}, "complete": True}
    assert check_g2(history, CheckConfig(transport="memory", **late)) == []
    assert len(check_g2(history, CheckConfig(transport="amqp", **late))) == 1


def test_an_expiry_write_recorded_before_its_revoked_event_counts() -> None:
    """REVOKED stored just before the worker's revoked event satisfies G9."""
    history = History(
        [
            _published(expires="2030-01-01T00:00:00.100000+00:00"),
            _event("delivered", 0.5, redelivered=False),
            _event("state", 0.51, state="REVOKED", result={"exc_type": "TaskRevokedError"}),
            _event("acked", 0.51),
            _event("revoked", 0.52, reason="expired", expired=True),
        ]
    )
    assert check_g9(history, CheckConfig(slack=2.0, complete=True)) == []


@given(st.sampled_from(sorted(FAULTS)))
def test_every_fault_kind_is_supported_by_the_reference(kind: str) -> None:
    """The simulator declares every fault kind an adapter may support."""
    assert kind in SimqAdapter().capabilities.faults
