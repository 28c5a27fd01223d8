"""Rate limits on simulated workers: per worker, per task name, a token bucket of one (§6)."""

from __future__ import annotations

from typing import Any

import celery
import pytest

import simq
from simq.exceptions import SimqError


def starts(sim: simq.Simulation, task: str, worker: str | None = None) -> list[float]:
    """Virtual seconds since the start at which each attempt of ``task`` began."""
    criteria: dict[str, Any] = {"kind": "started", "task": task}
    if worker is not None:
        criteria["worker"] = worker
    return [e.time - sim.started_at for e in sim.history.where(**criteria)]


def limited_app(rate: Any, **settings: Any) -> tuple[celery.Celery, Any, Any]:
    """An app with a rate-limited ``shop.limited`` and an unlimited ``shop.free`` task."""
    app = simq.App("shop", **settings)

    @app.task(name="shop.limited", rate_limit=rate, shared=False)
    def limited(x=None):
        return x

    @app.task(name="shop.free", shared=False)
    def free(x=None):
        return x

    return app, limited, free


def run_many(sim: simq.Simulation, task: Any, n: int, **options: Any) -> None:
    for i in range(n):
        task.apply_async((i,), **options)
    sim.run()


@pytest.mark.parametrize(
    ("rate", "gap"),
    [("10/s", 0.1), ("100/m", 0.6), ("1/h", 3600.0), ("2", 0.5), (4, 0.25), ("30/m", 2.0)],
)
def test_starts_are_spaced_by_one_over_the_rate(simulation, rate, gap):
    """The first start is immediate and later ones are at least 1/rate apart, with no burst (§6)."""
    app, limited, _ = limited_app(rate)
    sim = simulation(app, concurrency=4)
    run_many(sim, limited, 5)
    assert starts(sim, "shop.limited") == pytest.approx([i * gap for i in range(5)])


def test_each_worker_has_its_own_bucket(simulation):
    """Each worker has its own bucket, so two workers run at twice the limit (§6, #5732)."""
    app, limited, _ = limited_app("1/s")
    sim = simulation(app, workers=2, concurrency=2)
    run_many(sim, limited, 6)
    assert starts(sim, "shop.limited", "worker-1") == pytest.approx([0.0, 1.0, 2.0])
    assert starts(sim, "shop.limited", "worker-2") == pytest.approx([0.0, 1.0, 2.0])


def test_another_task_on_the_same_worker_is_not_limited(simulation):
    """The bucket is per task name: an unlimited task on the same worker starts at once (§6)."""
    app, limited, free = limited_app("1/m")
    sim = simulation(app, concurrency=2)
    for i in range(2):
        limited.delay(i)
    for i in range(3):
        free.delay(i)
    sim.run()
    assert starts(sim, "shop.limited") == [0.0, 60.0]
    assert starts(sim, "shop.free") == [0.0, 0.0, 0.0]


def test_a_waiting_rate_limited_task_occupies_a_prefetch_slot(simulation):
    """A task waiting for its token holds a prefetch slot; other tasks wait behind it (§6, G5)."""
    app, limited, free = limited_app("1/m")
    sim = simulation(app, prefetch_multiplier=1)
    limited.delay(0)
    limited.delay(1)
    free.delay(2)
    sim.run()
    assert starts(sim, "shop.limited") == [0.0, 60.0]
    assert starts(sim, "shop.free") == [60.0]


def test_rate_limit_stacks_on_top_of_eta(simulation):
    """A rate-limited ETA task starts at the later of its ETA and the next free slot (§6, G16)."""
    app, limited, _ = limited_app("1/s")
    sim = simulation(app, concurrency=3)
    limited.delay("now")
    limited.apply_async(("soon",), countdown=0.5)
    limited.apply_async(("later",), countdown=3)
    sim.run()
    assert starts(sim, "shop.limited") == pytest.approx([0.0, 1.0, 3.0])


def test_rate_limited_tasks_keep_their_order(simulation):
    """Tasks waiting for tokens start in the order they arrived (§6 queueing)."""
    app, limited, _ = limited_app("5/s")
    sim = simulation(app, concurrency=2)
    run_many(sim, limited, 6)
    results = [e["result"] for e in sim.history.where(kind="state")]
    assert results == list(range(6))


def test_worker_disable_rate_limits_turns_them_off(simulation):
    """worker_disable_rate_limits=True lets limited tasks start without waiting (§6)."""
    app, limited, _ = limited_app("1/h", worker_disable_rate_limits=True)
    sim = simulation(app, concurrency=4)
    run_many(sim, limited, 4)
    assert starts(sim, "shop.limited") == [0.0] * 4


def test_task_default_rate_limit_applies_to_tasks_without_one(simulation):
    """task_default_rate_limit limits every task that sets no rate_limit (§1.2)."""
    app = simq.App("shop", task_default_rate_limit="2/s")

    @app.task(name="shop.plain", shared=False)
    def plain(x):
        return x

    sim = simulation(app, concurrency=3)
    run_many(sim, plain, 3)
    assert starts(sim, "shop.plain") == pytest.approx([0.0, 0.5, 1.0])


def test_malformed_rate_stops_the_worker_at_startup(simulation):
    """Celery accepts any rate_limit at @app.task; the worker refuses it as it starts."""
    app, _, _ = limited_app("10/x")
    assert app.tasks["shop.limited"].rate_limit == "10/x"  # no validation at definition
    with pytest.raises(
        SimqError,
        match=(
            r"^worker 'worker-1' cannot start: task 'shop.limited' has rate_limit '10/x', "
            r"which Celery's worker rejects at startup \(KeyError: 'x'\); use a number"
        ),
    ):
        simulation(app)
