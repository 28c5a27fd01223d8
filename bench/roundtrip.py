"""Per-task cost of a simulated round trip versus Celery's eager ``Task.apply()``.

Both are measured in the same process, side by side, on the same trivial task, and
reported as a ratio, so the figure does not depend on the machine's speed.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from typing import Any

import simq


def _simq_app() -> tuple[simq.App, Any]:
    app = simq.App("bench")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    return app, add


def simq_batch(n: int) -> float:
    """Seconds per task: publish ``n`` tasks, run the simulation until idle."""
    app, add = _simq_app()
    with simq.Simulation(app, seed=1) as sim:
        gc.collect()
        start = time.perf_counter()
        for i in range(n):
            add.delay(i, 1)
        sim.run()
        elapsed = time.perf_counter() - start
        assert len(sim.history.where(kind="succeeded")) == n
    return elapsed / n


def simq_one_by_one(n: int) -> float:
    """Seconds per task: ``add.delay(...).get()`` repeated ``n`` times."""
    app, add = _simq_app()
    with simq.Simulation(app, seed=1):
        gc.collect()
        start = time.perf_counter()
        for i in range(n):
            add.delay(i, 1).get()
        elapsed = time.perf_counter() - start
    return elapsed / n


def celery_eager(n: int) -> float:
    """Seconds per task: Celery 5.7's ``add.apply((i, 1))`` repeated ``n`` times."""
    from celery import Celery

    app = Celery("bench")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.apply((0, 1))
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        add.apply((i, 1))
    return (time.perf_counter() - start) / n


def throughput(n: int) -> dict[str, float]:
    """Tasks per second and peak traced memory for ``n`` queued trivial tasks."""
    per_task = simq_batch(n)
    app, add = _simq_app()
    tracemalloc.start()
    with simq.Simulation(app, seed=1) as sim:
        for i in range(n):
            add.delay(i, 1)
        sim.run()
        events = len(sim.history)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "tasks": n,
        "tasks_per_second": 1.0 / per_task,
        "peak_mib": peak / 2**20,
        "events": events,
    }


def main(n: int = 20_000, rounds: int = 5, big: int = 100_000) -> dict[str, Any]:
    """Measure everything; rounds alternate simq and Celery so drift hits both alike."""
    simq_batch(1000)
    celery_eager(1000)
    batch, single, eager = [], [], []
    for _ in range(rounds):
        batch.append(simq_batch(n))
        single.append(simq_one_by_one(n // 4))
        eager.append(celery_eager(n // 4))
    b, s, e = (statistics.median(x) for x in (batch, single, eager))
    return {
        "simq_batch_us": b * 1e6,
        "simq_get_each_us": s * 1e6,
        "celery_eager_us": e * 1e6,
        "ratio_batch": b / e,
        "ratio_get_each": s / e,
        "throughput": throughput(big),
    }
