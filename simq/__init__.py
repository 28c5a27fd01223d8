"""simq: test Celery apps the way the queue will really treat them.

Your real ``celery.Celery`` app runs unchanged (Celery's own code builds the messages,
runs the tracer, retries and canvas) on a simulated world: brokers, workers and their
pools, the clock and the result store, in one process, on a virtual clock, reproducible
from a seed.
"""

from simq import exceptions as exceptions
from simq.app import App as App
from simq.exceptions import SimqError as SimqError
from simq.history import Event as Event
from simq.history import History as History
from simq.simulation import Simulation as Simulation

__version__ = "0.2.0"

__all__ = [
    "App",
    "Event",
    "History",
    "SimqError",
    "Simulation",
    "exceptions",
]
