"""simq: test Celery apps the way the queue will really treat them.

Your real ``celery.Celery`` app runs unchanged (Celery's own code builds the messages,
runs the tracer, retries and canvas) on a simulated world: brokers, workers and their
pools, the clock and the result store, in one process, on a virtual clock, reproducible
from a seed.
"""

from simq import exceptions as exceptions
from simq.app import App as App
from simq.campaign import CrashWorker as CrashWorker
from simq.campaign import FaultPlan as FaultPlan
from simq.campaign import FaultSpace as FaultSpace
from simq.campaign import KillChild as KillChild
from simq.campaign import LoseConnection as LoseConnection
from simq.campaign import Report as Report
from simq.campaign import RestartBroker as RestartBroker
from simq.campaign import Revoke as Revoke
from simq.campaign import Scenario as Scenario
from simq.campaign import ShutdownWorker as ShutdownWorker
from simq.campaign import explore as explore
from simq.campaign import invariants as invariants
from simq.campaign import scenario as scenario
from simq.campaign import shrink as shrink
from simq.campaign.testing import campaign_test as campaign_test
from simq.exceptions import SimqError as SimqError
from simq.history import Event as Event
from simq.history import History as History
from simq.simulation import Simulation as Simulation

__version__ = "0.2.0"

__all__ = [
    "App",
    "CrashWorker",
    "Event",
    "FaultPlan",
    "FaultSpace",
    "History",
    "KillChild",
    "LoseConnection",
    "Report",
    "RestartBroker",
    "Revoke",
    "Scenario",
    "ShutdownWorker",
    "SimqError",
    "Simulation",
    "campaign_test",
    "exceptions",
    "explore",
    "invariants",
    "scenario",
    "shrink",
]
