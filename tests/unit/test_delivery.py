"""Delivery on simulated workers: ETA, expiry, priorities, routing, concurrency, prefetch (§3.2)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import celery
import pytest
from celery import states
from celery.exceptions import TaskRevokedError

import simq
from simq.exceptions import SimulationIdle

# Events that end a worker's hold on a delivered message (its attempt is over).
_RELEASES = frozenset(
    {
        "succeeded",
        "failed",
        "retried",
        "ignored",
        "declined",
        "child-lost",
        "revoked",
        "rejected",
        "unregistered",
    }
)


@pytest.fixture
def app() -> celery.Celery:
    return simq.App("shop")


@pytest.fixture
def tasks(app: celery.Celery) -> Any:
    """``sleepy(seconds)`` sleeps in virtual time; ``quick(x)`` returns x."""

    class Tasks:
        @app.task(shared=False, name="shop.sleepy")
        def sleepy(seconds):
            time.sleep(seconds)
            return seconds

        @app.task(shared=False, name="shop.quick")
        def quick(x=None):
            return x

        @app.task(shared=False, name="shop.late", acks_late=True)
        def late(seconds):
            time.sleep(seconds)

    return Tasks


def offsets(sim: simq.Simulation, **criteria: Any) -> list[float]:
    """Virtual seconds since the start of each event matching ``criteria``."""
    return [e.time - sim.started_at for e in sim.history.where(**criteria)]


def peaks(sim: simq.Simulation, worker: str) -> dict[str, int]:
    """Most messages ``worker`` held at once: unacked non-ETA, unacked ETA, and held at all.

    "Held" counts a message from its delivery until its attempt is over, so an executing
    early-acked message counts although it is no longer unacked.
    """
    eta = {e.message_id for e in sim.history.where(kind="published") if e["eta"] is not None}
    unacked: set[str] = set()
    held: set[str] = set()
    best = {"unacked": 0, "unacked_eta": 0, "held": 0}
    for event in sim.history.where(worker=worker):
        mid = event.message_id
        if event.kind == "delivered":
            unacked.add(mid)
            held.add(mid)
        elif event.kind in ("acked", "rejected"):
            unacked.discard(mid)
        if event.kind in _RELEASES:
            held.discard(mid)
        best["unacked"] = max(best["unacked"], len(unacked - eta))
        best["unacked_eta"] = max(best["unacked_eta"], len(unacked & eta))
        best["held"] = max(best["held"], len(held))
    return best


# -- ETA and countdown ---------------------------------------------------------------


def test_countdown_task_starts_at_its_eta_and_is_pending_before(app, simulation, tasks):
    """A countdown task is PENDING until its ETA and starts at, not before, it (G16)."""
    sim = simulation(app)
    r = tasks.quick.apply_async((1,), countdown=30)
    sim.advance(29.5)
    assert r.state == states.PENDING
    assert not sim.history.where(kind="started")
    assert r.get() == 1
    assert offsets(sim, kind="delivered") == [0.0]
    assert offsets(sim, kind="started") == [30.0]


def test_eta_datetime_is_a_lower_bound(app, simulation, tasks):
    """A task with an explicit eta datetime starts at that time (G16)."""
    sim = simulation(app)
    eta = sim.now + dt.timedelta(minutes=5)
    r = tasks.quick.apply_async((1,), eta=eta)
    r.get()
    started = sim.history.where(kind="started").first()
    assert started.at == eta


def test_eta_messages_are_held_outside_the_prefetch_window(app, simulation, tasks):
    """A c=1, multiplier=1 worker holds many ETA messages but one unacked plain message (G5)."""
    sim = simulation(app, prefetch_multiplier=1)
    for _ in range(5):
        tasks.quick.apply_async(countdown=60)
    for _ in range(3):
        tasks.sleepy.delay(10)
    sim.run()
    assert offsets(sim, kind="delivered")[:7] == [0.0] * 7
    assert peaks(sim, "worker-1") == {"unacked": 1, "unacked_eta": 5, "held": 7}
    eta_starts = [
        e.time - sim.started_at
        for e in sim.history.where(kind="started")
        if e["task"] == "shop.quick"
    ]
    assert eta_starts == [60.0] * 5


def test_eta_task_is_not_acked_until_it_starts(app, simulation, tasks):
    """An early-ack ETA message stays unacked while it waits for its ETA (G1, G5)."""
    sim = simulation(app)
    r = tasks.quick.apply_async(countdown=20)
    r.get()
    assert offsets(sim, kind="acked", task_id=r.id) == [20.0]


# -- expiry --------------------------------------------------------------------------


def test_reserved_task_that_expires_while_waiting_is_revoked_before_start(app, simulation, tasks):
    """Expiry is checked before start: a task reserved behind a long one expires unstarted (G9)."""
    sim = simulation(app)
    tasks.sleepy.delay(10)
    r = tasks.quick.apply_async(expires=5)
    with pytest.raises(TaskRevokedError, match=r"^expired$"):
        r.get()
    assert offsets(sim, kind="delivered", task_id=r.id) == [0.0]
    assert offsets(sim, kind="revoked", task_id=r.id) == [10.0]
    assert not sim.history.where(kind="started", task_id=r.id)
    assert sim.history.where(kind="acked", task_id=r.id).first()
    assert r.state == states.REVOKED


def test_eta_past_the_expiry_is_revoked_when_the_eta_fires(app, simulation, tasks):
    """A countdown beyond expires makes the message REVOKED 'expired' at its ETA (G9)."""
    sim = simulation(app)
    r = tasks.quick.apply_async(countdown=20, expires=10)
    with pytest.raises(TaskRevokedError):
        r.get()
    assert offsets(sim, kind="revoked", task_id=r.id, reason="expired") == [20.0]
    assert not sim.history.where(kind="started")


def test_unexpired_task_runs(app, simulation, tasks):
    """A task that starts before its expiry runs normally (G9)."""
    simulation(app)
    assert tasks.quick.apply_async((3,), expires=5).get() == 3


# -- priorities ----------------------------------------------------------------------


def start_order(sim: simq.Simulation) -> list[Any]:
    return [e["result"] for e in sim.history.where(kind="state", state=states.SUCCESS)]


def test_queue_is_fifo_by_default(app, simulation, tasks):
    """Without task_queue_max_priority messages are delivered in publish order (§1.5 priority)."""
    sim = simulation(app, workers=0)
    for priority in (1, 9, 5, 0):
        tasks.quick.apply_async((priority,), priority=priority)
    sim.add_worker(prefetch_multiplier=1)
    sim.run()
    assert start_order(sim) == [1, 9, 5, 0]


def test_max_priority_queue_delivers_higher_priority_first(simulation):
    """With task_queue_max_priority=10, higher priority leaves a waiting queue first (RabbitMQ)."""
    app = simq.App("shop", task_queue_max_priority=10)

    @app.task(shared=False)
    def quick(x):
        return x

    sim = simulation(app, workers=0)
    for priority in (1, 9, None, 5, 9):
        quick.apply_async((priority,), priority=priority)
    sim.add_worker(prefetch_multiplier=1)
    sim.run()
    assert start_order(sim) == [9, 9, 5, 1, None]


# -- routing -------------------------------------------------------------------------


def test_message_for_an_unconsumed_queue_waits_there(app, simulation, tasks):
    """A queue no worker consumes keeps its message; get() says which queue and how to fix it."""
    sim = simulation(app)
    r = tasks.quick.apply_async((1,), queue="q2")
    message = (
        rf"^task {r.id} can never become ready: the simulation is idle and it is PENDING; "
        r"its message waits in queue 'q2', which no worker consumes: "
        r"call sim\.add_worker\(queues=\['q2'\]\)$"
    )
    with pytest.raises(SimulationIdle, match=message):
        r.get()
    assert not sim.history.where(kind="delivered")
    sim.add_worker(queues=["q2"])
    assert r.get() == 1
    assert sim.history.where(kind="delivered").first().worker == "worker-2"


def test_simulation_without_workers_says_so(app, simulation, tasks):
    """With no worker at all, get() explains that the simulation has no workers."""
    simulation(app, workers=0)
    r = tasks.quick.delay()
    message = (
        rf"^task {r.id} can never become ready: the simulation is idle and it is PENDING; "
        r"its message waits in queue 'celery' and the simulation has no workers: "
        r"pass workers=1 or call sim\.add_worker\(\)$"
    )
    with pytest.raises(SimulationIdle, match=message):
        r.get()


def test_task_routes_send_to_the_worker_of_that_queue(simulation):
    """task_routes direct a task to a queue only its dedicated worker consumes."""
    app = simq.App("shop", task_routes={"shop.report": {"queue": "reports"}})

    @app.task(shared=False, name="shop.report")
    def report():
        return "done"

    sim = simulation(app)
    sim.add_worker(name="reporter", queues=["reports"])
    assert report.delay().get() == "done"
    assert sim.history.where(kind="started").first().worker == "reporter"


def test_two_workers_share_a_queue_round_robin(app, simulation, tasks):
    """Two workers consuming one queue receive its messages in turn."""
    sim = simulation(app, workers=2)
    results = [tasks.quick.delay(i) for i in range(6)]
    assert [r.get() for r in results] == list(range(6))
    assert [e.worker for e in sim.history.where(kind="delivered")] == ["worker-1", "worker-2"] * 3


# -- virtual sleep and concurrency ---------------------------------------------------


def test_sleeps_overlap_on_two_child_slots(app, simulation, tasks):
    """With concurrency 2, two 10 s sleeps both finish at +10, not +20."""
    sim = simulation(app, concurrency=2)
    results = [tasks.sleepy.delay(10) for _ in range(2)]
    assert [r.get() for r in results] == [10, 10]
    assert offsets(sim, kind="succeeded") == [10.0, 10.0]


def test_sleeps_overlap_on_two_workers(app, simulation, tasks):
    """Two single-slot workers run two 10 s sleeps side by side."""
    sim = simulation(app, workers=2)
    results = [tasks.sleepy.delay(10) for _ in range(2)]
    [r.get() for r in results]
    assert offsets(sim, kind="succeeded") == [10.0, 10.0]
    assert {e.worker for e in sim.history.where(kind="succeeded")} == {"worker-1", "worker-2"}


def test_one_slot_runs_sleeps_one_after_another(app, simulation, tasks):
    """With one slot the second 10 s sleep starts when the first ends."""
    sim = simulation(app)
    results = [tasks.sleepy.delay(10) for _ in range(2)]
    [r.get() for r in results]
    assert offsets(sim, kind="started") == [0.0, 10.0]
    assert offsets(sim, kind="succeeded") == [10.0, 20.0]
    assert sim.elapsed == 20.0


def test_sleep_in_test_code_advances_the_simulation(app, simulation, tasks):
    """time.sleep() outside any task moves the whole simulation forward."""
    sim = simulation(app)
    r = tasks.sleepy.delay(10)
    time.sleep(4)
    assert sim.elapsed == 4.0
    assert r.state == states.PENDING
    time.sleep(6)
    assert r.state == states.SUCCESS


# -- prefetch window -----------------------------------------------------------------


def test_early_ack_window_holds_one_running_and_one_reserved(app, simulation, tasks):
    """c=1, multiplier=1, early ack: one executing (acked) and one reserved message at most (G5)."""
    sim = simulation(app, prefetch_multiplier=1)
    for _ in range(5):
        tasks.sleepy.delay(10)
    sim.run()
    assert peaks(sim, "worker-1") == {"unacked": 1, "unacked_eta": 0, "held": 2}
    # Each message arrives when the one before it starts (and is acked).
    assert offsets(sim, kind="delivered") == [0.0, 0.0, 10.0, 20.0, 30.0]


def test_late_ack_window_holds_one_message(app, simulation, tasks):
    """c=1, multiplier=1, acks_late: the next message arrives only after the ack (G5)."""
    sim = simulation(app, prefetch_multiplier=1)
    for _ in range(4):
        tasks.late.delay(10)
    sim.run()
    assert peaks(sim, "worker-1") == {"unacked": 1, "unacked_eta": 0, "held": 1}
    assert offsets(sim, kind="delivered") == [0.0, 10.0, 20.0, 30.0]


def test_window_is_concurrency_times_multiplier(app, simulation, tasks):
    """The prefetch window is concurrency x multiplier unacked messages (G5)."""
    sim = simulation(app, workers=0)
    sim.add_worker(concurrency=2, prefetch_multiplier=3)
    for _ in range(20):
        tasks.late.delay(5)
    sim.run()
    assert peaks(sim, "worker-1")["unacked"] == 6
    assert offsets(sim, kind="delivered")[:7] == [0.0] * 6 + [5.0]


def test_multiplier_zero_is_unlimited(app, simulation, tasks):
    """worker_prefetch_multiplier 0 lets a worker take every waiting message at once (G5)."""
    sim = simulation(app, prefetch_multiplier=0)
    for _ in range(12):
        tasks.late.delay(1)
    sim.run()
    assert offsets(sim, kind="delivered") == [0.0] * 12
    assert peaks(sim, "worker-1")["unacked"] == 12


def test_default_multiplier_is_four(app, simulation, tasks):
    """Without options a c=1 worker holds four unacked messages (worker_prefetch_multiplier=4)."""
    sim = simulation(app)
    for _ in range(10):
        tasks.late.delay(1)
    sim.run()
    assert peaks(sim, "worker-1")["unacked"] == 4
