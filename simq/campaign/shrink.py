"""Shrinking a failing run to a 1-minimal fault plan and workload, by delta debugging.

A candidate is kept when the scenario, rerun with the same seed, still fails the *same*
invariant. Passes repeat until nothing changes, each trying, fault by fault:

1. dropping it;
2. making it milder (a crash that restarts, sooner; a shorter outage; a warm shutdown;
   a revoke that does not terminate), mildest first;
3. moving it earlier on the plan's 0.1 s grid: to 0, halfway, one step;

and then a smaller workload (1, half, then one less) when the scenario takes a size. The
result is 1-minimal: no single fault can be dropped, made milder or moved one step
earlier, and the size cannot be one less, while the same invariant still fails.

Why not Hypothesis's shrinker here: it shrinks the choices a strategy made, and a plan
drawn from a seed has none to give it; ``simq.strategies.fault_plans()`` hands plans to
Hypothesis for users of ``@given``, whose own shrinker then does this job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs

from simq.campaign.plan import FaultPlan
from simq.campaign.scenario import Run, Scenario

__all__ = ["Shrunk", "shrink"]


@attrs.frozen
class Shrunk:
    """The smallest failing run found, and what finding it cost.

    Attributes:
        run: The 1-minimal failing run (plan, size, failure).
        simulations: Scenario runs the shrinker made.
    """

    run: Run
    simulations: int


def _plan_moves(plan: FaultPlan) -> Iterator[FaultPlan]:
    for i in range(len(plan)):
        yield plan.without(i)
    for i, fault in enumerate(plan):
        for milder in fault.milder():
            yield plan.replace(i, milder)
    for i, fault in enumerate(plan):
        for earlier in fault.earlier():
            yield plan.replace(i, earlier)


def _sizes(size: int | None) -> list[int]:
    if size is None or size <= 1:
        return []
    return sorted({1, size // 2, size - 1} - {0, size})


def shrink(
    scenario: Scenario,
    failing: Run,
    budget: int = 500,
    progress: Callable[[Run], Any] | None = None,
) -> Shrunk:
    """Shrink ``failing`` (a failed run of ``scenario``) within ``budget`` simulations."""
    assert failing.failure is not None, "shrink() needs a failing run"
    target = failing.failure.invariant
    best = failing
    spent = 0

    def attempt(plan: FaultPlan, size: int | None) -> bool:
        nonlocal best, spent
        spent += 1
        run = scenario.run(best.seed, plan, size)
        if progress is not None:
            progress(run)
        if run.failure is not None and run.failure.invariant == target:
            best = run
            return True
        return False

    changed = True
    while changed and spent < budget:
        changed = False
        for candidate in _plan_moves(best.plan):
            if spent >= budget:
                break
            if attempt(candidate, best.size):
                changed = True
                break  # restart from the smaller plan
        if changed:
            continue
        for size in _sizes(best.size):
            if spent >= budget:
                break
            if attempt(best.plan, size):
                changed = True
                break
    return Shrunk(best, spent)
