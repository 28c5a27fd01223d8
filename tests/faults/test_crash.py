"""A whole worker dies (power failure, SIGKILL of the main process): G4, with G1, G2, G13,
G16 and G18 of CELERY_SEMANTICS.md §3.2 where a crash is what exercises them."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from celery import states

import simq
from simq.exceptions import SimulationIdle, UnknownTarget


def test_crash_requeues_every_unacked_delivery_and_loses_the_running_early_ack_task(
    app, simulation, trail
):
    """A crash returns reserved, ETA-held and running acks_late messages; the running
    early-acked task is lost, stuck STARTED (§3.1 "whole worker killed", G4)."""

    @app.task(track_started=True)
    def early(i):
        time.sleep(10)
        return i

    @app.task(acks_late=True)
    def late(i):
        time.sleep(10)
        return i

    sim = simulation(app, workers=0)
    sim.add_worker("w1", concurrency=2)
    running_early, running_late = early.delay(1), late.delay(2)
    reserved, held = early.delay(3), early.apply_async((4,), countdown=100)
    sim.crash_worker("w1", at=5, restart_after=3)
    sim.run()
    assert trail(sim) == [
        "0 published m1 retries=0",
        "0 published m2 retries=0",
        "0 published m3 retries=0",
        "0 published m4 retries=0 eta=2030-01-01T00:01:40+00:00",
        "0 delivered m1 w1",
        "0 delivered m2 w1",
        "0 delivered m3 w1",
        "0 delivered m4 w1",
        "0 started m1 w1 retries=0",
        "0 acked m1",
        "0 state STARTED",
        "0 started m2 w1 retries=0",
        # amqp: the channel closes with the process, so the broker requeues at once, each
        # message to its original place.
        "5 worker-crashed w1",
        # Acked at start: nothing comes back for m1, and the history says it was lost.
        "5 lost m1 worker-crashed",
        "5 requeued m2 worker-crashed",
        "5 requeued m3 worker-crashed",
        "5 requeued m4 worker-crashed",
        "5 worker-offline w1",
        "8 worker-online w1",
        "8 delivered m2 w1 redelivered",
        "8 delivered m3 w1 redelivered",
        "8 delivered m4 w1 redelivered",
        "8 started m2 w1 retries=0",
        "8 started m3 w1 retries=0",
        "8 acked m3",
        "8 state STARTED",
        "18 state SUCCESS 2",
        "18 succeeded m2",
        "18 acked m2",
        "18 state SUCCESS 3",
        "18 succeeded m3",
        "100 started m4 w1 retries=0",
        "100 acked m4",
        "100 state STARTED",
        "110 state SUCCESS 4",
        "110 succeeded m4",
    ]
    assert running_early.state == states.STARTED
    assert [r.state for r in (running_late, reserved, held)] == [states.SUCCESS] * 3
    assert sim.check() == []


def test_the_crashed_task_keeps_its_side_effects_up_to_the_crash_and_no_more(app, simulation):
    """Side effects made before the crash stay; the code after the crash point never runs,
    not even a finally block (G4)."""
    effects = []

    @app.task
    def pay(order):
        effects.append(("charged", order))
        try:
            time.sleep(10)
            effects.append(("receipt", order))
        finally:
            effects.append(("cleanup", order))

    sim = simulation(app)
    r = pay.delay(7)
    sim.crash_worker("worker-1", at=4)
    sim.run()
    assert effects == [("charged", 7)]
    with pytest.raises(SimulationIdle, match=rf"^task {r.id} can never become ready: .*PENDING"):
        r.get()


def test_a_custom_state_stays_forever_after_the_crash(app, simulation):
    """An early-acked task that stored PROGRESS and then lost its worker stays PROGRESS (G4)."""

    @app.task(bind=True)
    def report(self):
        self.update_state(state="PROGRESS", meta={"done": 50})
        time.sleep(10)
        return "done"

    sim = simulation(app)
    r = report.delay()
    sim.crash_worker("worker-1", at=1, restart_after=1)
    sim.run()
    assert r.state == "PROGRESS"
    assert r.info == {"done": 50}
    assert len(sim.history.where(kind="started")) == 1


def test_acks_late_task_runs_again_after_a_crash_with_the_same_retries(app, simulation):
    """A running acks_late task is redelivered, flagged, and runs again with the same
    request.retries (G2, G4, G18)."""
    seen = []

    @app.task(bind=True, acks_late=True, max_retries=3)
    def work(self):
        seen.append((self.request.retries, self.request.delivery_info["redelivered"]))
        if self.request.retries == 0:
            raise self.retry(countdown=1)
        time.sleep(10)
        return "ok"

    sim = simulation(app, workers=2)
    r = work.delay()
    sim.advance(5)
    holder = sim.history.where(kind="started", retries=1).last().worker
    sim.crash_worker(holder)
    assert r.get() == "ok"
    assert seen == [(0, False), (1, False), (1, True)]
    retry_message = sim.history.where(kind="published", retries=1).last().message_id
    assert [
        (e.worker, e["redelivered"])
        for e in sim.history.where(kind="delivered", message_id=retry_message)
    ] == [(holder, False), ("worker-2" if holder == "worker-1" else "worker-1", True)]
    assert sim.check() == []


def test_a_reserved_message_goes_to_another_worker_when_its_holder_crashes(app, simulation):
    """A message delivered but not started when its worker dies is delivered to a live
    worker, because early ack happens only at the start (G1)."""

    @app.task
    def hold():
        time.sleep(10)

    @app.task
    def waiting():
        return "ran"

    sim = simulation(app, workers=0)
    sim.add_worker("w1")
    hold.delay()
    r = waiting.delay()
    sim.add_worker("w2", queues=["elsewhere"])
    sim.advance(1)
    sim.add_worker("w3")
    sim.crash_worker("w1")
    assert r.get() == "ran"
    deliveries = sim.history.where(kind="delivered", task_id=r.id)
    assert [(e.worker, e["redelivered"]) for e in deliveries] == [("w1", False), ("w3", True)]
    assert [e.worker for e in sim.history.where(kind="started", task_id=r.id)] == ["w3"]


def test_a_crash_between_retry_publish_and_ack_leaves_two_live_messages(app, simulation):
    """An acks_late task that sent its retry (throw=False) and dies before its ack runs
    twice more: the redelivered original and the retry (G13)."""
    seen = []

    @app.task(bind=True, acks_late=True)
    def sync(self):
        seen.append(self.request.retries)
        if self.request.retries == 0 and len(seen) == 1:
            self.retry(countdown=30, throw=False)
            time.sleep(10)  # the crash lands here: retry published, original unacked
        return self.request.retries

    sim = simulation(app)
    r = sync.delay()
    sim.crash_worker("worker-1", at=5, restart_after=1)
    sim.run()
    assert sorted(seen) == [0, 0, 1]
    published = sim.history.where(kind="published", task_id=r.id)
    assert [e["retries"] for e in published] == [0, 1]
    original = published[0].message_id
    assert [e.kind for e in sim.history.where(message_id=original)] == [
        "published",
        "delivered",
        "started",
        "requeued",
        "delivered",
        "started",
        "succeeded",
        "acked",
    ]
    assert [e["state"] for e in sim.history.where(kind="state", task_id=r.id)] == [states.SUCCESS]
    assert len(sim.history.where(kind="state-discarded", task_id=r.id)) == 1
    assert sim.check() == []


def test_a_redelivered_eta_message_still_waits_for_its_eta(app, simulation):
    """An ETA-held message requeued by a crash does not start before its ETA (G16)."""

    @app.task
    def later():
        return "on time"

    sim = simulation(app, workers=2)
    r = later.apply_async(countdown=60)
    sim.advance(0)  # the broker delivers in its own step, after the publish returns
    holder = sim.history.where(kind="delivered", task_id=r.id).last().worker
    sim.crash_worker(holder, at=10)
    assert r.get() == "on time"
    assert [e.time - sim.started_at for e in sim.history.where(kind="delivered")] == [0, 10]
    assert sim.history.where(kind="started").last().time - sim.started_at == 60
    assert sim.check() == []


def test_the_restarted_worker_is_empty_and_takes_new_work(app, simulation, trail):
    """restart_after brings back an empty worker of the same name that consumes again (G4)."""

    @app.task
    def ping():
        return "pong"

    sim = simulation(app)
    sim.crash_worker("worker-1", restart_after=30)
    r = ping.delay()
    assert r.get() == "pong"
    assert trail(sim, r.id) == [
        "0 worker-crashed worker-1",
        "0 worker-offline worker-1",
        "0 published m1 retries=0",
        "30 worker-online worker-1",
        "30 delivered m1 worker-1",
        "30 started m1 worker-1 retries=0",
        "30 acked m1",
        "30 state SUCCESS 'pong'",
        "30 succeeded m1",
    ]


def test_crashing_a_dead_worker_again_does_nothing(app, simulation):
    """A second crash of a worker that is already down records nothing (G4)."""
    sim = simulation(app)
    sim.crash_worker("worker-1")
    sim.crash_worker("worker-1", at=1)
    sim.run()
    assert sim.history.kinds().count("worker-crashed") == 1


def test_a_crash_at_a_datetime_happens_then(app, simulation):
    """at= may be an aware datetime; the fault happens at that virtual instant."""
    sim = simulation(app)
    sim.crash_worker("worker-1", at=sim.now + dt.timedelta(minutes=2))
    sim.run()
    assert sim.history.where(kind="worker-crashed").first().time - sim.started_at == 120


def test_crashing_an_unknown_worker_names_the_workers_that_exist(app, simulation):
    """A crash aimed at a worker that does not exist is an UnknownTarget listing the workers."""
    sim = simulation(app, workers=2)
    with pytest.raises(
        UnknownTarget, match=r"^no worker named 'w9'; workers: 'worker-1', 'worker-2'$"
    ):
        sim.crash_worker("w9", at=5)
    assert not sim.history.where(kind="worker-crashed")


def test_a_crash_is_rejected_at_a_naive_datetime(app, simulation):
    """A naive datetime for at= is a ValueError that says how to fix it."""
    sim = simulation(app)
    with pytest.raises(
        ValueError,
        match=r"^crash_worker\(\): at must be seconds from now \(a number >= 0\), a "
        r"timezone-aware datetime, or None, got datetime\.datetime\(2030, 1, 1, 0, 0\); "
        r"add a timezone, e\.g\. tzinfo=datetime\.timezone\.utc$",
    ):
        sim.crash_worker("worker-1", at=dt.datetime(2030, 1, 1))


def test_crash_without_workers_left_is_explained(simulation):
    """After the only worker crashed, a waiting result explains the message waits (G4)."""
    app = simq.App("shop")

    @app.task
    def ping():
        return "pong"

    sim = simulation(app)
    sim.crash_worker("worker-1")
    r = ping.delay()
    with pytest.raises(SimulationIdle, match=r"^task .* its message waits in queue 'celery'"):
        r.get()


def test_a_message_requeued_by_a_dead_child_still_goes_back_at_a_crash(app, simulation):
    """A message requeued by reject_on_worker_lost and reserved again on the same worker is
    requeued when that worker crashes, never lost silently (G3, G4)."""

    @app.task(acks_late=True, reject_on_worker_lost=True)
    def charge():
        time.sleep(5)
        return "charged"

    @app.task
    def other():
        time.sleep(5)

    sim = simulation(app, workers=0)
    r = charge.delay()
    other.delay()
    sim.add_worker("w1")
    sim.kill_child(r.id, at=1)
    sim.crash_worker("w1", at=2)
    sim.add_worker("w2")
    assert r.get() == "charged"
    assert [e.kind for e in sim.history.where(task_id=r.id, worker="w1")] == [
        "delivered",
        "started",
        "child-killed",
        "child-lost",
        "rejected",
        "delivered",
        "requeued",
    ]
    assert sim.check() == []
