"""Exceptions raised by simq itself.

Everything a task, the calling API or the tracer raises is Celery's own exception
(``celery.exceptions``): simq runs Celery's code. simq's tree is only::

    Exception
    └── SimqError                      simq's own errors: misuse, impossible waits
        ├── InvalidArgument (+TypeError, +ValueError)
        ├── InvariantViolated (+AssertionError)   a campaign invariant failed
        ├── NoActiveSimulation (+RuntimeError)
        ├── RunawaySimulation (+RuntimeError)
        ├── SimulationIdle (+RuntimeError)
        └── UnknownTarget (+LookupError)
"""

from __future__ import annotations

__all__ = [
    "InvalidArgument",
    "InvariantViolated",
    "NoActiveSimulation",
    "RunawaySimulation",
    "SimqError",
    "SimulationIdle",
    "UnknownTarget",
]


class SimqError(Exception):
    """Root of simq's own errors: each says what went wrong, why, and how to fix it."""


class InvalidArgument(SimqError, TypeError, ValueError):
    """A public parameter got a value simq cannot use, refused where it was given.

    The message names the call, the parameter, the value and the fix. It is a TypeError
    (a value of the wrong type) and a ValueError (a value out of range) at once, so code
    that catches either builtin keeps working.
    """


class NoActiveSimulation(SimqError, RuntimeError):
    """A call needed an active simulation (for example ``task.delay()``) and none was active."""


class RunawaySimulation(SimqError, RuntimeError):
    """A run went on past one of the simulation's guards: it was looping.

    The message says which guard stopped it, what repeated (event kind, task name and
    id, how often, at which virtual time) and how to fix the task or raise the limit
    (``Simulation(max_instant_steps=, max_steps=, max_run_time=)``).

    Attributes:
        limit: The guard that stopped the run: ``"max_instant_steps"``, ``"max_steps"``
            or ``"max_run_time"``.
    """

    def __init__(self, message: str, limit: str = "") -> None:
        super().__init__(message)
        self.limit = limit

    def __reduce__(self) -> tuple[type[RunawaySimulation], tuple[str, str]]:
        return (type(self), (str(self), self.limit))


class SimulationIdle(SimqError, RuntimeError):
    """A wait can never finish: the simulation has nothing left to do."""


class UnknownTarget(SimqError, LookupError):
    """A fault or query named a worker, task or queue that does not exist."""


class InvariantViolated(SimqError, AssertionError):
    """A campaign invariant failed: a guarantee of Celery's, or one of the app's own.

    An AssertionError, so a scenario run under plain pytest fails as an assertion does.

    Attributes:
        invariant: Its name (``"G4"``, ``"exactly_once(charged)"``, ...): a campaign
            shrinks a failing plan while the same invariant still fails.
    """

    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(f"{invariant}: {message}")
        self.invariant = invariant

    def __reduce__(self) -> tuple[type[InvariantViolated], tuple[str, str]]:
        return (type(self), (self.invariant, str(self).partition(": ")[2]))
