"""Determinism with faults: the same seed and the same fault script give a byte-identical
history (ARCHITECTURE.md decision 1), on every transport."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from celery.exceptions import Reject

import simq

SCRIPT = textwrap.dedent("""
    import time
    import celery
    import simq
    from celery.exceptions import Reject

    def scenario(seed, transport, plain=False):
        settings = {"broker_transport_options": {"visibility_timeout": 40},
                    "task_queue_max_priority": 10}
        if plain:  # a celery.Celery app as users write it, broker and backend untouched
            app = celery.Celery("shop")
            app.conf.update(settings)
        else:
            app = simq.App("shop", **settings)
        task = lambda **options: app.task(shared=False, **options)  # this app's tasks only

        @task(bind=True, name="shop.charge", acks_late=True, reject_on_worker_lost=True)
        def charge(self, n):
            time.sleep(8)
            return n

        @task(bind=True, name="shop.flaky", autoretry_for=(ValueError,),
                  retry_backoff=True, max_retries=3)
        def flaky(self, n):
            time.sleep(2)
            if self.request.retries < 2:
                raise ValueError(n)
            return n

        @task(bind=True, name="shop.picky", acks_late=True)
        def picky(self, n):
            if n % 3 == 0 and not self.request.delivery_info["redelivered"]:
                raise Reject("later", requeue=n % 2 == 0)
            return n

        @task(name="shop.report", soft_time_limit=5, time_limit=9,
                  retry_on_worker_lost=True, default_retry_delay=4)
        def report(n):
            return n

        with simq.Simulation(app, seed=seed, workers=3, concurrency=2, transport=transport,
                             durations={"shop.report": lambda rng: rng.uniform(1, 12)}) as sim:
            first = charge.delay(0)
            for n in range(1, 13):
                task = (charge, flaky, picky, report)[n % 4]
                task.apply_async((n,), countdown=n % 5, priority=n % 10)
            sim.kill_child(first.id, at=3)
            sim.crash_worker("worker-1", at=4, restart_after=6)
            sim.lose_connection("worker-2", at=5, reconnect_after=3)
            sim.revoke(first.id, at=11, terminate=True)
            sim.restart_broker(at=14, down_for=2)
            sim.shutdown_worker("worker-3", at=20, warm=False)
            sim.add_worker("late-worker", concurrency=2)
            sim.advance(400)
            return sim.history.to_jsonl()
""")

namespace: dict = {}
exec(compile(SCRIPT, "fault_scenario", "exec"), namespace)
scenario = namespace["scenario"]


@pytest.mark.parametrize("plain", [False, True], ids=["simq-App", "celery-Celery"])
@pytest.mark.parametrize("transport", ["amqp", "redis", "sqs"])
def test_same_seed_and_faults_give_the_same_history(transport, plain):
    """Two runs with one seed and one fault script give byte-identical JSON Lines."""
    first = scenario(11, transport, plain)
    assert first == scenario(11, transport, plain)
    kinds = {line.split('"kind":"')[1].split('"')[0] for line in first.splitlines()}
    assert {
        "worker-crashed",
        "child-killed",
        "connection-lost",
        "broker-restarted",
        "shutdown",
        "revoke",
    } <= kinds


def test_different_seeds_give_different_histories_under_faults():
    """Another seed changes task ids and drawn durations, so the history differs."""
    assert scenario(11, "redis") != scenario(12, "redis")


def test_the_fault_history_round_trips_through_jsonl():
    """A history with faults reads back from JSON Lines unchanged."""
    text = scenario(3, "amqp")
    assert simq.History.from_jsonl(text).to_jsonl() == text


def test_a_faulty_run_does_not_depend_on_pythonhashseed():
    """The fault history is the same under two PYTHONHASHSEED values (no set/dict-order
    leak into crash, connection or shutdown handling), on a plain celery.Celery app."""
    code = SCRIPT + "\nimport sys\nsys.stdout.write(scenario(5, 'redis', plain=True))\n"
    outputs = []
    for hashseed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0] == scenario(5, "redis", plain=True)


def test_fault_times_as_datetimes_and_seconds_agree():
    """A fault scheduled with at=seconds and one with the equivalent datetime give the same
    history."""
    import datetime as dt

    def run(at_datetime):
        app = simq.App("shop")

        @app.task(name="shop.slow", acks_late=True)
        def slow():
            time.sleep(10)

        @app.task(name="shop.picky")
        def picky():
            raise Reject("no")

        with simq.Simulation(app, seed=1, workers=2) as sim:
            slow.delay(), picky.delay(), slow.delay()
            at = sim.now + dt.timedelta(seconds=4) if at_datetime else 4
            sim.crash_worker("worker-1", at=at, restart_after=1)
            sim.run()
            return sim.history.to_jsonl()

    assert run(True) == run(False)
