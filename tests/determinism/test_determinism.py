"""Same seed and code give a byte-identical history; nothing leaks threads or global random.

STYLE.md, Engine: "Determinism is tested: same seed gives a byte-identical history;
different seeds give different ones."
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import celery

import simq

HERE = Path(__file__).resolve().parent


class Flaky(Exception):
    """The error the autoretrying task recovers from."""


def workload_jsonl(seed: int) -> str:
    """Run a workload with retries, jittered autoretry, sleeps and 3 workers; its JSONL."""
    app = celery.Celery("determinism")
    app.conf.task_acks_late = True
    attempts: dict[str, int] = {}
    # shared=False: Celery adds a shared task to every app made later, where the first
    # registered under a name wins; each run registers its own tasks on its own app.

    @app.task(shared=False, bind=True, max_retries=3)
    def charge(self: celery.Task, order: int) -> dict[str, int]:
        if self.request.retries < order % 3:
            raise self.retry(countdown=order + 1)
        return {"order": order, "retries": self.request.retries}

    @app.task(
        shared=False,
        bind=True,
        autoretry_for=(Flaky,),
        retry_backoff=2,
        retry_jitter=True,
        max_retries=4,
    )
    def ship(self: celery.Task, order: int) -> str:
        attempts[self.request.id] = attempts.get(self.request.id, 0) + 1
        if attempts[self.request.id] <= 2:
            raise Flaky(order)
        return f"shipped {order}"

    @app.task(shared=False)
    def pack(seconds: float) -> float:
        time.sleep(seconds)
        return time.time()

    @app.task(shared=False)
    def audit(value: object) -> str:
        return repr(value)

    with simq.Simulation(app, seed=seed, workers=3, concurrency=2, prefetch_multiplier=1) as sim:
        for order in range(6):
            charge.apply_async((order,), link=audit.s(), priority=order % 3)
            ship.delay(order)
            pack.apply_async((1.5 * order,), countdown=order % 2, expires=30)
        sim.advance(2)
        sim.add_worker(name="late-joiner", concurrency=1)
        sim.run()
        return sim.history.to_jsonl()


def test_same_seed_gives_byte_identical_history() -> None:
    """Two runs of the same workload with the same seed record the same JSONL bytes."""
    first = workload_jsonl(7)
    assert first == workload_jsonl(7)
    kinds = {line.split('"kind":"')[1].split('"')[0] for line in first.splitlines()}
    assert {"retried", "succeeded", "published", "delivered", "acked"} <= kinds


def test_different_seeds_give_different_task_ids() -> None:
    """Runs with different seeds draw different task ids."""

    def task_ids(seed: int) -> set[str]:
        history = simq.History.from_jsonl(workload_jsonl(seed))
        return {e.task_id for e in history.where(kind="published") if e.task_id}

    ids = [task_ids(seed) for seed in (0, 1, 2)]
    assert len(ids[0]) == len(ids[1]) == len(ids[2]) > 1
    assert ids[0].isdisjoint(ids[1])
    assert ids[0].isdisjoint(ids[2])
    assert ids[1].isdisjoint(ids[2])


def test_history_does_not_depend_on_pythonhashseed() -> None:
    """A workload run in fresh interpreters with different PYTHONHASHSEED gives one JSONL."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import test_determinism\n"
        "sys.stdout.write(test_determinism.workload_jsonl(3))\n"
    )
    outputs = []
    for hashseed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, check=False
        )
        assert done.returncode == 0, done.stderr.decode()
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0] == workload_jsonl(3).encode()


def test_a_run_starts_no_thread() -> None:
    """Running a simulation leaves the number of live threads unchanged."""
    before = threading.active_count()
    workload_jsonl(5)
    assert threading.active_count() == before


def test_a_run_leaves_global_random_untouched() -> None:
    """Running a simulation, jitter included, neither draws from nor reseeds global random."""
    state = random.getstate()
    workload_jsonl(5)
    assert random.getstate() == state
