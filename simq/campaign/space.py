"""Random fault plans: the space a campaign draws one plan per seed from.

``FaultSpace(kinds=("crash",), faults=(1, 1), window=(0, 20))`` reads "exactly one crash,
somewhere in the first 20 seconds". Drawing is a pure function of a ``random.Random``:
the campaign seeds one per run, so a seed names its plan for ever.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs

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
from simq.exceptions import InvalidArgument

__all__ = ["DEFAULT_KINDS", "FaultSpace", "checked_kinds", "checked_pair", "checked_workers"]

#: What a campaign injects when not told: the faults every transport and app must survive.
DEFAULT_KINDS = ("crash", "kill-child", "lose-connection")
_CALL = "FaultSpace()"


def checked_kinds(call: str, value: Any) -> tuple[str, ...]:
    """Fault kind names (one, or several), each known; repeats dropped."""
    kinds = (value,) if isinstance(value, str) else tuple(value)
    if not kinds:
        raise InvalidArgument(f"{call}: kinds must name at least one of {', '.join(KINDS)}")
    for kind in kinds:
        if kind not in KINDS:
            raise InvalidArgument(
                f"{call}: unknown fault kind {kind!r}; the kinds are "
                f"{', '.join(KINDS)}{validate.did_you_mean(kind, KINDS)}"
            )
    return tuple(dict.fromkeys(kinds))


def checked_pair(
    call: str, name: str, value: Any, *, whole: bool, labels: tuple[str, str] = ("low", "high")
) -> tuple[Any, Any]:
    """A ``(low, high)`` pair of ints (``whole``) or of seconds, with low <= high."""
    pair = f"a ({labels[0]}, {labels[1]}) pair"
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise validate.invalid(call, name, pair, value)
    low, high = (
        (validate.whole(call, name, v) for v in value)
        if whole
        else (validate.seconds(call, name, v) for v in value)
    )
    if low > high:
        raise validate.invalid(call, name, f"{pair} with {labels[0]} <= {labels[1]}", value)
    return low, high


def checked_workers(call: str, value: Any) -> tuple[str, ...]:
    """Worker names (one, or several); repeats dropped."""
    workers = (value,) if isinstance(value, str) else tuple(value)
    if not workers or not all(isinstance(w, str) and w for w in workers):
        raise validate.invalid(
            call, "workers", "worker names such as ('worker-1', 'worker-2')", value
        )
    return tuple(dict.fromkeys(workers))


def _kinds(value: Any) -> tuple[str, ...]:
    return checked_kinds(_CALL, value)


@attrs.frozen
class FaultSpace:
    """Bounds for random fault plans.

    Attributes:
        kinds: Fault kinds to draw from (``crash``, ``kill-child``, ``lose-connection``,
            ``restart-broker``, ``shutdown``, ``revoke``).
        faults: ``(fewest, most)`` faults per plan.
        window: ``(earliest, latest)`` moment of a fault, seconds from the start.
        workers: The workers faults may hit; ``None``: every worker the simulation starts
            (``worker-1`` to ``worker-N``).
        restart_chance: How often a crashed worker comes back (after 1 to 30 s).
    """

    kinds: tuple[str, ...] = attrs.field(default=DEFAULT_KINDS, converter=_kinds)
    faults: tuple[int, int] = attrs.field(default=(1, 3))
    window: tuple[float, float] = attrs.field(default=(0.0, 30.0))
    workers: tuple[str, ...] | None = attrs.field(default=None)
    restart_chance: float = 0.5

    def __attrs_post_init__(self) -> None:
        faults = checked_pair(_CALL, "faults", self.faults, whole=True)
        object.__setattr__(self, "faults", faults)
        object.__setattr__(self, "window", checked_pair(_CALL, "window", self.window, whole=False))
        if self.workers is not None:
            object.__setattr__(self, "workers", checked_workers(_CALL, self.workers))
        if not validate.is_real(self.restart_chance) or not 0 <= self.restart_chance <= 1:
            raise validate.invalid(
                _CALL, "restart_chance", "a number from 0 to 1", self.restart_chance
            )

    def draw(self, rng: random.Random, workers: Sequence[str]) -> FaultPlan:
        """One plan, drawn from ``rng``; ``workers`` are the simulation's worker names."""
        targets = tuple(self.workers or workers)
        if not targets:
            raise InvalidArgument(f"{_CALL}: no worker to aim faults at; start workers first")
        count = rng.randint(*self.faults)
        return FaultPlan(self._one(rng, targets) for _ in range(count))

    def _one(self, rng: random.Random, workers: tuple[str, ...]) -> Fault:
        kind = rng.choice(self.kinds)
        low, high = self.window
        at = round(round(rng.uniform(low, high) / RESOLUTION) * RESOLUTION, 6)
        worker = rng.choice(workers)
        if kind == "crash":
            restart = rng.random() < self.restart_chance
            return CrashWorker(at, worker, float(rng.randint(1, 30)) if restart else None)
        if kind == "kill-child":
            return KillChild(at, worker, rng.randrange(8))
        if kind == "lose-connection":
            return LoseConnection(at, worker, float(rng.randint(1, 30)))
        if kind == "restart-broker":
            return RestartBroker(at, float(rng.randint(1, 10)))
        if kind == "shutdown":
            return ShutdownWorker(at, worker, rng.random() < 0.5)
        return Revoke(at, rng.randrange(1000), rng.random() < 0.5)
