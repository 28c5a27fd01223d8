"""Warm and cold worker shutdown (G17 of CELERY_SEMANTICS.md §3.2)."""

from __future__ import annotations

import time

import celery
import pytest
from celery import states

from simq.exceptions import SimulationIdle, UnknownTarget

CANCELLED = "Retry('Retry(Retry(...), None, None)', None, None)"
CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)


def load(app, simulation, warm):
    """w1 (c=2) runs an acks_late task (10.5 s) and an early one (10 s), holds a reserved
    and an ETA message; it shuts down at +2; w3 comes up at +5 to take what went back."""
    effects = []

    @app.task(acks_late=True)
    def late(i):
        effects.append(("begin", i))
        time.sleep(10.5)
        effects.append(("end", i))
        return i

    @app.task
    def early(i):
        effects.append(("begin", i))
        time.sleep(10)
        effects.append(("end", i))
        return i

    sim = simulation(app, workers=0)
    sim.add_worker("w1", concurrency=2)
    results = [late.delay(1), early.delay(2), early.delay(3), early.apply_async((4,), countdown=3)]
    sim.shutdown_worker("w1", at=2, warm=warm)
    sim.advance(5)
    sim.add_worker("w3", concurrency=2)
    sim.run()
    return sim, results, effects


HEAD = [
    "0 published m1 retries=0",
    "0 published m2 retries=0",
    "0 published m3 retries=0",
    "0 published m4 retries=0 eta=2030-01-01T00:00:03+00:00",
    "0 delivered m1 w1",
    "0 delivered m2 w1",
    "0 delivered m3 w1",
    "0 delivered m4 w1",
    "0 started m1 w1 retries=0",
    "0 started m2 w1 retries=0",
    "0 acked m2",
]


def test_warm_shutdown_returns_unstarted_messages_and_finishes_running_tasks(
    app, simulation, trail
):
    """Warm: reserved and ETA-held messages go back at once, running tasks finish and are
    acked, then the worker goes offline (G17)."""
    sim, results, effects = load(app, simulation, warm=True)
    history = trail(sim)
    offline = history.pop(history.index("10.5 worker-offline w1"))
    assert history == [
        *HEAD,
        "2 shutdown w1 warm",
        "2 requeued m3 shutdown",
        "2 requeued m4 shutdown",
        "5 worker-online w3",
        "5 delivered m3 w3 redelivered",
        "5 delivered m4 w3 redelivered",
        "5 started m3 w3 retries=0",
        "5 acked m3",
        "5 started m4 w3 retries=0",
        "5 acked m4",
        "10 state SUCCESS 2",
        "10 succeeded m2",
        "10.5 state SUCCESS 1",
        "10.5 succeeded m1",
        "10.5 acked m1",
        "15 state SUCCESS 3",
        "15 succeeded m3",
        "15 state SUCCESS 4",
        "15 succeeded m4",
    ]
    assert offline == "10.5 worker-offline w1"
    assert [r.state for r in results] == [states.SUCCESS] * 4
    assert effects.count(("end", 1)) == 1
    assert sim.check() == []


def test_warm_shutdown_goes_offline_only_after_the_last_task_ends(app, simulation):
    """The worker goes offline the moment its last running task ends, never before (G17)."""
    sim, _, _ = load(app, simulation, warm=True)
    last_end = sim.history.where(kind="succeeded", worker="w1").last().time
    offline = sim.history.where(kind="worker-offline", worker="w1").first().time
    assert offline == last_end


def test_cold_shutdown_cancels_running_tasks(app, simulation, trail):
    """Cold: the early-acked task is cancelled with RETRY('cancelled by Celery') and never
    runs again (stuck RETRY); the acks_late one is cancelled without RETRY and
    redelivered (G17)."""
    sim, results, effects = load(app, simulation, warm=False)
    # 5.5's Request.cancel has no emit_retry (5.6+): it stores RETRY for the acks_late
    # task too, before the message goes back (worker/request.py cancel).
    late_retry = [] if CELERY_VERSION >= (5, 6) else [f"2 state RETRY {CANCELLED}"]
    assert trail(sim) == [
        *HEAD,
        "2 shutdown w1 cold",
        "2 requeued m3 shutdown",
        "2 requeued m4 shutdown",
        "2 cancelled m1 shutdown",
        *late_retry,
        "2 requeued m1 shutdown",
        "2 cancelled m2 shutdown",
        f"2 state RETRY {CANCELLED}",
        "2 worker-offline w1",
        "5 worker-online w3",
        "5 delivered m1 w3 redelivered",
        "5 delivered m3 w3 redelivered",
        "5 delivered m4 w3 redelivered",
        "5 started m1 w3 retries=0",
        "5 started m3 w3 retries=0",
        "5 acked m3",
        "15 state SUCCESS 3",
        "15 succeeded m3",
        "15 started m4 w3 retries=0",
        "15 acked m4",
        "15.5 state SUCCESS 1",
        "15.5 succeeded m1",
        "15.5 acked m1",
        "25 state SUCCESS 4",
        "25 succeeded m4",
    ]
    assert results[1].state == states.RETRY
    with pytest.raises(SimulationIdle, match=r"^task .* can never become ready: .* RETRY"):
        results[1].get()
    # The cancelled bodies stopped at their sleep: neither reached its end there.
    assert effects[:2] == [("begin", 1), ("begin", 2)]
    assert ("end", 2) not in effects
    assert sim.check() == []


