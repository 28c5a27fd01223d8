"""A worker loses its broker connection, or the broker restarts (G7 of
CELERY_SEMANTICS.md §3.2 and the "broker connection lost" row of §3.1)."""

from __future__ import annotations

import time

import pytest
from celery import states

import simq
from simq.exceptions import SimulationIdle, UnknownTarget

CANCELLED = "Retry('Retry(Retry(...), None, None)', None, None)"


def mixed_load(app):
    """A running acks_late task, a running early-ack one, a reserved and an ETA-held one."""
    effects = []

    @app.task(acks_late=True)
    def late(i):
        effects.append(("begin", i))
        time.sleep(10)
        effects.append(("end", i))
        return i

    @app.task
    def early(i):
        effects.append(("begin", i))
        time.sleep(10)
        effects.append(("end", i))
        return i

    return late, early, effects


def test_connection_loss_requeues_unacked_messages_and_the_late_ack_fails(simulation, trail):
    """On a lost connection every unacked message goes back; reserved and ETA-held ones
    never start from the old delivery; the running acks_late task finishes, its ack
    fails and its requeued copy runs again; the early-acked one just finishes (G7)."""
    app = simq.App("shop")
    late, early, effects = mixed_load(app)
    sim = simulation(app, workers=0)
    sim.add_worker("w1", concurrency=2)
    late.delay(1), early.delay(2), early.delay(3), early.apply_async((4,), countdown=3)
    sim.lose_connection("w1", at=2, reconnect_after=5)
    sim.run()
    assert trail(sim)[8:] == [
        "0 started m1 w1 retries=0",
        "0 started m2 w1 retries=0",
        "0 acked m2",
        "2 connection-lost w1",
        "2 requeued m1 connection-lost",
        "2 requeued m3 connection-lost",
        "2 requeued m4 connection-lost",
        "7 connection-restored w1",
        "7 delivered m1 w1 redelivered",
        "7 delivered m3 w1 redelivered",
        "7 delivered m4 w1 redelivered",
        "10 state SUCCESS 1",
        "10 succeeded m1",
        "10 ack-failed m1",
        "10 started m1 w1 retries=0",
        "10 state SUCCESS 2",
        "10 succeeded m2",
        "10 started m3 w1 retries=0",
        "10 acked m3",
        "20 state-discarded SUCCESS",
        "20 succeeded m1",
        "20 acked m1",
        "20 started m4 w1 retries=0",
        "20 acked m4",
        "20 state SUCCESS 3",
        "20 succeeded m3",
        "30 state SUCCESS 4",
        "30 succeeded m4",
    ]
    assert effects.count(("begin", 1)) == 2
    assert sim.check() == []


def test_cancel_on_connection_loss_interrupts_acks_late_tasks_with_retry(simulation, trail):
    """worker_cancel_long_running_tasks_on_connection_loss cancels running unacked
    acks_late tasks: 'cancelled', RETRY('cancelled by Celery'); the message is redelivered
    and runs again; the early-acked task is left alone (G7)."""
    app = simq.App("shop", worker_cancel_long_running_tasks_on_connection_loss=True)
    late, early, effects = mixed_load(app)
    sim = simulation(app, workers=0)
    sim.add_worker("w1", concurrency=2)
    r = late.delay(1)
    early.delay(2)
    sim.lose_connection("w1", at=2, reconnect_after=5)
    sim.run()
    assert trail(sim, r.id) == [
        "0 published m1 retries=0",
        "0 delivered m1 w1",
        "0 started m1 w1 retries=0",
        "2 connection-lost w1",
        "2 requeued m1 connection-lost",
        "2 cancelled m1 connection-lost",
        f"2 state RETRY {CANCELLED}",
        "7 connection-restored w1",
        "7 delivered m1 w1 redelivered",
        "7 started m1 w1 retries=0",
        "17 state SUCCESS 1",
        "17 succeeded m1",
        "17 acked m1",
    ]
    assert effects == [("begin", 1), ("begin", 2), ("begin", 1), ("end", 2), ("end", 1)]
    assert sim.check() == []


def test_the_requeued_copy_may_run_elsewhere_while_the_first_still_runs(app, simulation):
    """After a connection loss the requeued acks_late message runs on another worker while
    the disconnected one is still running it: a duplicate execution (G7)."""
    late, _, effects = mixed_load(app)
    sim = simulation(app, workers=0)
    sim.add_worker("w1")
    r = late.delay(1)
    sim.add_worker("w2")
    sim.lose_connection("w1", at=2, reconnect_after=60)
    assert r.get() == 1
    sim.run()
    starts = sim.history.where(kind="started", task_id=r.id)
    assert [(e.worker, e.time - sim.started_at) for e in starts] == [("w1", 0), ("w2", 2)]
    assert effects == [("begin", 1), ("begin", 1), ("end", 1), ("end", 1)]
    assert [e.kind for e in sim.history.where(task_id=r.id, kind=["acked", "ack-failed"])] == [
        "ack-failed",
        "acked",
    ]
    assert sim.check() == []


