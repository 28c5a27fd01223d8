"""Campaigns: run a scenario over many seeds, each with its own random fault plan.

``simq.explore(checkout, seeds=200)`` runs seed 0 to 199; every failure is shrunk to a
1-minimal plan (first failing seed per invariant) and reported with the one command
line that replays it. Seeds are independent runs, so a campaign splits cleanly: across
processes (``jobs``) and across CI jobs (``shard="2/4"`` takes every fourth seed,
starting with the second; the shards' union is the whole campaign).
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from simq import validate
from simq.campaign.plan import FaultPlan
from simq.campaign.scenario import Failure, Run, Scenario
from simq.campaign.shrink import shrink as shrink_run
from simq.campaign.space import FaultSpace
from simq.exceptions import InvalidArgument

__all__ = ["Found", "Report", "explore", "parse_shard", "select_seeds"]


@attrs.frozen
class Found:
    """A failure a campaign found, shrunk.

    Attributes:
        seed: The first seed that failed this way.
        plan: That seed's random plan.
        size: The workload size it ran with.
        failure: What broke.
        shrunk: The 1-minimal failing run (``shrunk.plan``, ``shrunk.size``).
        simulations: Runs the shrinker needed.
        replay: The command line that reruns the shrunk failure.
        seeds: Every seed of the campaign that failed the same invariant.
    """

    seed: int
    plan: FaultPlan
    size: int | None
    failure: Failure
    shrunk: Run
    simulations: int
    replay: str
    seeds: tuple[int, ...]

    def describe(self) -> str:
        shrunk = self.shrunk
        size = "" if shrunk.size is None else f", size {shrunk.size}"
        if shrunk.size is not None and shrunk.size != self.size:
            size += f" (from {self.size})"
        return "\n".join(
            [
                f"FAILED {self.failure.invariant} on seed {self.seed} "
                f"({len(self.seeds)} seed{'s' if len(self.seeds) != 1 else ''}: "
                f"{', '.join(map(str, self.seeds[:10]))}{' ...' if len(self.seeds) > 10 else ''})",
                f"  {shrunk.failure or self.failure}",
                f"  plan:   {self.plan.describe()}",
                f"  shrunk: {shrunk.plan.describe()}{size} ({self.simulations} simulations)",
                f"  replay: {self.replay}",
            ]
        )


@attrs.frozen
class Report:
    """What a campaign did: every run, and each distinct failure shrunk."""

    scenario: str
    runs: tuple[Run, ...]
    found: tuple[Found, ...]

    @property
    def ok(self) -> bool:
        return not self.found

    @property
    def failures(self) -> tuple[Run, ...]:
        return tuple(run for run in self.runs if run.failed)

    def __str__(self) -> str:
        head = f"{self.scenario}: {len(self.runs)} seeds, {len(self.failures)} failed" + (
            f", {len(self.found)} distinct" if self.found else ""
        )
        return "\n".join([head, *(found.describe() for found in self.found)])


def parse_shard(value: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (or ``(K, N)``), 1 <= K <= N, as a pair; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not match:
            raise InvalidArgument(f"shard must look like K/N (e.g. 2/4), got {value!r}")
        value = (int(match[1]), int(match[2]))
    k, n = value
    if not (isinstance(k, int) and isinstance(n, int) and 1 <= k <= n):
        raise InvalidArgument(f"shard K/N needs 1 <= K <= N, got {k}/{n}")
    return k, n


def select_seeds(
    seeds: int | Iterable[int], shard: str | tuple[int, int] | None = None
) -> list[int]:
    """The seeds a campaign (or one shard of it) runs, in order."""
    if isinstance(seeds, bool):
        raise validate.invalid("explore()", "seeds", "a count or an iterable of ints", seeds)
    if isinstance(seeds, int):
        validate.whole("explore()", "seeds", seeds, minimum=1)
        chosen = list(range(seeds))
    else:
        chosen = list(seeds)
        for seed in chosen:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise validate.invalid("explore()", "seeds", "ints", seed)
    pair = parse_shard(shard)
    if pair is not None:
        k, n = pair
        chosen = chosen[k - 1 :: n]
    return chosen


def _jobs(jobs: int | str) -> int:
    if jobs == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    return validate.whole("explore()", "jobs", jobs, minimum=1)


# The scenario a worker process runs, and whether it hashes histories: inherited
# through fork.
_WORKER_SCENARIO: Scenario | None = None
_WORKER_DIGESTS = False


def _run_seed(seed: int) -> Run:
    assert _WORKER_SCENARIO is not None
    return _WORKER_SCENARIO.run(seed, digest=_WORKER_DIGESTS)


def _sweep(
    scenario: Scenario,
    seeds: Sequence[int],
    jobs: int,
    on_run: Callable[[Run], Any],
    digests: bool,
) -> list[Run]:
    global _WORKER_SCENARIO, _WORKER_DIGESTS
    runs: list[Run] = []
    if jobs <= 1 or len(seeds) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for seed in seeds:
            run = scenario.run(seed, digest=digests)
            runs.append(run)
            on_run(run)
        return runs
    _WORKER_SCENARIO, _WORKER_DIGESTS = scenario, digests
    try:
        with multiprocessing.get_context("fork").Pool(min(jobs, len(seeds))) as pool:
            # One seed per task: a seed costs milliseconds, far more than handing it
            # over, and bigger chunks leave one process running the last one alone.
            for run in pool.imap(_run_seed, seeds, chunksize=1):
                runs.append(run)
                on_run(run)
    finally:
        _WORKER_SCENARIO = None
    return runs


def explore(
    scenario: Scenario | Callable[..., Any],
    seeds: int | Iterable[int] = 100,
    *,
    faults: FaultSpace | None = None,
    shard: str | tuple[int, int] | None = None,
    jobs: int | str = 1,
    shrink: bool = True,
    shrink_budget: int = 500,
    digests: bool = False,
    progress: Callable[[Run], Any] | None = None,
    app: Any = None,
    **simulation: Any,
) -> Report:
    """Run ``scenario`` once per seed, each with the seed's random fault plan.

    Args:
        scenario: A :class:`Scenario` (``@simq.scenario(app, ...)``), or a plain
            function of a simulation with ``app=`` and Simulation keywords here.
        seeds: How many (seeds 0 to N-1), or which.
        faults: Overrides the scenario's :class:`FaultSpace`.
        shard: ``"K/N"``: only the K-th of N interleaved slices of the seeds.
        jobs: Processes to run seeds in (``"auto"``: one per core).
        shrink: Shrink the first failing seed of each invariant.
        shrink_budget: Most simulations one shrink may run.
        digests: Hash every run's history (``Run.digest``), to compare campaigns run
            for run; shrunk runs are always hashed.
        progress: Called with each finished run (sweep and shrink alike).
    """
    if not isinstance(scenario, Scenario):
        if app is None:
            raise InvalidArgument(
                "explore(): a plain function needs the app: explore(fn, app=my_app, "
                "workers=3), or decorate it with @simq.scenario(my_app, workers=3)"
            )
        scenario = Scenario(scenario, app, simulation, faults or FaultSpace())
    elif app is not None or simulation:
        raise InvalidArgument(
            f"explore(): {scenario.name} is a simq.scenario already; give app and "
            "Simulation keywords to @simq.scenario(...), not to explore()"
        )
    if faults is not None:
        scenario = attrs.evolve(scenario, faults=faults)
    chosen = select_seeds(seeds, shard)
    on_run = progress or (lambda run: None)
    runs = _sweep(scenario, chosen, _jobs(jobs), on_run, digests)
    found: list[Found] = []
    by_invariant: dict[str, list[Run]] = {}
    for run in runs:
        if run.failure is not None:
            by_invariant.setdefault(run.failure.invariant, []).append(run)
    for group in by_invariant.values():
        first = group[0]
        assert first.failure is not None
        if shrink:
            shrunk = shrink_run(scenario, first, shrink_budget, on_run)
            best, cost = shrunk.run, shrunk.simulations
        else:
            best, cost = first, 0
        found.append(
            Found(
                first.seed,
                first.plan,
                first.size,
                first.failure,
                best,
                cost,
                scenario.replay_command(best.seed, best.plan, best.size),
                tuple(run.seed for run in group),
            )
        )
    return Report(scenario.ref, tuple(runs), tuple(found))
