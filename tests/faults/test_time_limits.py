"""Soft and hard time limits, and simulated task durations (G11, G12 of
CELERY_SEMANTICS.md §3.2, the "hard time limit" row of §3.1, and §1.11)."""

from __future__ import annotations

import time

import celery
import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

import simq

#: On the polling transport Celery 5.7 sends an ack at once (Consumer.call_soon_ack).
POLLING_ACKS_AT_ONCE = pytest.mark.celery_version(
    min="5.7", why="Celery 5.5 queues acks for synloop's next turn (Consumer.call_soon)"
)

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)

TLE5 = "TimeLimitExceeded(5)"


def recorder(app):
    """Errbacks, on_failure and after_return calls, in order."""
    calls = []

    @app.task
    def on_error(request, exc, traceback):
        calls.append(("errback", repr(exc)))

    class Recorded(app.Task):
        def on_failure(self, exc, task_id, args, kwargs, einfo):
            calls.append(("on_failure", repr(exc)))

        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            calls.append(("after_return", status))

    return calls, on_error, Recorded


# -- soft limit (G11) -------------------------------------------------------------------


def test_an_uncaught_soft_limit_fails_the_task_inside_its_body(app, simulation, trail):
    """SoftTimeLimitExceeded is raised at the task's sleep; uncaught it is FAILURE, with the
    normal failure path (errback, on_failure, after_return) (G11, exp4)."""
    calls, on_error, base = recorder(app)
    effects = []

    @app.task(base=base, soft_time_limit=3)
    def slow():
        try:
            time.sleep(10)
            effects.append("after")
        finally:
            effects.append("finally")

    sim = simulation(app)
    r = slow.apply_async(link_error=on_error.s())
    with pytest.raises(SoftTimeLimitExceeded, match=r"^SoftTimeLimitExceeded\(\)$"):
        r.get()
    assert trail(sim, r.id) == [
        "0 published m1 retries=0",
        "0 delivered m1 worker-1",
        "0 started m1 worker-1 retries=0",
        "0 acked m1",
        "3 time-limit m1 soft 3",
        "3 state FAILURE SoftTimeLimitExceeded()",
        "3 failed m1 SoftTimeLimitExceeded()",
    ]
    assert effects == ["finally"]
    assert calls == [
        ("errback", "SoftTimeLimitExceeded()"),
        ("on_failure", "SoftTimeLimitExceeded()"),
        ("after_return", "FAILURE"),
    ]
    assert sim.check() == []


def test_a_caught_soft_limit_lets_the_task_succeed(app, simulation):
    """A task that catches SoftTimeLimitExceeded can clean up and return: SUCCESS (G11)."""

    @app.task(soft_time_limit=3)
    def careful():
        try:
            time.sleep(10)
        except SoftTimeLimitExceeded:
            return "partial"
        return "complete"

    sim = simulation(app)
    r = careful.delay()
    assert r.get() == "partial"
    assert sim.elapsed == 3
    assert sim.history.where(kind="time-limit").first()["which"] == "soft"


def test_the_hard_limit_still_ends_a_task_that_caught_its_soft_limit(app, simulation, trail):
    """After a caught soft limit the hard limit kills the task where it stands (G11, G12)."""
    effects = []

    @app.task(soft_time_limit=3, time_limit=6)
    def stubborn():
        try:
            time.sleep(10)
        except SoftTimeLimitExceeded:
            effects.append("soft caught")
            time.sleep(10)
            effects.append("never")

    sim = simulation(app)
    r = stubborn.delay()
    sim.run()
    assert trail(sim, r.id)[4:] == [
        "3 time-limit m1 soft 3",
        "6 time-limit m1 hard 6",
        "6 failed m1 TimeLimitExceeded(6)",
        "6 state FAILURE TimeLimitExceeded(6)",
        "6 state FAILURE TimeLimitExceeded(6)",
    ]
    assert effects == ["soft caught"]


# -- hard limit (G12) -------------------------------------------------------------------


