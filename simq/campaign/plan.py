"""Fault plans as data: timed faults, frozen, JSON round-trippable, applied in one call.

A plan's times are seconds from the simulation's start. Each fault fires through the
same code as the matching ``sim`` call (``crash_worker``, ``kill_child``, ...), so what it
does and what it records are the same; a fault that finds nothing to act on when it
fires (a worker not there, no busy child, no task to revoke) is recorded as
``fault-skipped`` and the run goes on, as a planned kill of a pid that is gone would.

Two faults pick their target when they fire, since a plan is written before any task id
exists: :class:`KillChild` kills the ``child``-th busy child of its worker (counting the
busy ones in slot order, wrapping around), :class:`Revoke` revokes the ``nth`` task
published so far (wrapping around).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import attrs

from simq import validate
from simq.exceptions import InvalidArgument, UnknownTarget

__all__ = [
    "KINDS",
    "CrashWorker",
    "Fault",
    "FaultPlan",
    "KillChild",
    "LoseConnection",
    "RestartBroker",
    "Revoke",
    "ShutdownWorker",
]

#: The time grid of plans: faults are placed, and moved earlier by the shrinker, in steps
#: of this many seconds.
RESOLUTION = 0.1


def _at(instance: Any, attribute: Any, value: Any) -> None:
    validate.seconds(f"{type(instance).__name__}()", attribute.name, value)


def _positive(instance: Any, attribute: Any, value: Any) -> None:
    validate.seconds(f"{type(instance).__name__}()", attribute.name, value, zero=False)


def _maybe_positive(instance: Any, attribute: Any, value: Any) -> None:
    validate.seconds(f"{type(instance).__name__}()", attribute.name, value, none=True, zero=False)


def _worker(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise validate.invalid(
            f"{type(instance).__name__}()",
            attribute.name,
            "a worker name such as 'worker-1'",
            value,
        )


def _index(instance: Any, attribute: Any, value: Any) -> None:
    validate.whole(f"{type(instance).__name__}()", attribute.name, value)


def _flag(instance: Any, attribute: Any, value: Any) -> None:
    validate.flag(f"{type(instance).__name__}()", attribute.name, value)


def _shorter(value: float) -> list[float]:
    """Milder durations than ``value``: half of it, then one grid step less, on the grid."""
    out: list[float] = []
    for less in (value / 2, value - RESOLUTION):
        less = round(math.floor(less / RESOLUTION) * RESOLUTION, 6)
        if 0 < less < value and less not in out:
            out.append(less)
    return out


@attrs.frozen
class Fault:
    """One timed fault of a plan (a base class: use the kinds below)."""

    kind: ClassVar[str] = ""
    at: float = attrs.field(converter=float, validator=_at)

    def fire(self, sim: Any) -> None:
        """Apply this fault to ``sim`` now."""
        raise NotImplementedError

    def milder(self) -> list[Fault]:
        """The same fault made milder, mildest first (none: already the mildest)."""
        return []

    def earlier(self) -> list[Fault]:
        """The same fault moved earlier on the plan's grid: to 0, halfway, one step."""
        out: list[Fault] = []
        for at in (0.0, self.at / 2, self.at - RESOLUTION):
            at = round(max(0.0, math.floor(at / RESOLUTION + 1e-9) * RESOLUTION), 6)
            if at < self.at and all(f.at != at for f in out):
                out.append(attrs.evolve(self, at=at))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **attrs.asdict(self)}

    def describe(self) -> str:
        """One line for people: ``crash worker-2 at 0.7 s (restart after 15 s)``."""
        fields = attrs.asdict(self)
        at = fields.pop("at")
        rest = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"{self.kind} at {at:g} s" + (f" ({rest})" if rest else "")


@attrs.frozen
class CrashWorker(Fault):
    """A power failure of ``worker`` (G4); with ``restart_after``, an empty one returns."""

    kind: ClassVar[str] = "crash"
    worker: str = attrs.field(default="worker-1", validator=_worker)
    restart_after: float | None = attrs.field(default=None, validator=_maybe_positive)

    def fire(self, sim: Any) -> None:
        sim.crash_worker(self.worker, restart_after=self.restart_after)

    def milder(self) -> list[Fault]:
        if self.restart_after is None:
            return [attrs.evolve(self, restart_after=30.0)]
        return [attrs.evolve(self, restart_after=s) for s in _shorter(self.restart_after)]


@attrs.frozen
class KillChild(Fault):
    """The ``child``-th busy child of ``worker`` dies (G3); SIGKILL by default."""

    kind: ClassVar[str] = "kill-child"
    worker: str = attrs.field(default="worker-1", validator=_worker)
    child: int = attrs.field(default=0, validator=_index)
    exitcode: int = -9

    def fire(self, sim: Any) -> None:
        busy = [s.request for s in sim.worker(self.worker).slots if s.request is not None]
        if not busy:
            raise UnknownTarget(f"worker {self.worker!r} has no busy child")
        request = busy[self.child % len(busy)]
        sim.kill_child(request.id, exitcode=self.exitcode, attempt=request.tag)


@attrs.frozen
class LoseConnection(Fault):
    """``worker`` loses its broker connection (G7), reconnecting ``reconnect_after`` later."""

    kind: ClassVar[str] = "lose-connection"
    worker: str = attrs.field(default="worker-1", validator=_worker)
    reconnect_after: float = attrs.field(default=5.0, converter=float, validator=_positive)

    def fire(self, sim: Any) -> None:
        sim.lose_connection(self.worker, reconnect_after=self.reconnect_after)

    def milder(self) -> list[Fault]:
        return [attrs.evolve(self, reconnect_after=s) for s in _shorter(self.reconnect_after)]