def test_an_eta_message_held_by_a_disconnected_worker_never_fires_there(app, simulation):
    """The ETA timer of the lost channel is dropped: the task starts once, from the new
    delivery, at its ETA (G7, G16)."""

    @app.task
    def later():
        return "on time"

    sim = simulation(app)
    r = later.apply_async(countdown=30)
    sim.lose_connection("worker-1", at=10, reconnect_after=5)
    assert r.get() == "on time"
    deliveries = sim.history.where(kind="delivered", task_id=r.id)
    starts = sim.history.where(kind="started", task_id=r.id)
    assert [e.time - sim.started_at for e in deliveries] == [0, 15]
    assert [(e.message_id, e.time - sim.started_at) for e in starts] == [("m1", 30)]


def test_losing_a_lost_connection_again_does_nothing(app, simulation):
    """A second connection loss while disconnected records nothing (G7)."""
    sim = simulation(app)
    sim.lose_connection("worker-1", reconnect_after=10)
    sim.lose_connection("worker-1", at=1)
    sim.run()
    assert sim.history.kinds().count("connection-lost") == 1
    assert sim.history.kinds().count("connection-restored") == 1


def test_losing_the_connection_of_an_unknown_worker_names_the_workers(app, simulation):
    """A connection loss aimed at a worker that does not exist is an UnknownTarget."""
    sim = simulation(app)
    with pytest.raises(UnknownTarget, match=r"^no worker named 'w2'; workers: 'worker-1'$"):
        sim.lose_connection("w2")


def test_a_negative_reconnect_delay_is_refused(app, simulation):
    """reconnect_after must be >= 0; the error says what was given."""
    sim = simulation(app)
    with pytest.raises(
        ValueError,
        match=r"^lose_connection\(\): reconnect_after must be a number of seconds >= 0, got -1$",
    ):
        sim.lose_connection("worker-1", reconnect_after=-1)


# -- broker restart ----------------------------------------------------------------


def three_late_tasks(transport, simulation):
    app = simq.App("shop", broker_transport_options={"visibility_timeout": 60})

    @app.task(acks_late=True)
    def late(i):
        time.sleep(10)
        return i

    sim = simulation(app, workers=0, transport=transport)
    sim.add_worker("w1", prefetch_multiplier=2)
    results = [late.delay(i) for i in range(3)]
    sim.restart_broker(at=2, down_for=1)
    return sim, results


HEAD = [
    "0 published m1 retries=0",
    "0 published m2 retries=0",
    "0 published m3 retries=0",
    "0 delivered m1 w1",
    "0 delivered m2 w1",
    "0 started m1 w1 retries=0",
    "2 connection-lost w1",
]


def test_amqp_restart_keeps_queued_and_unacked_messages(simulation, trail):
    """On amqp a restart closes every channel: unacked messages are requeued, durable
    queues keep theirs, and everything runs (G7)."""
    sim, results = three_late_tasks("amqp", simulation)
    sim.run()
    assert trail(sim) == [
        *HEAD,
        "2 requeued m1 broker-restart",
        "2 requeued m2 broker-restart",
        "2 broker-restarted lost=0",
        "3 connection-restored w1",
        "3 delivered m1 w1 redelivered",
        "3 delivered m2 w1 redelivered",
        "10 state SUCCESS 0",
        "10 succeeded m1",
        "10 ack-failed m1",
        "10 started m1 w1 retries=0",
        "20 state-discarded SUCCESS",
        "20 succeeded m1",
        "20 acked m1",
        "20 delivered m3 w1",
        "20 started m2 w1 retries=0",
        "30 state SUCCESS 1",
        "30 succeeded m2",
        "30 acked m2",
        "30 started m3 w1 retries=0",
        "40 state SUCCESS 2",
        "40 succeeded m3",
        "40 acked m3",
    ]
    assert [r.state for r in results] == [states.SUCCESS] * 3
    assert sim.check() == []


def test_redis_restart_loses_queued_and_unacked_messages_visibly(simulation, trail):
    """This Redis keeps nothing on disk: queued and unacked messages are lost, each as a
    'lost' event; the running task's result still lands (G7)."""
    sim, results = three_late_tasks("redis", simulation)
    sim.run()
    assert trail(sim) == [
        *HEAD,
        "2 lost m3 broker-restart",
        "2 lost m1 broker-restart",
        "2 lost m2 broker-restart",
        "2 broker-restarted lost=3",
        "3 connection-restored w1",
        "10 state SUCCESS 0",
        "10 succeeded m1",
        "10 ack-failed m1",
    ]
    assert [r.state for r in results] == [states.SUCCESS, states.PENDING, states.PENDING]
    with pytest.raises(SimulationIdle, match=r"^task .* can never become ready: .*'lost'"):
        results[1].get()
    assert sim.check() == []


