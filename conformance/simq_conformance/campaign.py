"""A campaign: Hypothesis runs generated workloads on one adapter and judges every run.

One campaign per adapter serves all eighteen guarantee tests: each example runs once
and is judged on every guarantee. Then, for a simulated adapter, each broken guarantee
is hunted alone with the same seed and Hypothesis shrinks its failure to a minimal
workload; the campaign keeps, per guarantee, the shortest failing history it saw. With
a ``reference`` adapter (the simulator on the same transport) each workload also runs
there, and the two runs must agree on every guarantee (the differential check).

Coverage is built, not hoped for: each example tells Hypothesis (``target()``) how often
it made each still-short guarantee's premise happen, and after the generated examples
the campaign runs workloads aimed at the applicable guarantees exercised fewer than
:data:`~simq_conformance.coverage.TARGET` times (:func:`~simq_conformance.coverage.
aimed_workload`), within a budget. A guarantee no run exercised ends
:data:`~simq_conformance.properties.NOT_EXERCISED`, never a pass; one whose runs had an
incomplete recording ends :data:`~simq_conformance.properties.ADAPTER_ERROR`. Runs that
did not finish (``RunResult.complete`` False) are listed by seed.
"""

from __future__ import annotations

import random
import time
import traceback
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings, target

from simq_conformance.adapter import Adapter, Capabilities, RunError, RunResult, Workload
from simq_conformance.baseline import Baseline
from simq_conformance.coverage import TARGET, aimed_workload
from simq_conformance.differential import Disagreement, compare
from simq_conformance.properties import (
    ADAPTER_ERROR,
    FAIL,
    GUARANTEES,
    NOT_APPLICABLE,
    NOT_EXERCISED,
    PASS,
    Verdict,
    applicability,
    check_run,
)
from simq_conformance.workloads import workloads

__all__ = [
    "Campaign",
    "Failure",
    "GuaranteeFailed",
    "Summary",
    "default_aim_budget",
    "replay_campaign",
    "run_campaign",
]

#: A guarantee is aimed at no more than this many times (a premise the adapter never
#: produces must not eat the whole budget).
_MAX_AIMS = 2 * TARGET
#: Adapter-error runs kept for the report.
_KEEP_ERRORS = 3


def default_aim_budget(examples: int, simulated: bool) -> int:
    """Aimed runs after ``examples`` generated ones: generous on a simulator (a run takes
    milliseconds), about three times the examples on a real broker (a run takes seconds;
    at the default 5 examples, 15 aimed runs keep a campaign under 2 minutes)."""
    return max(40, examples) if simulated else max(15, 3 * examples)


class GuaranteeFailed(AssertionError):
    """A run broke the guarantee being shrunk (one subclass per guarantee)."""


_FAILED: dict[str, type[GuaranteeFailed]] = {
    name: type(f"{name}Failed", (GuaranteeFailed,), {"__module__": __name__}) for name in GUARANTEES
}


@attrs.frozen
class Failure:
    """The shortest run seen that broke a guarantee."""

    verdict: Verdict
    workload: Workload
    complete: bool

    @property
    def size(self) -> int:
        return len(self.verdict.history) if self.verdict.history is not None else 0


@attrs.define(eq=False)
class Summary:
    """A guarantee's result over a campaign.

    Attributes:
        status: :data:`PASS` (exercised, never broken), :data:`FAIL`,
            :data:`NOT_APPLICABLE`, :data:`NOT_EXERCISED` (never broken, never
            exercised: no verdict) or :data:`ADAPTER_ERROR` (some runs could not be
            judged: their recording was incomplete).
        runs: Runs judged on it (adapter-error runs included).
        exercised: Runs whose premise happened.
        adapter_errors: Runs whose recording was incomplete.
        aimed: Aimed runs built for it.
    """

    guarantee: str
    status: str = PASS
    reason: str = ""
    runs: int = 0
    exercised: int = 0
    failure: Failure | None = None
    adapter_errors: int = 0
    aimed: int = 0


