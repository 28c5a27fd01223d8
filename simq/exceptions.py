"""Exceptions raised by simq itself.

Everything a task, the calling API or the tracer raises is Celery's own exception
(``celery.exceptions``): simq runs Celery's code. simq's tree is only::

    Exception
    └── SimqError                      simq's own errors: misuse, impossible waits
        ├── InvalidArgument (+TypeError, +ValueError)
        ├── NoActiveSimulation (+RuntimeError)
        ├── RunawaySimulation (+RuntimeError)
        ├── SimulationIdle (+RuntimeError)
        └── UnknownTarget (+LookupError)
"""

from __future__ import annotations

__all__ = [
    "InvalidArgument",
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
