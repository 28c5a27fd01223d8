"""Per-task cost of a simulated round trip on a real Celery app, side by side with Celery.

Measured in one process, on the same trivial task, and reported as ratios, so the
figures do not depend on the machine's speed:

(a) simq: ``add.delay(i, 1).get()`` on a ``celery.Celery`` app inside a simulation;
(b) Celery's own code path alone for the same work: build the protocol-2 message
    (``app.amqp.as_task_v2``), serialize and deserialize it with kombu, run Celery's
    tracer storing into a key-value backend (``cache+memory://``) and read the result
    with ``AsyncResult.get``; (a) minus (b) is simq's own overhead;
(c) Celery's eager ``Task.apply()``;
(d) Celery's in-process ``memory://`` worker (``celery.contrib.testing.worker``).

Also: entering and leaving an empty simulation, against creating a Celery app and
making one eager call.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from typing import Any

import celery
from celery.app.trace import build_tracer
from kombu.serialization import dumps, loads

import simq


def _app(name: str = "bench", **conf: Any) -> tuple[celery.Celery, Any]:
    app = celery.Celery(name, set_as_current=False)
    app.conf.update(conf)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    return app, add


def simq_get_each(n: int) -> float:
    """(a) Seconds per task: ``add.delay(i, 1).get()`` in a simulation."""
    app, add = _app()
    with simq.Simulation(app, seed=1):
        add.delay(0, 1).get()
        gc.collect()
        start = time.perf_counter()
        for i in range(n):
            add.delay(i, 1).get()
        elapsed = time.perf_counter() - start
    return elapsed / n


def simq_batch(n: int) -> float:
    """Seconds per task: publish ``n`` tasks, then run the simulation until idle."""
    app, add = _app()
    with simq.Simulation(app, seed=1) as sim:
        gc.collect()
        start = time.perf_counter()
        for i in range(n):
            add.delay(i, 1)
        sim.run()
        elapsed = time.perf_counter() - start
        assert len(sim.history.where(kind="succeeded")) == n
    return elapsed / n


def celery_code_path(n: int) -> float:
    """(b) Seconds per task: Celery's message, kombu, tracer and result code, no world."""
    app, add = _app(result_backend="cache+memory://")
    tracer = build_tracer(add.name, add, app=app, eager=False, propagate=False)
    accept = {"application/json"}

    def one(i: int) -> None:
        task_id = celery.utils.uuid()
        headers, _properties, body, _ = app.amqp.as_task_v2(task_id, add.name, args=(i, 1))
        content_type, encoding, data = dumps(body, serializer="json")
        args, kwargs, embed = loads(data, content_type, encoding, accept=accept)
        request = dict(headers, args=args, kwargs=kwargs, is_eager=False, **embed)
        request["delivery_info"] = {"exchange": "", "routing_key": "celery"}
        tracer(task_id, args, kwargs, request)
        assert app.AsyncResult(task_id).get() == i + 1

    one(0)
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        one(i)
    return (time.perf_counter() - start) / n


def celery_eager(n: int) -> float:
    """(c) Seconds per task: Celery's ``add.apply((i, 1))``."""
    _, add = _app()
    add.apply((0, 1))
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        add.apply((i, 1))
    return (time.perf_counter() - start) / n


def celery_memory_worker(n: int) -> float:
    """(d) Seconds per task: ``delay().get()`` on Celery's in-process memory:// worker."""
    from celery.contrib.testing.worker import start_worker

    # Tuned for speed: the worker polls the in-memory queue every millisecond and get()
    # polls the result every millisecond (the defaults, 1 s and 0.5 s, cost ~1 s a task).
    app, add = _app(
        broker_url="memory://",
        result_backend="cache+memory://",
        broker_transport_options={"polling_interval": 0.001},
    )
    app.loader.import_module("celery.contrib.testing.tasks")
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        add.delay(0, 1).get(timeout=10, interval=0.001)
        gc.collect()
        start = time.perf_counter()
        for i in range(n):
            add.delay(i, 1).get(timeout=10, interval=0.001)
        return (time.perf_counter() - start) / n


def empty_simulation(n: int) -> float:
    """Seconds to enter and leave an empty simulation on an existing app."""
    app, _ = _app()
    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        with simq.Simulation(app, seed=1):
            pass
    return (time.perf_counter() - start) / n


def new_app_and_eager_call(n: int) -> float:
    """Seconds to create a Celery app, define a task and make one eager call."""
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        _, add = _app(f"bench{i}")
        add.apply((1, 1))
    return (time.perf_counter() - start) / n


def throughput(n: int) -> dict[str, float]:
    """Tasks per second and peak traced memory for ``n`` queued trivial tasks."""
    per_task = simq_batch(n)
    app, add = _app()
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


def main(n: int = 4000, rounds: int = 5, big: int = 20_000) -> dict[str, Any]:
    """Measure everything; rounds alternate the contenders so drift hits all alike."""
    samples: dict[str, list[float]] = {k: [] for k in ("a", "b", "c", "d", "enter", "app")}
    for _ in range(rounds):
        samples["a"].append(simq_get_each(n))
        samples["b"].append(celery_code_path(n))
        samples["c"].append(celery_eager(n))
        samples["d"].append(celery_memory_worker(n // 4))
        samples["enter"].append(empty_simulation(200))
        samples["app"].append(new_app_and_eager_call(200))
    m = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    return {
        "simq_us": m["a"],
        "celery_path_us": m["b"],
        "eager_us": m["c"],
        "memory_worker_us": m["d"],
        "overhead_us": m["a"] - m["b"],
        "ratio_eager": m["a"] / m["c"],
        "ratio_memory_worker": m["a"] / m["d"],
        "enter_leave_us": m["enter"],
        "new_app_eager_us": m["app"],
        "throughput": throughput(big),
    }
