"""Hypothesis strategies for :class:`~simq_conformance.Workload`: settings, probe calls, faults.

Every workload is short enough for a real broker (countdowns up to 2.5 s, probe bodies
up to about 3.5 s, faults in the first 2 s) and uses only the faults and features the
adapter's :class:`~simq_conformance.Capabilities` declare.

Times are at scales where a broken timing is unmistakable against a real deployment's
slack (measured, at most :data:`~simq_conformance.calibrate.CEILING`, 1 s): some
countdowns are 2 s and more, so a task that ignores its ETA starts seconds early; a soft
time limit comes :data:`SOFT_GAP` seconds before the hard one, so a task that ignores it
runs on to the hard limit, seconds past the soft one::

    from hypothesis import given
    from simq_conformance.workloads import workloads

    @given(workloads(adapter.capabilities))
    def test_my_transport(workload):
        result = adapter.run(workload)
        ...
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from simq_conformance.adapter import (
    FAULTS,
    PROBES,
    Capabilities,
    Fault,
    ProbeCall,
    RunSettings,
    Workload,
)

__all__ = ["faults", "probe_calls", "run_settings", "workloads"]

#: Faults aimed at a probe call (its key), the rest at a worker index or nothing.
_BY_KEY = frozenset({"kill_child", "revoke", "terminate"})
_BY_WORKER = frozenset({"kill_worker", "cut_connection", "warm_shutdown", "cold_shutdown"})

#: Countdowns (seconds): short ones, that keep runs quick and races with faults close,
#: and long ones, that an ETA ignored would miss by seconds.
COUNTDOWNS = (0.2, 0.5, 1.0, 2.0, 2.5)
_COUNTDOWNS = st.one_of(st.none(), st.sampled_from(COUNTDOWNS))
#: Hard time limits of ``exceed`` calls alone (seconds), and with a soft limit, which
#: then comes SOFT_GAP seconds earlier.
HARD_LIMITS = (0.5, 1.0)
SOFT_HARD_LIMITS = (2.0, 2.5)
#: Seconds between a soft and a hard time limit: a task that ignores its soft limit runs
#: this much past it, well over any slack a deployment is certified with.
SOFT_GAP = 1.5
#: Probe bodies that run long enough for a fault to land inside them.
_SLEEPS = st.sampled_from([0.2, 0.5, 1.0, 1.5])


def _tenths(low: int, high: int) -> st.SearchStrategy[float]:
    return st.integers(low, high).map(lambda n: n / 10)


def run_settings(*, acks_on_timeout: bool = True) -> st.SearchStrategy[RunSettings]:
    """Workers, concurrency and prefetch of 1-2, and Celery's ack settings.

    ``acks_on_timeout=False`` may then be drawn only when the caller allows it (with
    ``acks_late`` it requeues a timed-out task forever, so not with ``exceed`` calls).
    """
    conf = st.fixed_dictionaries(
        {
            "task_acks_late": st.booleans(),
            "task_reject_on_worker_lost": st.booleans(),
            "task_acks_on_failure": st.booleans(),
        },
        optional={
            "task_acks_on_timeout": st.booleans() if acks_on_timeout else st.just(True),
            "worker_deduplicate_successful_tasks": st.booleans(),
        },
    )
    return st.builds(
        RunSettings,
        workers=st.integers(1, 2),
        concurrency=st.integers(1, 2),
        prefetch_multiplier=st.integers(1, 2),
        conf=conf,
    )


def _options(draw: Any) -> dict[str, Any]:
    """``countdown`` and ``expires``: either well before the ETA or well after it."""
    options: dict[str, Any] = {}
    countdown = draw(_COUNTDOWNS)
    if countdown is not None:
        options["countdown"] = countdown
    expiry = draw(st.sampled_from([None, None, "far", "soon"]))
    if expiry == "far":
        options["expires"] = (countdown or 0.0) + 30.0
    elif expiry == "soon":
        # Expired by the time the ETA fires (or, with no countdown, if it waits 0.3 s):
        # half the countdown before it, at most 1 s, so a worker that ignores the
        # expiry starts the task well past the slack.
        if countdown and countdown > 0.2:
            options["expires"] = countdown - min(countdown / 2, 1.0)
        else:
            options["expires"] = 0.3
    return options


def _probes(capabilities: Capabilities) -> list[str]:
    """The probes the adapter runs (``exceed`` only where time limits are enforced)."""
    return [
        p
        for p in PROBES
        if p in capabilities.probes and (p != "exceed" or capabilities.time_limits)
    ]


@st.composite
def _call(draw: Any, key: str, probes: list[str]) -> ProbeCall:
    probe = draw(st.sampled_from(probes))
    options = _options(draw)
    args: tuple[Any, ...]
    if probe == "ret":
        args = (draw(st.integers(0, 9)),)
    elif probe == "fail_n":
        args = (key, draw(st.integers(0, 2)), draw(st.integers(0, 9)))
    elif probe == "retry":
        args = (key, draw(st.integers(0, 2)), draw(st.sampled_from([0.1, 0.3])))
    elif probe == "sleep":
        args = (draw(_SLEEPS),)
    elif probe == "die":
        args = (key, draw(st.integers(1, 2)))
    elif probe == "reject":
        args = (key, draw(st.integers(1, 2)), draw(st.booleans()))
    elif probe == "ignore":
        args = ()
    elif probe == "fail":
        args = ("boom",)
    else:  # exceed: sleeps past its hard limit; maybe a soft limit SOFT_GAP before it
        soft = draw(st.booleans())
        limit = draw(st.sampled_from(SOFT_HARD_LIMITS if soft else HARD_LIMITS))
        options["time_limit"] = limit
        if soft:
            options["soft_time_limit"] = limit - SOFT_GAP
        # 2 s past the hard limit: a prefork pool on a polling transport checks limits
        # once a second (billiard's TimeoutHandler), so the limit fires before the body
        # could end on its own.
        args = (limit + 2.0,)
    return ProbeCall(probe, args, options, key)


def probe_calls(
    capabilities: Capabilities, *, max_calls: int = 4
) -> st.SearchStrategy[tuple[ProbeCall, ...]]:
    """1 to ``max_calls`` calls of the adapter's probes, keyed ``c1``, ``c2``, ...

    ``exceed`` is drawn only where time limits are enforced.
    """
    probes = _probes(capabilities)

    @st.composite
    def calls(draw: Any) -> tuple[ProbeCall, ...]:
        n = draw(st.integers(1, max_calls))
        return tuple(draw(_call(f"c{i}", probes)) for i in range(1, n + 1))

    return calls()


def faults(
    capabilities: Capabilities,
    settings: RunSettings,
    calls: tuple[ProbeCall, ...],
    *,
    max_faults: int = 2,
) -> st.SearchStrategy[tuple[Fault, ...]]:
    """Up to ``max_faults`` faults the adapter supports, in the first 2 s, sorted by time."""
    kinds = [k for k in FAULTS if k in capabilities.faults]
    if not kinds or max_faults <= 0:
        return st.just(())
    keys = [c.key for c in calls]

    @st.composite
    def one(draw: Any) -> Fault:
        kind = draw(st.sampled_from(kinds))
        at = draw(_tenths(0, 20))
        target: int | str | None = None
        if kind in _BY_KEY:
            target = draw(st.sampled_from(keys))
        elif kind in _BY_WORKER:
            target = draw(st.integers(0, settings.workers - 1))
        return Fault(kind, at, target)

    return st.lists(one(), max_size=max_faults).map(
        lambda fs: tuple(sorted(fs, key=lambda f: f.at))
    )


def workloads(
    capabilities: Capabilities, *, max_calls: int = 4, max_faults: int = 2
) -> st.SearchStrategy[Workload]:
    """Workloads the adapter with ``capabilities`` can run: settings, calls, faults, seed."""

    @st.composite
    def build(draw: Any) -> Workload:
        calls = draw(probe_calls(capabilities, max_calls=max_calls))
        exceeds = any(c.probe == "exceed" for c in calls)
        settings = draw(run_settings(acks_on_timeout=not exceeds))
        plan = draw(faults(capabilities, settings, calls, max_faults=max_faults))
        seed = draw(st.integers(0, 2**16))
        return Workload(settings, calls, plan, seed)

    return build()
