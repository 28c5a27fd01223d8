"""Exceptions raised by simq itself.

Everything a task, the calling API or the tracer raises is Celery's own exception
(``celery.exceptions``): simq runs Celery's code. simq's tree is only::

    Exception
    └── SimqError                      simq's own errors: misuse, impossible waits
        ├── NoActiveSimulation (+RuntimeError)
        ├── SimulationIdle (+RuntimeError)
        └── UnknownTarget (+LookupError)
"""

from __future__ import annotations

__all__ = ["NoActiveSimulation", "SimqError", "SimulationIdle", "UnknownTarget"]


class SimqError(Exception):
    """Root of simq's own errors: each says what went wrong, why, and how to fix it."""


class NoActiveSimulation(SimqError, RuntimeError):
    """A call needed an active simulation (for example ``task.delay()``) and none was active."""


class SimulationIdle(SimqError, RuntimeError):
    """A wait can never finish: the simulation has nothing left to do."""


class UnknownTarget(SimqError, LookupError):
    """A fault or query named a worker, task or queue that does not exist."""
