"""Fault campaigns: seeds per second, and what shrinking a plan of 10 faults costs.

The scenario (issue 10's): 100 acks_late tasks on a real ``celery.Celery`` app, 3 workers
of 2 children, one random crash per seed (the worker comes back), every task must run to
SUCCESS and Celery's guarantees must hold. Seeds per second are measured with one process
and with two (``explore(jobs=2)``), side by side in one run.
"""

from __future__ import annotations

import os
import time
from typing import Any

import celery

import simq

app = celery.Celery("bench-campaign")


@app.task(name="bench.step", acks_late=True, shared=False)
def step(n: int) -> int:
    time.sleep(0.1)
    return n


@simq.scenario(
    app,
    workers=3,
    concurrency=2,
    size=100,
    faults=simq.FaultSpace(kinds=("crash",), faults=(1, 1), window=(0, 5), restart_chance=1.0),
)
def hundred(sim: Any, size: int) -> None:
    results = [step.delay(n) for n in range(size)]
    sim.run()
    simq.invariants.all_finished(sim)
    assert [r.get() for r in results] == list(range(size))


EFFECTS: list[int] = []


@app.task(name="bench.pay", acks_late=True, shared=False)
def pay(n: int) -> None:
    EFFECTS.append(n)
    time.sleep(1.0)


@simq.scenario(app, workers=3, concurrency=2, size=20)
def payments(sim: Any, size: int) -> None:
    EFFECTS.clear()
    for n in range(size):
        pay.delay(n)
    sim.run()
    simq.invariants.exactly_once(EFFECTS, expected=range(size), what="payment")


def _rate(seeds: int, jobs: int) -> float:
    start = time.perf_counter()
    report = simq.explore(hundred, seeds=seeds, jobs=jobs, shrink=False)
    elapsed = time.perf_counter() - start
    assert report.ok, str(report)
    return seeds / elapsed


def _shrink_ten() -> dict[str, Any]:
    seed = next(s for s in range(100) if payments.run(s, payments.plan_for(s)).failed)
    first = payments.run(seed)
    noise = [
        simq.LoseConnection(at=3.0 + i, worker=f"worker-{1 + i % 3}", reconnect_after=2.0)
        for i in range(10 - len(first.plan))
    ]
    failing = payments.run(seed, simq.FaultPlan([*first.plan, *noise]))
    assert failing.failed and len(failing.plan) == 10
    start = time.perf_counter()
    shrunk = simq.shrink(payments, failing)
    return {
        "faults": len(failing.plan),
        "shrunk_faults": len(shrunk.run.plan),
        "shrunk": shrunk.run.plan.describe(),
        "size": shrunk.run.size,
        "simulations": shrunk.simulations,
        "seconds": time.perf_counter() - start,
    }


def main(seeds: int = 120) -> dict[str, Any]:
    _rate(6, 1)  # warm up imports and caches
    one = [_rate(seeds, 1) for _ in range(2)]
    two = [_rate(seeds, 2) for _ in range(2)]
    return {
        "cores": len(os.sched_getaffinity(0)),
        "one": max(one),
        "two": max(two),
        "speedup": max(two) / max(one),
        "shrink": _shrink_ten(),
    }


def report(r: dict[str, Any]) -> None:
    print("\n## Fault campaigns (100 acks_late tasks, 3 workers, one random crash per seed)")
    print(
        f"- one process: {r['one']:.1f} seeds/s; two processes: {r['two']:.1f} seeds/s "
        f"(target >= 60); speed-up {r['speedup']:.2f}x (target >= 1.8) on {r['cores']} cores"
    )
    s = r["shrink"]
    print(
        f"- shrinking a plan of {s['faults']} faults to {s['shrunk_faults']} "
        f"({s['shrunk']}, size {s['size']}): {s['simulations']} simulations, "
        f"{s['seconds']:.2f} s"
    )


if __name__ == "__main__":
    report(main())