@attrs.frozen
class RestartBroker(Fault):
    """The broker restarts, down for ``down_for`` seconds; what the transport keeps survives."""

    kind: ClassVar[str] = "restart-broker"
    down_for: float = attrs.field(default=1.0, converter=float, validator=_positive)

    def fire(self, sim: Any) -> None:
        sim.restart_broker(down_for=self.down_for)

    def milder(self) -> list[Fault]:
        return [attrs.evolve(self, down_for=s) for s in _shorter(self.down_for)]


@attrs.frozen
class ShutdownWorker(Fault):
    """``worker`` shuts down (G17): warm lets running tasks finish, cold cancels them."""

    kind: ClassVar[str] = "shutdown"
    worker: str = attrs.field(default="worker-1", validator=_worker)
    warm: bool = attrs.field(default=True, validator=_flag)

    def fire(self, sim: Any) -> None:
        sim.shutdown_worker(self.worker, warm=self.warm)

    def milder(self) -> list[Fault]:
        return [] if self.warm else [attrs.evolve(self, warm=True)]


@attrs.frozen
class Revoke(Fault):
    """Revoke the ``nth`` task published so far (G10), terminating it if it runs."""

    kind: ClassVar[str] = "revoke"
    nth: int = attrs.field(default=0, validator=_index)
    terminate: bool = attrs.field(default=False, validator=_flag)

    def fire(self, sim: Any) -> None:
        ids = list(dict.fromkeys(e.task_id for e in sim.history.where(kind="published")))
        if not ids:
            raise UnknownTarget("no task has been published yet")
        sim.revoke(ids[self.nth % len(ids)], terminate=self.terminate)

    def milder(self) -> list[Fault]:
        return [attrs.evolve(self, terminate=False)] if self.terminate else []


#: Every fault kind, by the name plans use in JSON.
KINDS: dict[str, type[Fault]] = {
    cls.kind: cls
    for cls in (CrashWorker, KillChild, LoseConnection, RestartBroker, ShutdownWorker, Revoke)
}


def _faults(value: Iterable[Fault]) -> tuple[Fault, ...]:
    faults = tuple(value)
    for fault in faults:
        if not isinstance(fault, Fault) or type(fault) is Fault:
            raise InvalidArgument(
                f"FaultPlan(): faults must be simq fault values ({', '.join(KINDS)}), got "
                f"{validate.shown(fault)}; build them as simq.CrashWorker(at=1.0, worker="
                "'worker-1') and so on, or read a plan with FaultPlan.from_json()"
            )
    return tuple(sorted(faults, key=lambda f: f.at))


@attrs.frozen
class FaultPlan:
    """Timed faults for one run: ``plan.apply(sim)`` schedules them all.

    Plans are values: equal plans compare equal, hash alike and print the same JSON.
    """

    faults: tuple[Fault, ...] = attrs.field(default=(), converter=_faults)

    def __iter__(self) -> Iterator[Fault]:
        return iter(self.faults)

    def __len__(self) -> int:
        return len(self.faults)

    def apply(self, sim: Any) -> None:
        """Schedule every fault on ``sim``, ``at`` seconds from its start, and record the plan.

        A fault whose moment is already past fires now.
        """
        sim.record("fault-plan", faults=[f.to_dict() for f in self.faults])
        start = sim.started_at
        for fault in self.faults:
            sim.loop.call_at(max(sim.loop.now, start + fault.at), _fire, sim, fault)

    def without(self, index: int) -> FaultPlan:
        return FaultPlan(self.faults[:index] + self.faults[index + 1 :])

    def replace(self, index: int, fault: Fault) -> FaultPlan:
        return FaultPlan((*self.faults[:index], fault, *self.faults[index + 1 :]))

    def to_list(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.faults]

    def to_json(self) -> str:
        return json.dumps(self.to_list(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | Sequence[Any]) -> FaultPlan:
        """Read what :meth:`to_json` wrote (a JSON string, or the list it holds)."""
        data = json.loads(text) if isinstance(text, str) else text
        if not isinstance(data, list):
            raise InvalidArgument(
                f"FaultPlan.from_json(): expected a JSON list of faults, got {validate.shown(data)}"
            )
        faults: list[Fault] = []
        for item in data:
            if not isinstance(item, dict) or item.get("kind") not in KINDS:
                kind = item.get("kind") if isinstance(item, dict) else item
                raise InvalidArgument(
                    f"FaultPlan.from_json(): unknown fault kind {kind!r}; the kinds "
                    f"are {', '.join(KINDS)}{validate.did_you_mean(kind, KINDS)}"
                )
            fields = {k: v for k, v in item.items() if k != "kind"}
            try:
                faults.append(KINDS[item["kind"]](**fields))
            except TypeError as exc:
                if isinstance(exc, InvalidArgument):
                    raise
                raise InvalidArgument(f"FaultPlan.from_json(): {item['kind']}: {exc}") from None
        return cls(faults)

    def describe(self) -> str:
        return "; ".join(f.describe() for f in self.faults) or "no faults"


def _fire(sim: Any, fault: Fault) -> None:
    try:
        fault.fire(sim)
    except UnknownTarget as exc:
        sim.record("fault-skipped", fault=fault.kind, reason=str(exc))
