"""The Celery baseline: a failing workload runs again on real Celery deployments, and a
failure they all show is Celery's behaviour, not the transport's (issue 11, item 4)."""

from __future__ import annotations

import pytest

from simq_conformance import Fault, ProbeCall, RunSettings, Workload
from simq_conformance.adapters.celery_adapter import celery_memory
from simq_conformance.adapters.simq_adapter import SimqAdapter
from simq_conformance.baseline import Baseline, judge

pytest_plugins = ("pytester",)

#: A task with a 2 s countdown: a worker that ignores ETAs starts it at once (G16).
EARLY = Workload(RunSettings(), calls=(ProbeCall("ret", (1,), {"countdown": 2.0}, "c1"),))


def _ignoring_etas() -> SimqAdapter:
    adapter = SimqAdapter()
    adapter.mutant = "eta-ignored"
    return adapter


def test_a_failure_every_baseline_shows_is_celerys_behaviour() -> None:
    found = judge({"G16": EARLY}, {"a": _ignoring_etas(), "b": _ignoring_etas()})
    assert found["G16"].verdicts == {"a": "fail", "b": "fail"}
    assert found["G16"].celery_behaviour
    assert found["G16"].describe() == (
        "Celery's behaviour: the same workload fails G16 on a, b too (a: fail, b: fail)"
    )


def test_a_failure_a_baseline_does_not_show_is_the_transports() -> None:
    found = judge({"G16": EARLY}, {"celery": SimqAdapter(), "bugged": _ignoring_etas()})
    assert found["G16"].verdicts == {"celery": "pass", "bugged": "fail"}
    assert not found["G16"].celery_behaviour
    assert (
        found["G16"]
        .describe()
        .startswith(
            "the transport's: the baselines do not fail G16 on it (celery: pass, bugged: fail)"
        )
    )


def test_a_baseline_that_cannot_run_the_workload_does_not_count() -> None:
    killed = Workload(
        RunSettings(),
        calls=(ProbeCall("sleep", (1.0,), key="c1"),),
        faults=(Fault("kill_worker", 0.5, 0),),
    )
    found = judge({"G4": killed}, {"memory": celery_memory()})
    assert found["G4"].verdicts == {"memory": "not-applicable"}
    assert "capability fault 'kill_worker' not supported" in found["G4"].reasons["memory"]
    assert not found["G4"].celery_behaviour
    assert found["G4"].describe().startswith("no baseline could judge the workload")


def test_each_failing_workload_runs_once_per_baseline() -> None:
    runs: list[Workload] = []

    class Counting(SimqAdapter):
        def run(self, workload: Workload):  # type: ignore[no-untyped-def]
            runs.append(workload)
            return super().run(workload)

    adapter = Counting()
    adapter.mutant = "eta-ignored"
    found = judge({"G16": EARLY, "G1": EARLY}, {"x": adapter})
    assert len(runs) == 1
    assert found["G16"].verdicts == {"x": "fail"} and found["G1"].verdicts == {"x": "pass"}


def test_baseline_values_are_plain_data() -> None:
    b = Baseline(
        "G5", {"celery-redis": "fail", "celery-rabbitmq": "error"}, {"celery-rabbitmq": "down"}
    )
    assert b.judged == ["celery-redis"] and b.celery_behaviour
    assert "celery-rabbitmq: error (down)" in b.describe()


@pytest.mark.services
def test_the_plugin_runs_a_real_failure_again_on_the_baseline(pytester: pytest.Pytester) -> None:
    """Real Celery on Redis with ETAs ignored fails G16; the baseline (the simulator
    without the bug) does not, so the failure stays the transport's."""
    result = pytester.runpytest_subprocess(
        "--conformance=celery-redis",
        "--conformance-mutant=eta-ignored",
        "--conformance-baseline=simq",
        "--conformance-examples=2",
        "--no-conformance-strict",
        "-p",
        "no:cacheprovider",
        timeout=900,
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*baseline: the transport's: the baselines do not fail G16 on it (simq: pass)*"]
    )
