"""Transport differences: the visibility timeout of Redis and SQS (G6, with G4 and G15 of
CELERY_SEMANTICS.md §3.2) and message priorities per transport (§1.5)."""

from __future__ import annotations

import time

import pytest
from celery import states

import simq

VT5 = {"broker_transport_options": {"visibility_timeout": 5}}


def countdown_past_the_timeout(transport, simulation):
    """Two workers; a task with countdown 8 on a visibility timeout of 5 s."""
    app = simq.App("shop", **VT5)
    runs = []

    @app.task
    def later():
        runs.append(1)
        return "ran"

    sim = simulation(app, workers=2, transport=transport)
    r = later.apply_async(countdown=8)
    sim.run()
    return sim, r, runs


@pytest.mark.parametrize("transport", ["redis", "sqs"])
def test_a_countdown_longer_than_the_visibility_timeout_runs_twice(simulation, trail, transport):
    """On Redis and SQS an ETA message still unacked after the visibility timeout is
    re-queued as a copy while its first holder keeps it: it runs twice (G6, kombu #337)."""
    sim, r, runs = countdown_past_the_timeout(transport, simulation)
    assert trail(sim, r.id) == [
        "0 published m1 retries=0 eta=2030-01-01T00:00:08+00:00",
        "0 delivered m1 worker-1",
        "5 requeued m1 visibility-timeout copy",
        "5 delivered m1 worker-2 redelivered copy",
        "8 started m1 worker-1 retries=0",
        "8 acked m1",
        "8 state SUCCESS 'ran'",
        "8 succeeded m1",
        "8 started m1 worker-2 retries=0",
        "8 acked m1",
        "8 state-discarded SUCCESS",
        "8 succeeded m1",
    ]
    assert len(runs) == 2
    assert r.get() == "ran"  # the duplicate's SUCCESS is discarded (G15)
    assert sim.check() == []


def test_the_same_countdown_runs_once_on_amqp(simulation, trail):
    """RabbitMQ has no visibility timeout: the ETA message runs once (G6)."""
    sim, r, runs = countdown_past_the_timeout("amqp", simulation)
    assert trail(sim, r.id) == [
        "0 published m1 retries=0 eta=2030-01-01T00:00:08+00:00",
        "0 delivered m1 worker-1",
        "8 started m1 worker-1 retries=0",
        "8 acked m1",
        "8 state SUCCESS 'ran'",
        "8 succeeded m1",
    ]
    assert len(runs) == 1


@pytest.mark.parametrize(("transport", "runs"), [("amqp", 1), ("redis", 2), ("sqs", 2)])
def test_a_long_acks_late_task_is_duplicated_past_the_visibility_timeout(
    simulation, transport, runs
):
    """An acks_late task running longer than the visibility timeout gets a second
    execution on Redis and SQS, not on amqp (G6)."""
    app = simq.App("shop", **VT5)
    seen = []

    @app.task(bind=True, acks_late=True)
    def long(self):
        redelivered = self.request.delivery_info["redelivered"]
        seen.append(redelivered)
        time.sleep(1 if redelivered else 7)
        return "long"

    sim = simulation(app, workers=2, transport=transport)
    r = long.delay()
    assert r.get() == "long"
    sim.run()
    assert seen == [False, True][:runs]
    assert [e["state"] for e in sim.history.where(kind="state")] == [states.SUCCESS]
    assert sim.check() == []


@pytest.mark.parametrize(
    ("transport", "countdown", "runs"),
    [
        ("sqs", 1801, 2),
        ("redis", 1801, 1),
        ("redis", 3601, 2),
    ],
)
def test_default_visibility_timeouts_are_kombus(app, simulation, transport, countdown, runs):
    """Without broker_transport_options the timeout is 3600 s on Redis, 1800 s on SQS (G6)."""
    done = []

    @app.task
    def later():
        done.append(1)

    sim = simulation(app, workers=2, transport=transport)
    later.apply_async(countdown=countdown)
    sim.run()
    assert len(done) == runs


def test_amqp_ignores_a_visibility_timeout_option(simulation):
    """kombu's amqp transport has no visibility timeout, even if one is configured (G6)."""
    sim, _, runs = countdown_past_the_timeout("amqp", simulation)
    assert len(runs) == 1
    assert not sim.history.where(kind="requeued")


@pytest.mark.parametrize("transport", ["redis", "sqs"])
def test_after_a_crash_unacked_messages_return_only_after_the_visibility_timeout(
    simulation, trail, transport
):
    """On Redis and SQS a crashed worker's unacked messages come back when their visibility
    timeout runs out, not at the crash (G4, G6)."""
    app = simq.App("shop", broker_transport_options={"visibility_timeout": 60})

    @app.task(acks_late=True)
    def late():
        time.sleep(10)
        return "done"

    sim = simulation(app, workers=0, transport=transport)
    sim.add_worker("w1")
    r = late.delay()
    sim.crash_worker("w1", at=2)
    sim.add_worker("w2")
    assert r.get() == "done"
    assert trail(sim, r.id) == [
        "0 published m1 retries=0",
        "0 delivered m1 w1",
        "0 started m1 w1 retries=0",
        "2 worker-crashed w1",
        "2 worker-offline w1",
        "60 requeued m1 visibility-timeout",
        "60 delivered m1 w2 redelivered",
        "60 started m1 w2 retries=0",
        "70 state SUCCESS 'done'",
        "70 succeeded m1",
        "70 acked m1",
    ]
    assert sim.check() == []


# -- priorities -----------------------------------------------------------------------

PRIORITIES = (None, 9, 1, 5, 0, 3, 2, 7)


def start_order(transport, max_priority=None):
    """The priorities in the order a single-slot worker starts the waiting messages."""
    app = simq.App("shop", task_queue_max_priority=max_priority)

    @app.task
    def job(priority):
        return priority

    with simq.Simulation(app, workers=0, transport=transport) as sim:
        for priority in PRIORITIES:
            job.apply_async((priority,), priority=priority)
        sim.add_worker(prefetch_multiplier=1)
        sim.run()
        return [app.AsyncResult(e.task_id).result for e in sim.history.where(kind="started")]


def test_amqp_is_fifo_without_a_max_priority():
    """On RabbitMQ without x-max-priority, priorities are ignored: publish order (§1.5)."""
    assert start_order("amqp") == list(PRIORITIES)


def test_amqp_with_a_max_priority_delivers_higher_first():
    """With task_queue_max_priority, higher priority first; none counts as 0 (§1.5)."""
    assert start_order("amqp", max_priority=10) == [9, 7, 5, 3, 2, 1, None, 0]


def test_amqp_caps_priorities_at_the_queue_maximum():
    """Priorities above x-max-priority count as the maximum, in publish order (§1.5)."""
    assert start_order("amqp", max_priority=5) == [9, 5, 7, 3, 2, 1, None, 0]


def test_redis_groups_priorities_in_steps_lower_first():
    """Redis keeps lists for steps 0/3/6/9, each priority in the step at or below it, and
    serves the lower step first; none counts as 0 (kombu Channel.priority, §1.5)."""
    assert start_order("redis") == [None, 1, 0, 2, 5, 3, 7, 9]


def test_sqs_ignores_priority():
    """SQS has no priorities: publish order (§1.5)."""
    assert start_order("sqs") == list(PRIORITIES)


def test_an_unknown_transport_is_refused(app):
    """A transport other than amqp, redis, sqs or polling is an error listing the choices."""
    with pytest.raises(
        simq.SimqError, match=r"^unknown transport 'kafka'; use one of amqp, redis, sqs, polling$"
    ):
        simq.Simulation(app, transport="kafka")
