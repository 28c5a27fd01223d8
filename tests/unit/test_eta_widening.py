"""Celery's ETA prefetch widening: any message with an ETA header, even one already due,
is held on the worker's timer outside the prefetch window until the timer fires (§3.2 G5).

Celery's strategy (``celery/worker/strategy.py``, ``if req.eta:``) raises the prefetch
count (``qos.increment_eventually``) and schedules ``apply_eta_task`` on the timer, which
lowers it again when it hands the request to the pool: until then the broker may send
one more message. The simulator does the same, and G5 expects it with no slack.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import celery
import pytest
from checker_support import Story, only

import simq
from simq.checkers import CheckConfig, check_g5

NO_SLACK = CheckConfig()


@pytest.fixture
def app() -> celery.Celery:
    return simq.App("shop")


@pytest.fixture
def sleepy(app: celery.Celery) -> Any:
    """``shop.sleepy(seconds)`` sleeps in virtual time."""

    @app.task(shared=False, name="shop.sleepy")
    def sleepy(seconds):
        time.sleep(seconds)
        return seconds

    return sleepy


def timeline(sim: simq.Simulation) -> list[tuple[float, str, str]]:
    """(seconds since start, kind, first or second message) of the deliveries and starts."""
    order = [e.message_id for e in sim.history.where(kind="published")]
    return [
        (e.time - sim.started_at, e.kind, "first" if e.message_id == order[0] else "second")
        for e in sim.history
        if e.kind in ("delivered", "started")
    ]


# -- the simulator -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "starts"),
    [
        (lambda now: {"eta": now}, 10.0),
        (lambda now: {"eta": now - dt.timedelta(seconds=5)}, 10.0),
        (lambda now: {"countdown": 30}, 30.0),
    ],
    ids=["eta-now", "eta-past", "eta-future"],
)
def test_an_eta_message_waits_outside_the_window_until_its_timer_fires(
    app, simulation, sleepy, options, starts
):
    """With window 1, a message with an ETA (already due or not) lets the next one in
    before it starts: a due one starts once the plain one's 10 s are over, a future one
    at its ETA."""
    sim = simulation(app, prefetch_multiplier=1)
    sleepy.apply_async((10,), **options(sim.now))
    sleepy.delay(10)
    sim.run()
    # Celery hands the plain message to the pool at once; the ETA one waits for its
    # timer, which fires after the plain one was delivered.
    assert timeline(sim) == [
        (0.0, "delivered", "first"),
        (0.0, "delivered", "second"),
        (0.0, "started", "second"),
        (starts, "started", "first"),
    ]
    assert sim.check() == []


def test_a_plain_message_still_fills_the_window(app, simulation):
    """With window 1 and late acks, a plain message keeps the next one out until its ack."""

    @app.task(shared=False, name="shop.late", acks_late=True)
    def late(seconds):
        time.sleep(seconds)

    sim = simulation(app, prefetch_multiplier=1)
    late.delay(10)
    late.delay(10)
    sim.run()
    assert timeline(sim) == [
        (0.0, "delivered", "first"),
        (0.0, "started", "first"),
        (10.0, "delivered", "second"),
        (10.0, "started", "second"),
    ]
    assert sim.check() == []


def test_due_eta_runs_are_reproducible(app, sleepy):
    """Two runs with the same seed and due ETAs record the same history, and keep G5."""

    def run() -> list[tuple[Any, ...]]:
        with simq.Simulation(app, seed=7, prefetch_multiplier=1) as sim:
            for x in range(3):
                sleepy.apply_async((x,), eta=sim.now)
                sleepy.delay(x)
            sim.run()
            assert sim.check() == []
            return [(e.time, e.kind, e.message_id, e.worker) for e in sim.history]

    assert run() == run()


# -- the G5 checker with no slack ----------------------------------------------------


def due_eta_story() -> Story:
    """Window 1: m1 has an ETA already due when delivered, m2 has none."""
    s = Story().online("w1", prefetch_multiplier=1).at(1).publish("m1", "t1", eta=0.5)
    return s.publish("m2", "t2").deliver("m1")


def test_g5_lets_a_due_eta_widen_the_window_in_its_instant() -> None:
    """A message sent in the instant a due-ETA message arrived keeps G5 (its timer has not fired)."""
    s = due_eta_story().deliver("m2").start("m2").ack("m2").at(2).start("m1").ack("m1")
    assert check_g5(s.history, NO_SLACK) == []


def test_g5_counts_a_due_eta_once_time_moves_on() -> None:
    """Once virtual time moves past a due-ETA message's delivery, it counts against the window."""
    s = due_eta_story().at(1.5).deliver("m2")
    v = only(check_g5(s.history, NO_SLACK), "G5")
    assert "while it held 1 unacked non-ETA message(s) (m1)" in v.message


def test_g5_counts_a_due_eta_once_it_starts() -> None:
    """A due-ETA message that started in its instant counts from its start on."""
    s = due_eta_story().start("m1").deliver("m2")  # m1 late-acked: still unacked
    v = only(check_g5(s.history, NO_SLACK), "G5")
    assert "while it held 1 unacked non-ETA message(s) (m1)" in v.message


def test_g5_does_not_widen_the_window_for_a_plain_message() -> None:
    """A worker with window 1 holding a plain unacked message is sent no other, in the same instant."""
    s = Story().online("w1", prefetch_multiplier=1).publish("m1", "t1").publish("m2", "t2")
    s.deliver("m1").deliver("m2")
    v = only(check_g5(s.history, NO_SLACK), "G5")
    assert v.message == (
        "w1 was sent shop.add[t2] message m2 at 2030-01-01T00:00:00.000Z "
        "while it held 1 unacked non-ETA message(s) (m1); its prefetch "
        "window is 1"
    )


def test_g5_with_slack_keeps_its_rule_for_a_due_eta() -> None:
    """With a slack, a due-ETA message counts from the slack past its delivery, as before."""
    s = due_eta_story().at(1.5).deliver("m2")
    assert check_g5(s.history, CheckConfig(slack=1.0)) == []
    s.at(3).publish("m3", "t3").deliver("m3")
    v = only(check_g5(s.history, CheckConfig(slack=1.0)), "G5")
    assert "m3" in v.message and "(m2, m1)" in v.message
