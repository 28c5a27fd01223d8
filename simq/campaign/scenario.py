"""Scenarios: a plain function of a simulation that publishes work, runs it and asserts.

``simq.scenario(app, workers=3)`` turns ``def checkout(sim): ...`` into a
:class:`Scenario`, which knows how to build the simulation for one seed, apply a fault
plan to it, call the function and judge the run: the function's own assertions, then
Celery's guarantees (``sim.check()``). A function that takes ``size`` gets a workload
size, which the shrinker may make smaller.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import shlex
import sys
import traceback
from collections.abc import Callable
from typing import Any

import attrs
import celery

from simq import validate
from simq.campaign import invariants
from simq.campaign.plan import FaultPlan
from simq.campaign.space import FaultSpace
from simq.exceptions import InvalidArgument, InvariantViolated
from simq.simulation import Simulation

__all__ = ["Failure", "Run", "Scenario", "scenario"]


@attrs.frozen
class Failure:
    """Why a run failed.

    Attributes:
        invariant: What broke: a guarantee (``"G4"``), a named invariant
            (``"exactly_once(charge)"``), or for any other exception its type
            (``"AssertionError"``). Shrinking keeps a plan only while this stays the same.
        message: The exception's message.
        traceback: Where it was raised, as text.
    """

    invariant: str
    message: str
    traceback: str = attrs.field(default="", eq=False, repr=False)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        if isinstance(exc, InvariantViolated):
            invariant, message = exc.invariant, str(exc).partition(": ")[2]
        else:
            invariant, message = type(exc).__name__, str(exc)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(invariant, message, text)

    def __str__(self) -> str:
        return f"{self.invariant}: {self.message}"


@attrs.frozen
class Run:
    """One run of a scenario: its inputs, its verdict and its history's fingerprint
    (``digest``: the sha256 of its JSON Lines; empty when the run was not hashed)."""

    seed: int
    plan: FaultPlan
    size: int | None
    failure: Failure | None
    digest: str = attrs.field(eq=False)
    history: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def failed(self) -> bool:
        return self.failure is not None


def _ref(fn: Callable[..., Any]) -> str:
    module = fn.__module__
    loaded = sys.modules.get(module)
    if module == "__main__" or getattr(loaded, "__simq_script__", False):
        # A script's scenario is found again by the script's path.
        path = getattr(loaded, "__file__", None)
        if path:
            inside = os.path.abspath(path).startswith(os.getcwd() + os.sep)
            module = os.path.relpath(path) if inside else os.path.abspath(path)
    return f"{module}:{fn.__qualname__}"


@attrs.frozen
class Scenario:
    """A scenario function with the simulation it runs on.

    Attributes:
        fn: ``fn(sim)`` or ``fn(sim, size)``: publishes work, runs it, asserts.
        app: The ``celery.Celery`` app.
        simulation: Keyword arguments for :class:`~simq.Simulation` (``workers``,
            ``concurrency``, ``transport``, ...); ``seed`` comes from the campaign.
        faults: The space random plans are drawn from.
        size: The workload size a function taking ``size`` gets (None: it takes none).
        check: Also judge Celery's guarantees (``sim.check()``) after the function.
    """

    fn: Callable[..., Any]
    app: Any
    simulation: dict[str, Any] = attrs.field(factory=dict)
    faults: FaultSpace = attrs.field(factory=FaultSpace)
    size: int | None = None
    check: bool = True

    def __attrs_post_init__(self) -> None:
        call = "simq.scenario()"
        if not callable(self.fn):
            raise validate.invalid(call, "the scenario", "a function of a simulation", self.fn)
        if not isinstance(self.app, celery.Celery):
            raise validate.invalid(call, "app", "a celery.Celery app", self.app)
        if "seed" in self.simulation:
            raise InvalidArgument(
                f"{call}: seed is the campaign's to choose, one per run; drop seed="
                f"{self.simulation['seed']!r} and pass seeds to explore() instead"
            )
        if not isinstance(self.faults, FaultSpace):
            raise validate.invalid(call, "faults", "a simq.FaultSpace", self.faults)
        takes_size = "size" in inspect.signature(self.fn).parameters
        if self.size is not None:
            validate.whole(call, "size", self.size, minimum=1)
            if not takes_size:
                raise InvalidArgument(
                    f"{call}: size={self.size} given, but {self.name}() takes no size "
                    "parameter; add one (def scenario(sim, size): ...) or drop size="
                )

    @property
    def name(self) -> str:
        return self.fn.__qualname__

    @property
    def ref(self) -> str:
        """``module:qualname``, what ``simq explore`` and ``simq replay`` take."""
        return _ref(self.fn)

    def __call__(self, sim: Any, *args: Any, **kwargs: Any) -> Any:
        return self.fn(sim, *args, **kwargs)

    def workers(self) -> list[str]:
        count = self.simulation.get("workers", 1)
        return [f"worker-{i}" for i in range(1, count + 1)]

    def plan_for(self, seed: int) -> FaultPlan:
        """The random plan of ``seed``: a pure function of the seed and the fault space."""
        return self.faults.draw(random.Random(f"simq-plan/{seed}"), self.workers())

    def run(
        self,
        seed: int,
        plan: FaultPlan | None = None,
        size: int | None = None,
        keep: bool = False,
        digest: bool = True,
    ) -> Run:
        """Run once with ``seed`` and ``plan`` (default: the seed's random plan).

        ``keep=True`` keeps the history on the result (for writing it out);
        ``digest=False`` skips hashing it (``Run.digest`` is then empty).
        """
        if plan is None:
            plan = self.plan_for(seed)
        size = self.size if size is None else size
        failure: Failure | None = None
        with Simulation(self.app, seed=seed, **self.simulation) as sim:
            plan.apply(sim)
            try:
                if size is None:
                    self.fn(sim)
                else:
                    self.fn(sim, size=size)
                if self.check:
                    invariants.guarantees(sim)
            except Exception as exc:  # the verdict, whatever the scenario raised
                failure = Failure.from_exception(exc)
            text = sim.history.to_jsonl() if digest else ""
            history = sim.history if keep else None
        fingerprint = hashlib.sha256(text.encode()).hexdigest() if digest else ""
        return Run(seed, plan, size, failure, fingerprint, history)

    def replay_command(self, seed: int, plan: FaultPlan, size: int | None = None) -> str:
        """The one command line that reruns this exact run."""
        words = ["simq", "replay", self.ref, "--seed", str(seed), "--plan", plan.to_json()]
        if size is not None:
            words += ["--size", str(size)]
        return shlex.join(words)


def scenario(
    app: Any,
    *,
    faults: FaultSpace | None = None,
    size: int | None = None,
    check: bool = True,
    **simulation: Any,
) -> Callable[[Callable[..., Any]], Scenario]:
    """Decorator: ``@simq.scenario(app, workers=3, faults=simq.FaultSpace(...))``.

    ``simulation`` keywords go to :class:`~simq.Simulation` for every run.
    """

    def wrap(fn: Callable[..., Any]) -> Scenario:
        return Scenario(fn, app, simulation, faults or FaultSpace(), size, check)

    return wrap
