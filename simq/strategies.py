"""Hypothesis strategies for fault plans and workloads, for ``@given`` tests of scenarios.

::

    from hypothesis import given, settings
    from simq.strategies import fault_plans, sizes

    @settings(deadline=None)
    @given(plan=fault_plans(kinds=("crash",), workers=("worker-1", "worker-2")), size=sizes(1, 5))
    def test_checkout_survives_crashes(plan, size):
        run = checkout.run(seed=0, plan=plan, size=size)
        assert run.failure is None, run.failure

Every strategy is built from Hypothesis primitives (integers, sampled values, lists), so
Hypothesis's own shrinker, its example database and ``@reproduce_failure`` work on plans
as on any other value: a failing plan shrinks to fewer faults, each earlier on the plan's
0.1 s grid, aimed at the first worker, with the simplest options (a crash without
restart, a warm shutdown, a revoke that does not terminate, the shortest outage).

Importing this module registers :func:`fault_plans` for :class:`~simq.FaultPlan` (and
:func:`faults` for each fault kind) with ``st.register_type_strategy``, so
``st.from_type(simq.FaultPlan)`` works. Hypothesis is a test dependency, not one of
simq's: ``import simq`` never imports it, and this module says how to install it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from simq import validate
from simq.campaign.plan import (
    KINDS,
    RESOLUTION,
    CrashWorker,
    Fault,
    FaultPlan,
    KillChild,
    LoseConnection,
    RestartBroker,
    Revoke,
    ShutdownWorker,
)
from simq.campaign.space import DEFAULT_KINDS, checked_kinds, checked_pair, checked_workers
from simq.exceptions import SimqError

__all__ = ["HypothesisMissing", "fault_plans", "faults", "seeds", "sizes"]


class HypothesisMissing(SimqError, ImportError):
    """``simq.strategies`` was imported where Hypothesis is not installed."""


try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise HypothesisMissing(
        "simq.strategies needs Hypothesis, which is a test dependency of simq, not a "
        "runtime one: pip install hypothesis (or pip install 'celery-simq[test]')"
    ) from exc

#: The workers faults aim at when not told: those of ``simq.scenario(app, workers=3)``.
WORKERS = ("worker-1", "worker-2", "worker-3")
#: The longest outage drawn: a crashed worker's restart, a lost connection's reconnect.
_LONGEST_OUTAGE = 30.0
#: The longest broker restart drawn.
_LONGEST_BROKER_DOWN = 10.0
#: Revoke targets the ``nth`` published task, wrapping around; larger n adds nothing.
_MOST_NTH = 999
#: KillChild targets the ``child``-th busy child, wrapping around.
_MOST_CHILD = 7


def _steps(call: str, window: Any) -> tuple[int, int]:
    """``window`` (seconds) as the first and last step of the 0.1 s grid inside it."""
    low, high = checked_pair(call, "window", window, whole=False)
    first, last = math.ceil(low / RESOLUTION - 1e-9), math.floor(high / RESOLUTION + 1e-9)
    if first > last:
        raise validate.invalid(
            call, "window", f"a span holding a point of the plan's {RESOLUTION:g} s grid", window
        )
    return first, last


def _on_grid(step: int) -> float:
    return round(step * RESOLUTION, 6)


def _times(first: int, last: int) -> st.SearchStrategy[float]:
    """Moments ``first`` to ``last`` grid steps from the start; shrinks towards ``first``."""
    return st.integers(first, last).map(_on_grid)


def _durations(longest: float) -> st.SearchStrategy[float]:
    """Positive durations on the grid, up to ``longest`` s; shrinks towards the shortest."""
    return _times(1, round(longest / RESOLUTION))


def _fault(kind: str, workers: tuple[str, ...], first: int, last: int) -> st.SearchStrategy[Fault]:
    at = _times(first, last)
    worker = st.sampled_from(workers)
    strategy: st.SearchStrategy[Fault]
    if kind == CrashWorker.kind:
        strategy = st.builds(
            CrashWorker, at=at, worker=worker, restart_after=st.none() | _durations(_LONGEST_OUTAGE)
        )
    elif kind == KillChild.kind:
        strategy = st.builds(KillChild, at=at, worker=worker, child=st.integers(0, _MOST_CHILD))
    elif kind == LoseConnection.kind:
        strategy = st.builds(
            LoseConnection, at=at, worker=worker, reconnect_after=_durations(_LONGEST_OUTAGE)
        )
    elif kind == RestartBroker.kind:
        strategy = st.builds(RestartBroker, at=at, down_for=_durations(_LONGEST_BROKER_DOWN))
    elif kind == ShutdownWorker.kind:
        # sampled_from shrinks to its first value: the milder warm shutdown.
        strategy = st.builds(
            ShutdownWorker, at=at, worker=worker, warm=st.sampled_from([True, False])
        )
    else:
        strategy = st.builds(Revoke, at=at, nth=st.integers(0, _MOST_NTH), terminate=st.booleans())
    return strategy


def faults(
    kind: str,
    *,
    workers: Sequence[str] | str = WORKERS,
    window: tuple[float, float] = (0, 30),
) -> st.SearchStrategy[Fault]:
    """One fault of ``kind`` (``"crash"``, ``"kill-child"``, ...) aimed at one of
    ``workers``, at a moment of ``window`` (seconds from the start, on the 0.1 s grid)."""
    call = "simq.strategies.faults()"
    first, last = _steps(call, window)
    (kind,) = checked_kinds(call, (kind,))
    return _fault(kind, checked_workers(call, workers), first, last)


def fault_plans(
    *,
    kinds: Sequence[str] | str = DEFAULT_KINDS,
    workers: Sequence[str] | str = WORKERS,
    faults: tuple[int, int] = (0, 3),
    window: tuple[float, float] = (0, 30),
) -> st.SearchStrategy[FaultPlan]:
    """Fault plans: ``faults`` = (fewest, most) faults of ``kinds``, aimed at ``workers``,
    each at a moment of ``window`` (seconds from the start, on the 0.1 s grid).

    The same bounds as :class:`~simq.FaultSpace`, for ``@given``: a failing plan shrinks
    to fewer, earlier, milder faults.
    """
    call = "simq.strategies.fault_plans()"
    kinds = checked_kinds(call, kinds)
    names = checked_workers(call, workers)
    fewest, most = checked_pair(call, "faults", faults, whole=True, labels=("fewest", "most"))
    first, last = _steps(call, window)
    one = st.one_of([_fault(kind, names, first, last) for kind in kinds])
    return st.lists(one, min_size=fewest, max_size=most).map(FaultPlan)


def sizes(min_size: int = 1, max_size: int = 100) -> st.SearchStrategy[int]:
    """Workload sizes for a scenario taking ``size``; shrinks towards ``min_size``."""
    call = "simq.strategies.sizes()"
    low = validate.whole(call, "min_size", min_size, minimum=1)
    high = validate.whole(call, "max_size", max_size, minimum=low)
    return st.integers(low, high)


def seeds(min_seed: int = 0, max_seed: int = 2**32 - 1) -> st.SearchStrategy[int]:
    """Simulation seeds; shrinks towards ``min_seed``."""
    call = "simq.strategies.seeds()"
    low = validate.whole(call, "min_seed", min_seed)
    high = validate.whole(call, "max_seed", max_seed, minimum=low)
    return st.integers(low, high)


st.register_type_strategy(FaultPlan, fault_plans())
st.register_type_strategy(Fault, st.one_of([faults(kind) for kind in KINDS]))
for _kind_name, _cls in KINDS.items():
    st.register_type_strategy(_cls, faults(_kind_name))
