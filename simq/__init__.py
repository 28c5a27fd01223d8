"""simq: test Celery task code the way the queue will really treat it.

A deterministic discrete-event simulator of brokers, workers, retries and time limits
behind Celery's Task API, on a virtual clock, reproducible from a seed.
"""

from simq import exceptions as exceptions
from simq import states as states
from simq.app import App as App
from simq.app import Celery as Celery
from simq.canvas import Signature as Signature
from simq.canvas import signature as signature
from simq.exceptions import SimqError as SimqError
from simq.history import Event as Event
from simq.history import History as History
from simq.result import AsyncResult as AsyncResult
from simq.result import EagerResult as EagerResult
from simq.simulation import Simulation as Simulation
from simq.task import Task as Task

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncResult",
    "Celery",
    "EagerResult",
    "Event",
    "History",
    "Signature",
    "SimqError",
    "Simulation",
    "Task",
    "exceptions",
    "signature",
    "states",
]
