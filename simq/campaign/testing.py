"""``simq.campaign_test``: the pytest decorator, importable without importing pytest.

``import simq`` must work where pytest is not installed (a campaign run from the
command line needs none); the decorator loads :mod:`simq.campaign.pytest` when used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simq.campaign.scenario import Scenario

__all__ = ["campaign_test"]


def campaign_test(
    seeds: Any = 20, shards: int = 1, shrink: bool = True
) -> Callable[[Scenario], Callable[..., None]]:
    """Decorator: the :class:`~simq.Scenario` below becomes a pytest test running a campaign.

    ``@simq.campaign_test(seeds=50)`` above ``@simq.scenario(app, ...)``. The test runs
    :func:`simq.explore` over the seeds and fails with the report and the one pytest
    command that replays the shrunk failure (``--simq-replay=...``).

    Args:
        seeds: Seeds to run (0 to seeds-1); ``--simq-seeds`` overrides it.
        shards: Test items to split the seeds over (``[shard1ofS]`` ...), for xdist.
        shrink: Shrink each distinct failure to a 1-minimal plan and workload.
    """
    from simq.campaign.pytest import campaign

    return campaign(seeds, shards, shrink)