@attrs.define(eq=False)
class Campaign:
    """Everything one adapter's campaign found."""

    adapter: str
    capabilities: Capabilities
    hypothesis_seed: int
    examples: int
    reference: str | None = None
    runs: int = 0
    elapsed: float = 0.0
    error: str | None = None
    summaries: dict[str, Summary] = attrs.field(factory=dict)
    disagreements: list[Disagreement] = attrs.field(factory=list)
    compared: int = 0
    #: Runs aimed at short guarantees, after the ``runs`` generated ones.
    aimed: int = 0
    aim_budget: int = 0
    #: Failed guarantees judged again on the Celery baseline (simq_conformance.baseline).
    baselines: dict[str, Baseline] = attrs.field(factory=dict)
    #: The one workload a replay ran (``--conformance-replay``), else None.
    replayed: Workload | None = None
    #: Workload seeds of the runs that did not finish in time (L1).
    timed_out: list[int] = attrs.field(factory=list)
    #: Runs whose recording was incomplete (the first few), as failures of "recorder".
    adapter_errors: list[Failure] = attrs.field(factory=list)
    adapter_error_runs: int = 0
    #: Runs the deployment could not carry out (``RunError``): (workload seed, why).
    errored: list[tuple[int, str]] = attrs.field(factory=list)

    @property
    def total(self) -> int:
        """Every run judged: generated and aimed."""
        return self.runs + self.aimed

    def record(self, workload: Workload, result: RunResult, verdicts: dict[str, Verdict]) -> None:
        """Count one judged run (the caller counts it as generated or aimed)."""
        if not result.complete:
            self.timed_out.append(workload.seed)
        broken = next((v for v in verdicts.values() if v.adapter_error), None)
        if broken is not None:
            self.adapter_error_runs += 1
            if len(self.adapter_errors) < _KEEP_ERRORS:
                self.adapter_errors.append(Failure(broken, workload, result.complete))
        for name, verdict in verdicts.items():
            summary = self.summaries[name]
            if verdict.status == NOT_APPLICABLE:
                continue
            summary.runs += 1
            if verdict.adapter_error:
                summary.adapter_errors += 1
                continue
            summary.exercised += verdict.exercised
            if verdict.status == FAIL:
                summary.status = FAIL
                self.shrunk(workload, result, verdict)

    def short(self) -> list[str]:
        """Applicable guarantees not failed and exercised fewer than TARGET times, the
        neediest first, that may still be aimed at."""
        names = list(GUARANTEES)
        wanted = [
            s
            for s in self.summaries.values()
            if s.status == PASS and s.exercised < TARGET and s.aimed < _MAX_AIMS
        ]
        wanted.sort(key=lambda s: (s.exercised, names.index(s.guarantee)))
        return [s.guarantee for s in wanted]

    def finish(self) -> None:
        """Final statuses: never exercised is no pass; unjudgeable runs are the adapter's."""
        for s in self.summaries.values():
            if s.status != PASS:
                continue
            if s.adapter_errors:
                s.status = ADAPTER_ERROR
            elif s.exercised == 0:
                s.status = NOT_EXERCISED

    def shrunk(self, workload: Workload, result: RunResult, verdict: Verdict) -> None:
        """A run of the shrinking pass: keep it if it fails with a shorter history."""
        if verdict.failed:
            summary = self.summaries[verdict.guarantee]
            failure = Failure(verdict, workload, result.complete)
            if summary.failure is None or failure.size < summary.failure.size:
                summary.failure = failure

    def disagree(self, found: list[Disagreement]) -> None:
        self.compared += 1
        for d in found:
            same = [x for x in self.disagreements if x.topic == d.topic]
            if not same:
                self.disagreements.append(d)
            elif d.size < same[0].size:
                self.disagreements[self.disagreements.index(same[0])] = d


def run_campaign(
    name: str,
    adapter: Adapter,
    *,
    examples: int,
    hypothesis_seed: int = 0,
    shrink: bool | None = None,
    reference: tuple[str, Adapter] | None = None,
    shrink_only: frozenset[str] | None = None,
    aim: int | None = None,
) -> Campaign:
    """Run ``examples`` generated workloads on ``adapter`` and judge each on every guarantee.

    Args:
        name: The adapter's name in reports.
        adapter: The adapter.
        examples: Hypothesis ``max_examples``.
        hypothesis_seed: Seeds workload generation: the same seed, the same workloads.
        shrink: Shrink failures to a minimal workload (default: only when simulated;
            on a real broker each shrink step is a real run).
        reference: ``(name, adapter)`` of the simulator on the same transport: each
            workload runs there too and the verdicts must agree.
        shrink_only: Shrink only these guarantees' failures (default: all).
        aim: Runs aimed at guarantees exercised fewer than TARGET times, after the
            generated ones (default: :func:`default_aim_budget`; 0: none).
    """
    caps = adapter.capabilities
    campaign = _new_campaign(name, caps, hypothesis_seed, examples, reference)
    campaign.aim_budget = default_aim_budget(examples, caps.simulated) if aim is None else aim
    if shrink is None:
        shrink = caps.simulated
    started = time.monotonic()
    # Every example is judged on every guarantee; nothing is raised, so a failure does
    # not end the exploration of the others.
    _explore(campaign, name, adapter, examples, reference, raise_on=None)
    _aim(campaign, name, adapter, reference)
    if shrink:
        # Then each broken guarantee is hunted alone with the same seed (the same
        # workloads, in the same order) and Hypothesis shrinks its first failure.
        for g_name in [
            g
            for g, s in campaign.summaries.items()
            if s.status == FAIL and (shrink_only is None or g in shrink_only)
        ]:
            _explore(campaign, name, adapter, examples, None, raise_on=g_name)
    campaign.finish()
    campaign.elapsed = time.monotonic() - started
    return campaign


