"""The ``simq`` command line: ``simq demo`` runs the bundled order workflow."""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Sequence

from simq import __version__
from simq.simulation import Simulation

__all__ = ["demo", "main"]


def demo(
    seed: int = 0, orders: int = 20, workers: int = 2, concurrency: int = 2, faults: bool = True
) -> str:
    """Run the order workflow example and return a readable summary."""
    from simq.examples import orders as example

    example.LEDGER.clear()
    wall = time.perf_counter()
    with Simulation(example.app, seed=seed, workers=workers, concurrency=concurrency) as sim:
        for order_id in range(1, orders + 1):
            example.place_order.delay(order_id, 10.0 * order_id)
        if faults and workers >= 2:
            # A power cut on one worker mid-run (acks_late charges are redelivered) and
            # a dropped broker connection on another a little later.
            sim.crash_worker("worker-2", at=0.7, restart_after=15)
            sim.lose_connection("worker-1", at=12, reconnect_after=3)
        sim.run()
        violations = sim.check()
        history = sim.history
        elapsed = sim.elapsed
        start = sim.started_at
        finals: dict[str, str] = {}
        names: dict[str, str] = {}
        for event in history.where(kind="published"):
            names[event.task_id or ""] = event["task"]
        for event in history.where(kind="state"):
            finals[event.task_id or ""] = event["state"]
    wall = time.perf_counter() - wall

    by_task: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for task_id, name in names.items():
        by_task[name][finals.get(task_id, "PENDING")] += 1
    lines = [
        f"simq {__version__} demo: {orders} orders, {workers} workers x {concurrency} "
        f"children, seed {seed}",
        "",
        f"{'task':<32} states",
    ]
    for name in sorted(by_task):
        counts = ", ".join(f"{state} {n}" for state, n in sorted(by_task[name].items()))
        lines.append(f"{name:<32} {counts}")
    retries = len(history.where(kind="retried"))
    expired = len(history.where(kind="revoked", reason="expired"))
    redelivered = len(history.where(kind="delivered", redelivered=True))
    fault_kinds = ("worker-crashed", "connection-lost", "child-killed", "shutdown")
    injected = (
        ", ".join(
            f"{e.kind} {e.worker} at {e.time - start:.1f} s"
            for e in history.where(kind=fault_kinds)
        )
        or "none"
    )
    lines += [
        "",
        f"faults: {injected}",
        f"retries: {retries}    redeliveries: {redelivered}    expired holds: {expired}"
        f"    events: {len(history)}",
        f"guarantees checked (sim.check()): {len(violations)} violations",
        f"virtual time elapsed: {elapsed:,.1f} s    real time taken: {wall * 1000:,.1f} ms",
        f"replay: simq demo --seed {seed} --orders {orders}" + ("" if faults else " --no-faults"),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"simq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_cmd = sub.add_parser("demo", help="run the bundled order workflow in a simulation")
    demo_cmd.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    demo_cmd.add_argument("--orders", type=int, default=20, help="orders to place")
    demo_cmd.add_argument("--workers", type=int, default=2, help="workers to start")
    demo_cmd.add_argument("--concurrency", type=int, default=2, help="children per worker")
    demo_cmd.add_argument("--no-faults", action="store_true", help="run without faults")
    args = parser.parse_args(argv)
    if args.command == "demo":
        print(
            demo(args.seed, args.orders, args.workers, args.concurrency, faults=not args.no_faults)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
