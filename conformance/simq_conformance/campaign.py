"""A campaign: Hypothesis runs generated workloads on one adapter and judges every run.

One campaign per adapter serves all eighteen guarantee tests: each example runs once
and is judged on every guarantee. Then, for a simulated adapter, each broken guarantee
is hunted alone with the same seed and Hypothesis shrinks its failure to a minimal
workload; the campaign keeps, per guarantee, the shortest failing history it saw. With
a ``reference`` adapter (the simulator on the same transport) each workload also runs
there, and the two runs must agree on every guarantee (the differential check).
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings

from simq_conformance.adapter import Adapter, Capabilities, RunResult, Workload
from simq_conformance.differential import Disagreement, compare
from simq_conformance.properties import (
    FAIL,
    GUARANTEES,
    NOT_APPLICABLE,
    PASS,
    Verdict,
    applicability,
    check_run,
)
from simq_conformance.workloads import workloads

__all__ = ["Campaign", "Failure", "GuaranteeFailed", "Summary", "run_campaign"]


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
    """A guarantee's result over a campaign."""

    guarantee: str
    status: str = PASS
    reason: str = ""
    runs: int = 0
    exercised: int = 0
    failure: Failure | None = None


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

    def record(self, workload: Workload, result: RunResult, verdicts: dict[str, Verdict]) -> None:
        self.runs += 1
        for name, verdict in verdicts.items():
            summary = self.summaries[name]
            if verdict.status == NOT_APPLICABLE:
                continue
            summary.runs += 1
            summary.exercised += verdict.exercised
            if verdict.status == FAIL:
                summary.status = FAIL
                self.shrunk(workload, result, verdict)

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
    """
    caps = adapter.capabilities
    campaign = Campaign(
        name, caps, hypothesis_seed, examples, reference=reference[0] if reference else None
    )
    for g_name, g in GUARANTEES.items():
        reason = applicability(g, caps)
        campaign.summaries[g_name] = (
            Summary(g_name, NOT_APPLICABLE, reason) if reason else Summary(g_name)
        )
    if shrink is None:
        shrink = caps.simulated
    started = time.monotonic()
    # Every example is judged on every guarantee; nothing is raised, so a failure does
    # not end the exploration of the others.
    _explore(campaign, name, adapter, examples, reference, raise_on=None)
    if shrink:
        # Then each broken guarantee is hunted alone with the same seed (the same
        # workloads, in the same order) and Hypothesis shrinks its first failure.
        for g_name in [
            g
            for g, s in campaign.summaries.items()
            if s.status == FAIL and (shrink_only is None or g in shrink_only)
        ]:
            _explore(campaign, name, adapter, examples, None, raise_on=g_name)
    campaign.elapsed = time.monotonic() - started
    return campaign


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
        verdicts = check_run(result)
        if raise_on is None:
            campaign.record(workload, result, verdicts)
        else:
            campaign.shrunk(workload, result, verdicts[raise_on])
        if reference is not None:
            ref_result = _run(campaign, reference[0], reference[1], workload)
            if ref_result is not None:
                campaign.disagree(compare(result, verdicts, ref_result, check_run(ref_result)))
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
    """``adapter.run(workload)``; None (and the campaign's error set) if it raised."""
    try:
        return adapter.run(workload)
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