def _new_campaign(
    name: str,
    caps: Capabilities,
    hypothesis_seed: int,
    examples: int,
    reference: tuple[str, Adapter] | None,
) -> Campaign:
    """A campaign with a summary per guarantee: not applicable (with the reason) or open."""
    campaign = Campaign(
        name, caps, hypothesis_seed, examples, reference=reference[0] if reference else None
    )
    for g_name, g in GUARANTEES.items():
        reason = applicability(g, caps)
        campaign.summaries[g_name] = (
            Summary(g_name, NOT_APPLICABLE, reason) if reason else Summary(g_name)
        )
    return campaign


def replay_campaign(
    name: str,
    adapter: Adapter,
    workload: Workload,
    *,
    reference: tuple[str, Adapter] | None = None,
) -> Campaign:
    """Run exactly ``workload`` once on ``adapter`` and judge it on every guarantee
    (``pytest --conformance-replay=FILE``): no generated, aimed or shrinking runs."""
    campaign = _new_campaign(name, adapter.capabilities, 0, 0, reference)
    campaign.replayed = workload
    started = time.monotonic()
    result = _run(campaign, name, adapter, workload)
    if result is not None:
        campaign.runs = 1
        _judge(campaign, workload, result, reference)
    campaign.finish()
    campaign.elapsed = time.monotonic() - started
    return campaign


def _judge(
    campaign: Campaign,
    workload: Workload,
    result: RunResult,
    reference: tuple[str, Adapter] | None,
) -> dict[str, Verdict]:
    """Judge a run, record it, and compare it with the reference's run of its workload."""
    verdicts = check_run(result)
    campaign.record(workload, result, verdicts)
    if reference is not None:
        ref_result = _run(campaign, reference[0], reference[1], workload)
        if ref_result is not None:
            campaign.disagree(
                compare(result, _judged(verdicts), ref_result, _judged(check_run(ref_result)))
            )
    return verdicts


def _judged(verdicts: dict[str, Verdict]) -> dict[str, Verdict]:
    """The verdicts a comparison may use (an adapter error says nothing of the transport)."""
    return {n: v for n, v in verdicts.items() if not v.adapter_error}


def _aim(
    campaign: Campaign, name: str, adapter: Adapter, reference: tuple[str, Adapter] | None
) -> None:
    """Run workloads aimed at the short guarantees until none is short or the budget ends."""
    rng = random.Random(campaign.hypothesis_seed)
    while campaign.aimed < campaign.aim_budget and campaign.error is None:
        short = campaign.short()
        built = aimed_workload(short, campaign.capabilities, rng) if short else None
        if built is None:
            return
        workload, aims = built
        for g in aims:
            campaign.summaries[g].aimed += 1
        result = _run(campaign, name, adapter, workload)
        if result is None:
            if campaign.error is not None:
                return
            continue
        campaign.aimed += 1
        _judge(campaign, workload, result, reference)


def _explore(
    campaign: Campaign,
    name: str,
    adapter: Adapter,
    examples: int,
    reference: tuple[str, Adapter] | None,
    raise_on: str | None,
) -> None:
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    if raise_on is not None:
        phases.append(Phase.shrink)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=False,
        verbosity=Verbosity.quiet,
    )
    @seed(campaign.hypothesis_seed)
    @given(workloads(campaign.capabilities))
    def explore(workload: Workload) -> None:
        if campaign.error is not None:
            return
        result = _run(campaign, name, adapter, workload)
        if result is None:
            return
        if raise_on is None:
            campaign.runs += 1
            verdicts = _judge(campaign, workload, result, reference)
            # Climb towards the premises still short of their target.
            for g, v in verdicts.items():
                if v.status in (PASS, FAIL) and campaign.summaries[g].exercised < TARGET:
                    target(float(v.score), label=g)
        else:
            verdicts = check_run(result)
            campaign.shrunk(workload, result, verdicts[raise_on])
        if raise_on is not None and verdicts[raise_on].failed:
            raise _FAILED[raise_on](f"{name} broke {raise_on} (workload seed {workload.seed})")

    try:
        explore()
    except Exception as exc:  # the failures are recorded; anything else is an error
        if not _expected(exc) and campaign.error is None:
            campaign.error = f"{name}: the campaign failed\n" + "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)
            )


def _run(campaign: Campaign, name: str, adapter: Adapter, workload: Workload) -> RunResult | None:
    """``adapter.run(workload)``; None if it raised.

    A :class:`~simq_conformance.RunError` (the run could not happen) is listed and the
    campaign goes on; any other exception is the adapter's bug and ends it.
    """
    try:
        return adapter.run(workload)
    except RunError as exc:
        campaign.errored.append((workload.seed, f"{name}: {exc}"))
        return None
    except Exception:
        campaign.error = f"{name}: run(workload) raised for {workload!r}\n" + (
            traceback.format_exc()
        )
        return None


def _expected(exc: BaseException) -> bool:
    """A guarantee failure, a group of them, or Hypothesis finding one flaky."""
    if isinstance(exc, GuaranteeFailed):
        return True
    inner: Any = getattr(exc, "exceptions", None)
    if inner:
        return all(_expected(e) for e in inner)
    return type(exc).__name__ in ("Flaky", "FlakyFailure") and isinstance(
        exc.__cause__ or exc.__context__, GuaranteeFailed | type(None)
    )