def test_a_hard_limit_kills_the_task_and_fires_errbacks_twice(app, simulation, trail):
    """A hard limit stores FAILURE(TimeLimitExceeded(5)); nothing after the interruption
    runs, not even finally; errbacks fire twice, on_failure and after_return once
    (§1.11, §3.1, G12, exp15)."""
    calls, on_error, base = recorder(app)
    effects = []

    @app.task(base=base, time_limit=5)
    def slow():
        try:
            time.sleep(10)
            effects.append("after")
        finally:
            effects.append("finally")

    sim = simulation(app)
    r = slow.apply_async(link_error=on_error.s())
    with pytest.raises(TimeLimitExceeded, match=r"^TimeLimitExceeded\(5,\)$"):
        r.get()
    assert trail(sim, r.id) == [
        "0 published m1 retries=0",
        "0 delivered m1 worker-1",
        "0 started m1 worker-1 retries=0",
        "0 acked m1",
        "5 time-limit m1 hard 5",
        f"5 failed m1 {TLE5}",
        f"5 state FAILURE {TLE5}",
        f"5 state FAILURE {TLE5}",
    ]
    assert effects == []
    # 5.5's Request.on_timeout stores FAILURE (so the errback) but calls neither
    # on_failure nor after_return; 5.7's calls both (worker/request.py on_timeout).
    hooks = [("on_failure", TLE5), ("after_return", "FAILURE")] if CELERY_VERSION >= (5, 7) else []
    assert calls == [("errback", TLE5), ("errback", TLE5), *hooks]
    assert sim.check() == []


@pytest.mark.parametrize(
    "transport", ["amqp", "redis", pytest.param("polling", marks=POLLING_ACKS_AT_ONCE)]
)
def test_acks_late_hard_limit_is_acked_with_acks_on_timeout(app, simulation, trail, transport):
    """With acks_late and acks_on_timeout (default) the timed-out message is acked and
    FAILURE is stored twice: Request.on_failure asks for the ack before mark_as_failure,
    then on_timeout stores again (§3.1; request.py:539-614, 766-790). billiard's
    on_hard_timeout makes both calls in one turn, and Celery sends the ack through
    Consumer.call_soon_ack: on an event loop (amqp, redis) after that turn, so both
    FAILUREs land first (recorded on real Redis: the ack 0.1 s after FAILURE); on 5.7's
    synchronous loop (kombu's polling transports) at once, before them (recorded on
    filesystem:// and sqla+sqlite: 1 ms before)."""

    @app.task(acks_late=True, time_limit=5)
    def slow():
        time.sleep(10)

    sim = simulation(app, transport=transport)
    r = slow.delay()
    sim.run()
    failures = [f"5 state FAILURE {TLE5}"] * 2
    ack = ["5 acked m1"]
    assert trail(sim, r.id)[-3:] == (ack + failures if transport == "polling" else failures + ack)
    assert len(sim.history.where(kind="started")) == 1


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(
            {"acks_on_timeout": False},
            marks=pytest.mark.celery_version(
                min="5.7",
                why="Task.acks_on_timeout is new in 5.7 (5.5: acks_on_failure_or_timeout)",
            ),
        ),
        {"acks_on_failure_or_timeout": False},
    ],
)
def test_acks_late_without_acks_on_timeout_stores_failure_then_runs_again(
    app, simulation, trail, options
):
    """acks_late + acks_on_timeout=False: rejected with requeue (Request.on_failure; sent
    after billiard's turn on an event loop), FAILURE stored once (on_timeout), run again, and SUCCESS replaces FAILURE:
    PENDING -> FAILURE -> SUCCESS (§3.1, G12b, exp6)."""
    calls, on_error, base = recorder(app)

    @app.task(bind=True, base=base, acks_late=True, time_limit=5, **options)
    def slow(self):
        time.sleep(1 if self.request.delivery_info["redelivered"] else 10)
        return "second time"

    sim = simulation(app)
    r = slow.apply_async(link_error=on_error.s())
    sim.run()
    assert trail(sim, r.id) == [
        "0 published m1 retries=0",
        "0 delivered m1 worker-1",
        "0 started m1 worker-1 retries=0",
        "5 time-limit m1 hard 5",
        f"5 failed m1 {TLE5}",
        f"5 state FAILURE {TLE5}",
        "5 rejected m1 requeue=True",
        "5 delivered m1 worker-1 redelivered",
        "5 started m1 worker-1 retries=0",
        "6 state SUCCESS 'second time'",
        "6 succeeded m1",
        "6 acked m1",
    ]
    # Requeued: only on_timeout's mark_as_failure runs, so the errback fires once; 5.5's
    # on_timeout calls no on_failure/after_return (worker/request.py on_timeout).
    hooks = [("on_failure", TLE5), ("after_return", "FAILURE")] if CELERY_VERSION >= (5, 7) else []
    assert calls == [("errback", TLE5), *hooks, ("after_return", "SUCCESS")]
    assert app.AsyncResult(r.id).get() == "second time"
    assert sim.check() == []


def test_a_fresh_child_runs_the_next_task_after_a_hard_limit(app, simulation):
    """The killed child is replaced: the next task runs at once on the same slot (G12a)."""

    @app.task(time_limit=5)
    def slow():
        time.sleep(10)

    @app.task
    def quick():
        return "fine"

    sim = simulation(app)
    slow.delay()
    r = quick.delay()
    assert r.get() == "fine"
    assert sim.history.where(kind="started", task_id=r.id).first().time - sim.started_at == 5


