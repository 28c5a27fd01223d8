"""Timing that means something: a measured slack, and workloads it cannot excuse.

The slack of a real deployment is measured at setup (``simq_conformance.calibrate``);
with it an ETA ignored by a second, or a soft time limit ignored until the hard one,
fails; with the old blanket 2 s both passed.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, find, given, settings

from simq.checkers import CheckConfig, check_g11, check_g16
from simq_conformance import Capabilities
from simq_conformance.adapters.celery_adapter import celery_rabbitmq, celery_redis
from simq_conformance.calibrate import (
    CEILING,
    FLOOR,
    Calibration,
    CalibrationError,
    Sample,
    calibration_workload,
    measure,
    slack_from,
)
from simq_conformance.coverage import aimed_workload
from simq_conformance.workloads import SOFT_GAP, workloads
from tests.unit.checker_support import Story, exc, only

#: The blanket slack every real deployment had before it was measured.
OLD_BLANKET = 2.0

REAL = Capabilities(
    "real",
    "redis",
    faults=frozenset({"kill_worker", "revoke"}),
    time_limits=True,
    visibility_timeout=8.0,
)


def _calibration_history() -> Story:
    """A calibration run as a real prefork worker on Redis records it (figures from one)."""
    s = Story().online("w1", concurrency=3)
    s.publish("m1", "t1", eta=0.3).deliver("m1").at(0.322).start("m1").at(0.3225).ack("m1")
    s.state("t1", "SUCCESS", 1).succeeded("m1")
    s.at(0.0).publish("m2", "t2").deliver("m2").at(0.001).ack("m2").at(0.0012).start("m2")
    s.at(0.61).event("time-limit", "t2", "m2", "w1", which="soft", limit=0.5)
    s.state("t2", "FAILURE", exc("SoftTimeLimitExceeded")).failed("m2", "SoftTimeLimitExceeded")
    return s


def _eta_ignored(early: float) -> Story:
    """A task with a 2 s countdown that starts ``early`` seconds before its ETA."""
    s = Story().online("w1").publish("m1", "t1", eta=2.0).deliver("m1")
    return s.at(2.0 - early).run_ok("m1")


def _soft_limit_ignored() -> Story:
    """exceed with soft 0.5 s, hard 2.0 s: no soft limit fires; the hard one kills it."""
    s = Story().online("w1").publish("m1", "t1", task="probes.exceed").deliver("m1")
    s.start("m1").ack("m1").at(2.0)
    s.event("time-limit", "t1", "m1", "w1", which="hard", limit=2.0)
    return s.state("t1", "FAILURE", exc("TimeLimitExceeded")).failed("m1", "TimeLimitExceeded")


def _limits(soft: float, hard: float) -> CheckConfig:
    return CheckConfig(soft_time_limit={"*": soft}, time_limit={"*": hard})


# -- the measurement ---------------------------------------------------------------------


def test_measure_reads_eta_limit_and_prefork_deviations_from_a_history() -> None:
    """A start's lateness after its ETA, a limit's against its limit and a prefork ack's
    lead over the start are measured, each by its call."""
    samples = measure(_calibration_history().history, {"t1": "eta-0.3", "t2": "soft"})
    got = sorted((s.what, s.key, round(s.seconds, 4)) for s in samples)
    assert got == [
        ("eta", "eta-0.3", 0.022),
        ("prefork ack", "soft", 0.0002),
        ("soft limit", "soft", 0.1088),
    ]


def test_slack_is_a_multiple_of_the_worst_jitter_with_a_floor() -> None:
    """The slack is FACTOR x the worst deviation, never below FLOOR; a time limit's
    lateness is enforcement latency, not counted, its earliness is."""
    samples = measure(_calibration_history().history)
    assert slack_from(samples) == FLOOR  # 2 x 22 ms is below the floor
    late_limit = Sample("hard limit", "hard", 0.9)  # billiard's 1 s timeout thread
    assert slack_from((*samples, late_limit)) == FLOOR
    assert slack_from((*samples, Sample("eta", "c", 0.2))) == 0.4
    assert slack_from((*samples, Sample("soft limit", "s", -0.3))) == 0.6


def test_a_deployment_too_jittery_to_certify_is_refused() -> None:
    """Slack above CEILING raises CalibrationError saying what was off, by how much, and
    what to do."""
    with pytest.raises(
        CalibrationError,
        match=(
            r"^celery-x: timing too jittery to certify: the eta of 'eta-0\.3' was off by "
            r"\+0\.600 s, so the slack would be 1\.20 s \(2 x\), above the ceiling of 1 s "
            r"that keeps an ignored ETA or soft time limit unmistakable\. Run the suite on "
            r"a less loaded machine, or declare Capabilities\.slack for this deployment$"
        ),
    ):
        slack_from((Sample("eta", "eta-0.3", 0.6),), adapter="celery-x")
    with pytest.raises(CalibrationError, match=r"^celery-x: the calibration run recorded no"):
        slack_from((), adapter="celery-x")


def test_the_calibration_run_is_one_worker_with_etas_and_both_limits() -> None:
    """Countdowns, a soft and a hard limit on one worker; no exceed where no limits."""
    w = calibration_workload(REAL)
    assert w.settings.workers == 1 and not w.faults
    assert {c.options.get("countdown") for c in w.calls} >= {0.3, 1.2}
    assert any("soft_time_limit" in c.options for c in w.calls)
    bare = calibration_workload(attrs.evolve(REAL, time_limits=False))
    assert all(c.probe != "exceed" for c in bare.calls)


# -- what the measured slack catches -----------------------------------------------------


def test_a_start_one_second_before_its_eta_fails_g16_with_the_measured_slack() -> None:
    """An ETA ignored by 1 s fails G16 with the measured slack; the old 2 s excused it."""
    slack = slack_from(measure(_calibration_history().history))
    history = _eta_ignored(1.0).history
    v = only(check_g16(history, CheckConfig(slack=slack)), "G16")
    assert "before its ETA" in v.message
    assert check_g16(history, CheckConfig(slack=OLD_BLANKET)) == []
    # A start within the measured jitter passes.
    assert check_g16(_eta_ignored(0.02).history, CheckConfig(slack=slack)) == []


def test_a_soft_limit_ignored_until_the_hard_one_fails_g11_with_the_measured_slack() -> None:
    """A soft limit 1.5 s before the hard one, ignored, fails G11; 2 s excused it."""
    slack = slack_from(measure(_calibration_history().history))
    history = _soft_limit_ignored().history
    config = attrs.evolve(_limits(0.5, 2.0), slack=slack)
    v = only(check_g11(history, config), "G11")
    assert v.message.endswith("past its soft time limit of 0.5 s, and the limit never fired")
    assert check_g11(history, attrs.evolve(config, slack=OLD_BLANKET)) == []


def test_transport_slack_is_separate_and_defaults_to_the_slack() -> None:
    """Restore windows keep their own tolerance; without one they use ``slack``."""
    assert CheckConfig(slack=0.5).transport_tolerance == 0.5
    assert CheckConfig(slack=0.25, transport_slack=2.0).transport_tolerance == 2.0


# -- workloads at scales the slack cannot excuse -----------------------------------------


def _countdowns(w: Any) -> list[float]:
    return [c.options["countdown"] for c in w.calls if "countdown" in c.options]


def test_generated_workloads_include_countdowns_of_two_seconds_and_more() -> None:
    """Some countdowns are >= 2 s: an ignored ETA starts seconds early."""
    w = find(
        workloads(REAL),
        lambda w: any(c >= 2.0 for c in _countdowns(w)),
        settings=settings(database=None, max_examples=500),
        random=random.Random(0),
    )
    assert max(_countdowns(w)) >= 2.0


def test_generated_workloads_include_soft_limits() -> None:
    """exceed calls with a soft limit are generated (then 1.5 s before the hard one)."""
    w = find(
        workloads(REAL),
        lambda w: any("soft_time_limit" in c.options for c in w.calls),
        settings=settings(database=None, max_examples=500),
        random=random.Random(0),
    )
    call = next(c for c in w.calls if "soft_time_limit" in c.options)
    assert call.options["time_limit"] - call.options["soft_time_limit"] >= SOFT_GAP


@settings(max_examples=200, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(REAL))
def test_every_soft_limit_is_at_least_the_gap_before_its_hard_limit(w: Any) -> None:
    """Every generated soft limit comes >= 1.5 s before its hard limit, and exceed
    sleeps past the hard limit by 2 s."""
    assert SOFT_GAP >= 1.5 > CEILING
    for c in w.calls:
        if "soft_time_limit" in c.options:
            assert c.options["time_limit"] - c.options["soft_time_limit"] >= SOFT_GAP
        if c.probe == "exceed":
            assert c.args[0] >= c.options["time_limit"] + 2.0


def test_aimed_workloads_use_the_same_scales() -> None:
    """The runs aimed at G16 and G11 use a 2 s countdown and a 1.5 s soft/hard gap."""
    rng = random.Random(0)
    built = aimed_workload(["G16"], REAL, rng)
    assert built is not None and max(_countdowns(built[0])) >= 2.0
    built = aimed_workload(["G11"], REAL, rng)
    assert built is not None
    [call] = built[0].calls
    assert call.options["time_limit"] - call.options["soft_time_limit"] >= SOFT_GAP


# -- on the real brokers -----------------------------------------------------------------


@pytest.mark.services
@pytest.mark.parametrize("factory", [celery_redis, celery_rabbitmq], ids=["redis", "rabbitmq"])
def test_setup_measures_a_slack_well_under_a_second_on_real_brokers(factory: Any) -> None:
    """Setup calibrates a real broker: a measured slack below the ceiling (not 2 s),
    the transport's restore tolerance kept, and the source in the capabilities."""
    adapter = factory()
    try:
        adapter.setup()
        caps = adapter.capabilities
        assert FLOOR <= caps.slack < CEILING < OLD_BLANKET
        assert caps.slack_source.startswith("measured: 2 x worst deviation ")
        assert caps.transport_slack == OLD_BLANKET
        adapter.setup()  # a second setup does not measure again
        assert adapter.capabilities.slack_source == caps.slack_source
    finally:
        adapter.teardown()


def test_setup_calibrates_without_the_planted_mutant(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slack measures the deployment, not a planted bug (a mutant ignoring ETAs
    would widen the very slack meant to catch it); the mutant is back for the runs."""
    from simq_conformance import calibrate as calibrate_module
    from simq_conformance.adapters.celery_adapter import celery_by_url

    seen: list[Any] = []

    def fake(adapter: Any) -> Calibration:
        seen.append(adapter.mutant)
        worst = Sample("eta", "eta-0.3", 0.01)
        return Calibration(FLOOR, (worst,), 2.0)

    monkeypatch.setattr(calibrate_module, "calibrate", fake)
    adapter = celery_by_url("filesystem://")
    adapter.mutant = "eta-ignored"
    try:
        adapter.setup()
        assert seen == [None] and adapter.mutant == "eta-ignored"
        assert adapter.capabilities.slack == FLOOR
        assert adapter.capabilities.slack_source == (
            "measured: 2 x worst deviation 0.010 s (eta of eta-0.3), floor 0.25 s, over 1 "
            "samples (eta) in a 2.0 s calibration run"
        )
    finally:
        adapter.teardown()
