"""Tests for simq.strategies: Hypothesis strategies for fault plans and workloads."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time

import celery
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import simq
from simq.campaign.plan import KINDS, RESOLUTION, CrashWorker, Fault, FaultPlan
from simq.exceptions import InvalidArgument, InvariantViolated
from simq.strategies import fault_plans, faults, seeds, sizes

app = celery.Celery("hypo", set_as_current=False)
CHARGED: list[int] = []


@app.task(name="hypo.charge", acks_late=True, shared=False)
def charge(order: int) -> None:
    # The planted bug: the side effect comes before the sleep, and the task acks late, so
    # a crash of its worker during the sleep redelivers it and charges twice.
    CHARGED.append(order)
    time.sleep(1)


@simq.scenario(app, workers=2, size=2)
def charges(sim: simq.Simulation, size: int) -> None:
    CHARGED.clear()
    for order in range(size):
        charge.delay(order)
    sim.run()
    simq.invariants.exactly_once(CHARGED, range(size), what="charge")


CRASHES = fault_plans(kinds=("crash",), workers=("worker-1", "worker-2"), window=(0, 3))
QUICK = settings(database=None, derandomize=True, deadline=None)


def fails(plan: FaultPlan) -> bool:
    return charges.run(0, plan).failed


def test_find_shrinks_to_the_minimal_plan() -> None:
    """Hypothesis finds the planted bug and shrinks it to one crash, as early as it fails."""
    plan = find(CRASHES, fails, settings=QUICK)
    assert plan == FaultPlan([CrashWorker(at=0.1, worker="worker-1")])
    # 1-minimal: without the crash, or one grid step earlier, the run passes.
    assert not fails(FaultPlan())
    assert not fails(FaultPlan([CrashWorker(at=0.0, worker="worker-1")]))


def test_given_reports_the_shrunk_plan_as_its_falsifying_example() -> None:
    """Under @given the failure is raised with the minimal plan as falsifying example."""

    tried: list[FaultPlan] = []

    @QUICK
    @given(plan=CRASHES)
    def survives_crashes(plan: FaultPlan) -> None:
        tried.append(plan)
        run = charges.run(0, plan)
        if run.failure is not None:
            raise InvariantViolated(run.failure.invariant, run.failure.message)

    with pytest.raises(InvariantViolated, match=r"exactly_once\(charge\)") as info:
        survives_crashes()
    # Hypothesis reruns the shrunk example last, to raise its failure.
    assert tried[-1] == FaultPlan([CrashWorker(at=0.1, worker="worker-1")])
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert re.search(r"(Falsifying example|Failing test case): survives_crashes\(", notes)
    assert notes.count("CrashWorker(") == 1
    assert re.search(r"at=0\.1\b", notes), notes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=fault_plans(kinds=tuple(KINDS), workers=("w-a", "w-b"), faults=(0, 6), window=(1.5, 4)))
def test_every_drawn_plan_round_trips_through_json(plan: FaultPlan) -> None:
    """Drawn plans are valid FaultPlans within the bounds, and survive JSON unchanged."""
    assert isinstance(plan, FaultPlan)
    assert 0 <= len(plan) <= 6
    assert FaultPlan.from_json(plan.to_json()) == plan
    assert FaultPlan.from_json(plan.to_json()).to_json() == plan.to_json()
    for fault in plan:
        assert 1.5 <= fault.at <= 4
        assert round(fault.at / RESOLUTION, 6).is_integer()
        assert getattr(fault, "worker", "w-a") in ("w-a", "w-b")


@settings(max_examples=50, deadline=None)
@given(plan=st.from_type(FaultPlan), fault=st.from_type(Fault), crash=st.from_type(CrashWorker))
def test_from_type_resolves_plans_and_faults(
    plan: FaultPlan, fault: Fault, crash: CrashWorker
) -> None:
    """Importing simq.strategies registers FaultPlan and each fault kind with Hypothesis."""
    assert isinstance(plan, FaultPlan)
    assert FaultPlan.from_json(plan.to_json()) == plan
    assert type(fault) in KINDS.values()
    assert isinstance(crash, CrashWorker)


@settings(max_examples=50, deadline=None)
@given(fault=faults("revoke", window=(2, 2)), size=sizes(3, 5), seed=seeds(10, 20))
def test_single_faults_sizes_and_seeds(fault: Fault, size: int, seed: int) -> None:
    """faults(kind) draws that kind; sizes() and seeds() stay in their bounds."""
    assert fault.kind == "revoke"
    assert fault.at == 2.0
    assert 3 <= size <= 5
    assert 10 <= seed <= 20


def test_workloads_shrink_to_their_smallest() -> None:
    """sizes() and seeds() shrink towards their lower bound."""
    assert find(sizes(2, 50), lambda n: True, settings=QUICK) == 2
    assert find(seeds(), lambda n: True, settings=QUICK) == 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: fault_plans(kinds=("crsh",)),
            r"unknown fault kind .*'crsh'.*did you mean 'crash'",
        ),
        (lambda: fault_plans(kinds=()), r"kinds must name at least one of crash"),
        (lambda: fault_plans(faults=(3, 1)), r"faults must be a \(fewest, most\) pair"),
        (lambda: fault_plans(window=(0.01, 0.05)), r"window must be a span holding a point"),
        (
            lambda: fault_plans(window=(5, 1)),
            r"window must be a \(low, high\) pair with low <= high",
        ),
        (lambda: fault_plans(workers=()), r"workers must be worker names"),
        (lambda: faults("nope"), r"simq.strategies.faults\(\): unknown fault kind .*'nope'"),
        (lambda: sizes(0), r"sizes\(\): min_size must be an int >= 1"),
    ],
)
def test_bad_arguments_say_what_is_wrong(make: object, message: str) -> None:
    """Bad bounds raise InvalidArgument naming the function and the argument."""
    with pytest.raises(InvalidArgument, match=message):
        make()  # type: ignore[operator]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_importing_simq_does_not_import_hypothesis() -> None:
    """Hypothesis is a test extra: simq, its campaigns and its pytest plugin run without it."""
    result = _python(
        """
        import sys
        import simq, simq.campaign.pytest, simq.pytest_plugin
        assert "hypothesis" not in sys.modules, sorted(m for m in sys.modules if "hypothesis" in m)
        """
    )
    assert result.returncode == 0, result.stderr


def test_strategies_without_hypothesis_say_how_to_install_it() -> None:
    """simq.strategies without Hypothesis raises a simq error naming pip install hypothesis."""
    result = _python(
        """
        import sys
        sys.modules["hypothesis"] = None  # as if not installed
        from simq.exceptions import SimqError
        try:
            import simq.strategies
        except ImportError as exc:
            assert isinstance(exc, SimqError), type(exc).__mro__
            print(exc)
        else:
            raise SystemExit("imported")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "pip install hypothesis" in result.stdout
