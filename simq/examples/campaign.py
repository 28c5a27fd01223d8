"""The campaign ``simq demo`` runs: the order workflow, one worker crash per seed.

Each order must be charged exactly once, whatever the crash did. ``charge_payment`` is
``acks_late`` and not idempotent, so a crash between the gateway's charge and the
receipt charges the order twice; a campaign finds the seeds where that happens and
shrinks each to the one crash that causes it::

    simq explore simq.examples.campaign:orders --seeds 50
"""

from __future__ import annotations

from typing import Any

import simq
from simq.examples import orders as example

__all__ = ["orders", "sample_history"]


def charged(ledger: list[tuple[float, str, int]]) -> list[int]:
    """The order ids the gateway charged, once per charge."""
    return [order for _, what, order in ledger if what == "charged"]


@simq.scenario(
    example.app,
    workers=3,
    concurrency=2,
    size=20,
    faults=simq.FaultSpace(kinds=("crash",), faults=(1, 1), window=(0.0, 12.0)),
)
def orders(sim: Any, size: int) -> None:
    """Place ``size`` orders, run to the end; each must be charged exactly once."""
    example.LEDGER.clear()
    for order_id in range(1, size + 1):
        example.place_order.delay(order_id, 10.0 * order_id)
    sim.run()
    simq.invariants.exactly_once(
        charged(example.LEDGER), expected=range(1, size + 1), what="charge"
    )


def sample_history(orders: int = 5) -> Any:
    """A short run of the workflow with two hand-placed faults (the docs' timeline).

    Seed 0, 2 workers of 2 children, ``orders`` orders; worker-2 crashes at 0.7 s and is
    back 15 s later, worker-1 loses its connection at 12 s for 3 s.
    """
    with simq.Simulation(example.app, seed=0, workers=2, concurrency=2) as sim:
        for order_id in range(1, orders + 1):
            example.place_order.delay(order_id, 10.0)
        sim.crash_worker("worker-2", at=0.7, restart_after=15)
        sim.lose_connection("worker-1", at=12, reconnect_after=3)
        sim.run()
        return sim.history