@pytest.mark.parametrize(
    ("settings", "decorator", "call", "fires_at"),
    [
        ({"task_time_limit": 8}, {}, {}, 8),
        ({"task_time_limit": 8}, {"time_limit": 6}, {}, 6),
        ({"task_time_limit": 8}, {"time_limit": 6}, {"time_limit": 4}, 4),
        ({}, {}, {"time_limit": 4}, 4),
    ],
)
def test_the_hard_limit_comes_from_the_call_then_the_task_then_the_setting(
    simulation, settings, decorator, call, fires_at
):
    """apply_async(time_limit=) beats the decorator, which beats task_time_limit (G12, §8 26)."""
    app = simq.App("shop", **settings)

    @app.task(**decorator)
    def slow():
        time.sleep(60)

    sim = simulation(app)
    r = slow.apply_async(**call)
    with pytest.raises(TimeLimitExceeded, match=rf"^TimeLimitExceeded\({fires_at},\)$"):
        r.get()
    assert sim.elapsed == fires_at


def test_the_soft_limit_setting_applies_to_every_task(simulation):
    """task_soft_time_limit gives every task a soft limit (G11)."""
    app = simq.App("shop", task_soft_time_limit=2)

    @app.task
    def slow():
        time.sleep(60)

    sim = simulation(app)
    with pytest.raises(SoftTimeLimitExceeded):
        slow.delay().get()
    assert sim.elapsed == 2


def test_a_soft_limit_above_the_hard_limit_is_refused_per_task(app, simulation):
    """A task whose soft_time_limit exceeds its time_limit cannot be sent (§1.2, G12)."""

    @app.task(time_limit=5, soft_time_limit=10)
    def slow():
        pass

    simulation(app)
    with pytest.raises(
        ValueError, match=r"^soft_time_limit must be less than or equal to time_limit$"
    ):
        slow.delay()


def test_a_soft_limit_above_the_hard_limit_per_call_is_sent_and_the_hard_limit_wins(
    app, simulation
):
    """Celery 5.7 checks only the task's attributes (task.py:710-711): a per-call soft limit
    above the hard one is sent, and the hard limit ends the task; the soft one never fires
    (G12)."""

    @app.task
    def slow():
        time.sleep(60)

    sim = simulation(app)
    r = slow.apply_async(time_limit=5, soft_time_limit=10)
    with pytest.raises(TimeLimitExceeded, match=r"^TimeLimitExceeded\(5,\)$"):
        r.get()
    assert sim.elapsed == 5
    assert [e["which"] for e in sim.history.where(kind="time-limit")] == ["hard"]
    assert sim.check() == []


# -- durations ----------------------------------------------------------------------


def test_a_duration_longer_than_the_limit_is_killed_before_the_body_runs(app, simulation, trail):
    """durations= makes the body take that long: 10 s against time_limit=5 is killed at +5
    and the body never ran (G12)."""
    effects = []

    @app.task(time_limit=5)
    def report():
        effects.append("ran")

    sim = simulation(app, durations={report.name: 10.0})
    r = report.delay()
    with pytest.raises(TimeLimitExceeded):
        r.get()
    assert effects == []
    assert trail(sim, r.id)[4] == "5 time-limit m1 hard 5"


def test_a_duration_within_the_limit_delays_the_result(app, simulation):
    """A 4 s duration finishes before a 5 s limit; SUCCESS at +4."""

    @app.task(time_limit=5)
    def report():
        return "ok"

    sim = simulation(app, durations={report.name: 4.0})
    assert report.delay().get() == "ok"
    assert sim.elapsed == 4


def test_callable_durations_draw_from_the_seed(simulation):
    """A callable duration draws from a seeded stream: the same seed gives the same
    durations, another seed others."""

    def durations_for(seed):
        app = simq.App("shop")

        @app.task(shared=False)
        def job():
            return None

        sim = simulation(
            app, seed=seed, concurrency=3, durations={job.name: lambda rng: rng.uniform(1, 100)}
        )
        for _ in range(3):
            job.delay()
        sim.run()
        ends = [e.time - sim.started_at for e in sim.history.where(kind="succeeded")]
        sim.close()
        return sorted(ends)

    assert durations_for(1) == durations_for(1)
    assert durations_for(1) != durations_for(2)
    assert all(1 <= d <= 100 for d in durations_for(3))


def test_a_bad_duration_is_refused(app):
    """A negative duration or a non-number is a ValueError naming the task."""
    with pytest.raises(
        ValueError,
        match=r"^Simulation\(\): durations\['shop.x'\] must be a number of seconds >= 0 or a "
        r"callable taking a random.Random, got -1$",
    ):
        simq.Simulation(app, durations={"shop.x": -1})