@pytest.mark.celery_version(
    min="5.7",
    why="recorded on 5.7.0; 5.5's cancel stores RETRY for acks_late too, and its "
    "on_failure and on_timeout store FAILURE at the limit (no should_terminate check)",
)
@pytest.mark.parametrize(
    ("transport", "fires"),
    # The limit is due at +2: at once on the synchronous loop (polling); at the shutdown
    # timer thread's tick, 0.5 s after the shutdown, on an event loop.
    [("amqp", 2.2), ("redis", 2.2), ("polling", 2)],
)
def test_a_hard_limit_due_during_a_cold_shutdown_acks_the_cancelled_task(
    app, simulation, trail, transport, fires
):
    """A cold shutdown at +1.7 terminates the child of an acks_late task whose 2 s hard
    limit falls due before the pool notices the dead child (1 s later on the synchronous
    loop, 0.5 s on an event loop): the limit fires, and Celery, with should_terminate
    set, acks the message and stores nothing. The message is gone with no result, as
    recorded with Celery 5.7.0 on Redis, filesystem:// and sqla+sqlite (Pool._limit_first).
    An early-ack task keeps its RETRY('cancelled by Celery')."""
    runs = []

    @app.task(acks_late=True, time_limit=2)
    def late():
        runs.append("late")
        time.sleep(10)

    @app.task(time_limit=2)
    def early():
        runs.append("early")
        time.sleep(10)

    def mine(lines: list[str]) -> list[str]:  # after the start, the task's own events
        return [t for t in lines if not t.startswith("0 ") and " w1" not in t and " w2" not in t]

    sim = simulation(app, workers=0, transport=transport)
    sim.add_worker("w1", concurrency=2)
    r1, r2 = late.delay(), early.delay()
    sim.shutdown_worker("w1", at=1.7, warm=False)
    sim.advance(3)
    sim.add_worker("w2")
    sim.run()
    when = f"{fires:g}"
    limit = [f"{when} time-limit m1 hard 2", f"{when} failed m1 TimeLimitExceeded(2)"]
    assert mine(trail(sim, r1.id)) == ["1.7 cancelled m1 shutdown", *limit, f"{when} acked m1"]
    assert mine(trail(sim, r2.id)) == [
        "1.7 cancelled m2 shutdown",
        f"1.7 state RETRY {CANCELLED}",
        f"{when} time-limit m2 hard 2",
        f"{when} failed m2 TimeLimitExceeded(2)",
    ]
    assert (r1.state, r2.state) == (states.PENDING, states.RETRY)
    assert runs == ["late", "early"]  # neither runs again on w2
    offline = sim.history.where(kind="worker-offline", worker="w1").first()
    assert offline.time - sim.history.first().time == pytest.approx(fires)
    assert sim.check() == []


@pytest.mark.parametrize("transport", ["amqp", "polling"])
def test_a_hard_limit_due_after_the_pool_notices_the_dead_child_never_fires(
    app, simulation, transport
):
    """The same acks_late task with its limit due 1.5 s after the cold shutdown: the pool
    reaps the terminated child first (Terminated: Celery leaves the message unacked),
    and the message runs again on another worker (recorded: a 5 s limit never fired)."""
    runs = []

    @app.task(acks_late=True, time_limit=2)
    def late():
        runs.append("late")
        time.sleep(10)

    sim = simulation(app, workers=0, transport=transport)
    sim.add_worker("w1")
    r = late.delay()
    sim.shutdown_worker("w1", at=0.5, warm=False)
    sim.advance(3)
    sim.add_worker("w2")
    sim.run()
    assert not sim.history.where(kind="time-limit", worker="w1")
    assert [e.worker for e in sim.history.where(kind="started", task_id=r.id)] == ["w1", "w2"]
    assert runs == ["late", "late"]
    assert sim.check() == []


def test_a_shut_down_worker_takes_no_new_messages(app, simulation):
    """After a shutdown, a newly published message waits for another worker (G17)."""

    @app.task
    def ping():
        return "pong"

    sim = simulation(app)
    sim.shutdown_worker("worker-1")
    sim.run()
    r = ping.delay()
    with pytest.raises(SimulationIdle, match=r"^task .* its message waits in queue 'celery'"):
        r.get()
    sim.add_worker("w2")
    assert r.get() == "pong"


def test_shutting_down_an_unknown_worker_names_the_workers(app, simulation):
    """A shutdown aimed at a worker that does not exist is an UnknownTarget."""
    sim = simulation(app)
    with pytest.raises(UnknownTarget, match=r"^no worker named 'w9'; workers: 'worker-1'$"):
        sim.shutdown_worker("w9", warm=False)