def test_sqs_restart_keeps_messages_and_in_flight_ones_return_after_the_timeout(simulation, trail):
    """On SQS queued messages survive and in-flight ones come back only when their
    visibility timeout runs out (G6, G7)."""
    sim, results = three_late_tasks("sqs", simulation)
    sim.run()
    assert trail(sim) == [
        *HEAD,
        "2 broker-restarted lost=0",
        "3 connection-restored w1",
        "3 delivered m3 w1",
        "10 state SUCCESS 0",
        "10 succeeded m1",
        "10 ack-failed m1",
        "10 started m3 w1 retries=0",
        "20 state SUCCESS 2",
        "20 succeeded m3",
        "20 acked m3",
        "60 requeued m1 visibility-timeout",
        "60 requeued m2 visibility-timeout",
        "60 delivered m1 w1 redelivered",
        "60 delivered m2 w1 redelivered",
        "60 started m1 w1 retries=0",
        "70 state-discarded SUCCESS",
        "70 succeeded m1",
        "70 acked m1",
        "70 started m2 w1 retries=0",
        "80 state SUCCESS 1",
        "80 succeeded m2",
        "80 acked m2",
    ]
    assert [r.state for r in results] == [states.SUCCESS] * 3
    assert sim.check() == []


def test_a_restart_drops_every_workers_connection(app, simulation):
    """Each online worker records a connection loss and a reconnection (G7)."""
    sim = simulation(app, workers=3)
    sim.restart_broker(down_for=2)
    sim.run()
    lost = sim.history.where(kind="connection-lost")
    restored = sim.history.where(kind="connection-restored")
    assert [e.worker for e in lost] == ["worker-1", "worker-2", "worker-3"]
    assert [(e.worker, e.time - sim.started_at) for e in restored] == [
        ("worker-1", 2),
        ("worker-2", 2),
        ("worker-3", 2),
    ]


def test_a_restarting_broker_delivers_nothing_until_a_worker_reconnects(app, simulation):
    """While the broker restarts no worker is sent anything: the requeued message is
    delivered only after the reconnection (G7)."""

    @app.task(acks_late=True)
    def late():
        time.sleep(10)

    sim = simulation(app, workers=3)
    r = late.delay()
    sim.restart_broker(at=2, down_for=1)
    sim.run()
    deliveries = sim.history.where(kind="delivered", task_id=r.id)
    assert [(e.time - sim.started_at, e["redelivered"]) for e in deliveries] == [
        (0, False),
        (3, True),
    ]


def test_the_prefetch_window_holds_after_a_reconnection(app, simulation):
    """After a reconnection a c=1, multiplier=1 worker holds at most one unacked message
    at a time (G5, G7)."""

    @app.task
    def job():
        time.sleep(3)

    sim = simulation(app, workers=0)
    sim.add_worker("w1", prefetch_multiplier=1)
    for _ in range(5):
        job.delay()
    sim.lose_connection("w1", at=4, reconnect_after=1)
    sim.run()
    held = peak = 0
    restored = sim.history.where(kind="connection-restored").first().time
    for event in sim.history.where(worker="w1"):
        if event.time < restored:
            continue
        held += {"delivered": 1, "acked": -1, "rejected": -1}.get(event.kind, 0)
        peak = max(peak, held)
    assert peak == 1
    assert len(sim.history.where(kind="succeeded")) == 5
    assert sim.check() == []


def test_deduplication_skips_the_redelivered_copy_of_a_succeeded_task(simulation, trail):
    """With worker_deduplicate_successful_tasks the copy requeued by a connection loss,
    started after the first run stored SUCCESS, does not run the body again (G14)."""
    app = simq.App("shop", worker_deduplicate_successful_tasks=True)
    runs = []

    @app.task(acks_late=True)
    def late():
        runs.append(1)
        time.sleep(10)
        return "once"

    sim = simulation(app, workers=0)
    sim.add_worker("w1")
    r = late.delay()
    sim.lose_connection("w1", at=2, reconnect_after=1)
    sim.run()
    assert trail(sim, r.id)[6:] == [
        "3 delivered m1 w1 redelivered",
        "10 state SUCCESS 'once'",
        "10 succeeded m1",
        "10 ack-failed m1",
        "10 started m1 w1 retries=0",
        "10 succeeded m1",
        "10 acked m1",
    ]
    assert runs == [1]
    assert sim.check() == []
