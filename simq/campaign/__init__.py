"""Fault campaigns: plans as data, scenarios, exploring seeds, shrinking, replaying.

The user-facing names are re-exported from :mod:`simq`; this package holds one concept
per module: ``plan`` (timed faults), ``space`` (random plans), ``scenario`` (a run and its
verdict), ``invariants`` (ready-made checks), ``shrink``, ``explore`` and ``files``
(failures written out and replayed).
"""

from simq.campaign.explore import Found, Report, explore
from simq.campaign.plan import (
    CrashWorker,
    Fault,
    FaultPlan,
    KillChild,
    LoseConnection,
    RestartBroker,
    Revoke,
    ShutdownWorker,
)
from simq.campaign.scenario import Failure, Run, Scenario, scenario
from simq.campaign.shrink import Shrunk, shrink
from simq.campaign.space import FaultSpace

__all__ = [
    "CrashWorker",
    "Failure",
    "Fault",
    "FaultPlan",
    "FaultSpace",
    "Found",
    "KillChild",
    "LoseConnection",
    "Report",
    "RestartBroker",
    "Revoke",
    "Run",
    "Scenario",
    "Shrunk",
    "ShutdownWorker",
    "explore",
    "scenario",
    "shrink",
]
