"""Runs that would never end stop with a RunawaySimulation that says what looped.

Before the guards, each of these ran for ever (checked by hand in a subprocess with a
5 s timeout: the process was killed every time, ``get(timeout=)`` and ``run(until=)``
included): the loop never moved the virtual clock, or moved it without end. Each test
here sets a guard low enough to end in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import time
from typing import Any

import celery
import pytest
from celery.exceptions import Reject, TimeoutError

import simq
from simq.exceptions import InvalidArgument, RunawaySimulation, SimqError
from simq.guards import Limits

START = "2030-01-01T00:00:00+00:00"
RAISE_INSTANT = (
    "if the run is meant to go on this long, pass Simulation(..., max_instant_steps=N), or "
    "max_instant_steps=None for no limit"
)
POISON_HINT = (
    "the task raises Reject(requeue=True) on every delivery and the broker hands the "
    "message straight back, as RabbitMQ and Redis do: a poison message. Requeue only a few "
    "times (self.request.delivery_info['redelivered'] says whether it came back) and then "
    "raise Reject(requeue=False)"
)


def exactly(message: str) -> str:
    """An anchored regex matching ``message`` and nothing else."""
    return f"^{re.escape(message)}$"


def make_app() -> celery.Celery:
    app = simq.App("rw")

    @app.task(name="rw.poison", bind=True, acks_late=True, shared=False)
    def poison(self: Any) -> None:
        raise Reject(requeue=True)

    @app.task(name="rw.dies", acks_late=True, reject_on_worker_lost=True, shared=False)
    def dies() -> None:
        os._exit(1)

    @app.task(name="rw.again", bind=True, max_retries=None, shared=False)
    def again(self: Any) -> None:
        raise self.retry(countdown=0)

    @app.task(name="rw.forever", shared=False)
    def forever() -> None:
        while True:
            time.sleep(1)

    @app.task(name="rw.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rw.once", bind=True, acks_late=True, shared=False)
    def once(self: Any) -> str:
        if not self.request.delivery_info.get("redelivered"):
            raise Reject(requeue=True)
        return "second delivery"

    return app


def poison_message(call: str, task_id: str) -> str:
    return (
        f"runaway simulation: {call} ran 200 steps at one virtual instant ({START}) without "
        "the clock moving (limit max_instant_steps=200); what repeats: event 'delivered' of "
        f"task 'rw.poison' [{task_id}], 100 times in the last 402 events (with 'published', "
        f"'started', 'declined', 'rejected'); {POISON_HINT}; {RAISE_INSTANT}"
    )


# -- at one instant: poison messages, retries without countdown --------------------------


def test_a_poison_message_is_stopped_at_one_instant_and_named() -> None:
    """acks_late + Reject(requeue=True) every time stops run() with the task, the event
    that repeats, how often, when, and the fix."""
    app = make_app()
    with simq.Simulation(app, max_instant_steps=200) as sim:
        r = app.tasks["rw.poison"].delay()
        with pytest.raises(RunawaySimulation, match=exactly(poison_message("run()", r.id))) as e:
            sim.run()
        assert e.value.limit == "max_instant_steps"
        delivered = sim.history.where(kind="delivered", task_id=r.id)
        assert len(delivered) == 100
        assert {event.time for event in delivered} == {sim.started_at}
        assert sim.elapsed == 0


def test_get_with_a_timeout_is_bounded_by_the_instant_guard() -> None:
    """get(timeout=) cannot bound a loop that never moves the clock: the guard does."""
    app = make_app()
    with simq.Simulation(app, max_instant_steps=200):
        r = app.tasks["rw.poison"].delay()
        call = f"get() of task {r.id}"
        with pytest.raises(RunawaySimulation, match=exactly(poison_message(call, r.id))):
            r.get(timeout=5)


def test_run_until_is_bounded_by_the_instant_guard() -> None:
    """run(until=) cannot bound a loop that never moves the clock: the guard does."""
    app = make_app()
    with simq.Simulation(app, max_instant_steps=200) as sim:
        r = app.tasks["rw.poison"].delay()
        with pytest.raises(RunawaySimulation, match=exactly(poison_message("run()", r.id))):
            sim.run(until=sim.now + dt.timedelta(seconds=10))


def test_a_child_that_always_dies_with_reject_on_worker_lost_is_named() -> None:
    """acks_late + reject_on_worker_lost with a child that always exits is a poison
    message too; the message says the child dies and what requeues it."""
    app = make_app()
    with simq.Simulation(app, max_instant_steps=200) as sim:
        r = app.tasks["rw.dies"].delay()
        with pytest.raises(
            RunawaySimulation,
            match=exactly(
                f"runaway simulation: run() ran 200 steps at one virtual instant ({START}) "
                "without the clock moving (limit max_instant_steps=200); what repeats: event "
                f"'delivered' of task 'rw.dies' [{r.id}], 100 times in the last 402 events "
                "(with 'published', 'started', 'child-lost', 'rejected'); the task's child "
                "process dies on every attempt (os._exit, a kill, a crash) and acks_late with "
                "reject_on_worker_lost=True requeues the message each time: a poison message. "
                "Fix what ends the child, or drop reject_on_worker_lost so the task fails "
                f"with WorkerLostError; {RAISE_INSTANT}"
            ),
        ):
            sim.run()
        assert len(sim.history.where(kind="child-lost", task_id=r.id)) == 100


def test_endless_retries_without_countdown_are_named() -> None:
    """max_retries=None with retry(countdown=0) stops with a hint about both."""
    app = make_app()
    with simq.Simulation(app, max_instant_steps=200) as sim:
        r = app.tasks["rw.again"].delay()
        with pytest.raises(
            RunawaySimulation,
            match=exactly(
                f"runaway simulation: run() ran 200 steps at one virtual instant ({START}) "
                "without the clock moving (limit max_instant_steps=200); what repeats: event "
                f"'published' of task 'rw.again' [{r.id}], 101 times in the last 602 events "
                "(with 'delivered', 'started', 'acked', 'state', 'retried'); the task retries "
                "without end: give it max_retries (None retries for ever) and a countdown "
                f"above 0; {RAISE_INSTANT}"
            ),
        ):
            sim.run()


def test_a_guard_set_to_none_leaves_the_others() -> None:
    """max_instant_steps=None turns that guard off; the step budget still stops the loop."""
    app = make_app()
    with simq.Simulation(app, max_instant_steps=None, max_steps=300) as sim:
        app.tasks["rw.poison"].delay()
        with pytest.raises(
            RunawaySimulation, match=r"^runaway simulation: run\(\) ran 300 steps, .* no limit$"
        ) as e:
            sim.run()
        assert e.value.limit == "max_steps"


# -- moving the clock for ever -------------------------------------------------------------


FOREVER_TAIL = (
    "task 'rw.forever' [{id}] has been running on worker-1/child-1 since {start} ({span}); "
    "a task that never returns (a loop around time.sleep?) needs an exit condition or a "
    "time limit (time_limit=); if the run is meant to go on this long, pass {fix}"
)


@pytest.mark.parametrize("call", ["run()", "advance()"])
def test_a_task_sleeping_in_a_loop_is_stopped_by_the_step_budget(call: str) -> None:
    """``while True: time.sleep(1)`` stops run() and advance() at max_steps, naming the
    running task and since when."""
    app = make_app()
    with simq.Simulation(app, max_steps=50) as sim:
        r = app.tasks["rw.forever"].delay()
        tail = FOREVER_TAIL.format(
            id=r.id,
            start=START,
            span="49 s",
            fix="Simulation(..., max_steps=N), or max_steps=None for no limit",
        )
        with pytest.raises(
            RunawaySimulation,
            match=(
                rf"^runaway simulation: {re.escape(call)} ran 50 steps, from {re.escape(START)} "
                r"to 2030-01-01T00:00:49\+00:00 \(49 s of virtual time\) \(limit "
                r"max_steps=50\); no task's events repeat; scheduled next: [^;]+; "
                f"{re.escape(tail)}$"
            ),
        ):
            sim.run() if call == "run()" else sim.advance(10**6)
        assert sim.elapsed == 49


@pytest.mark.parametrize("call", ["run()", "get()"])
def test_an_unbounded_wait_is_stopped_by_max_run_time(call: str) -> None:
    """run() without until, and get() without timeout, cover at most max_run_time of
    virtual time, then say so."""
    app = make_app()
    with simq.Simulation(app, max_run_time=3600) as sim:
        r = app.tasks["rw.forever"].delay()
        tail = FOREVER_TAIL.format(
            id=r.id,
            start=START,
            span="3,600 s",
            fix="run(until=...) or get(timeout=...) for a bounded wait, or "
            "Simulation(..., max_run_time=N), or max_run_time=None for no limit",
        )
        shown = "run()" if call == "run()" else f"get() of task {r.id}"
        with pytest.raises(
            RunawaySimulation,
            match=(
                rf"^runaway simulation: {re.escape(shown)} covered 3,600 s of virtual time and "
                r"work is still scheduled \(next at 2030-01-01T01:00:01\+00:00\) \(limit "
                r"max_run_time=3600\); no task's events repeat; scheduled next: [^;]+; "
                f"{re.escape(tail)}$"
            ),
        ) as e:
            sim.run() if call == "run()" else r.get()
        assert e.value.limit == "max_run_time"
        assert sim.elapsed == 3600


def test_get_with_a_timeout_is_not_limited_by_max_run_time() -> None:
    """A bounded wait is the user's bound: get(timeout=) past max_run_time times out."""
    app = make_app()
    with simq.Simulation(app, max_run_time=3600) as sim:
        r = app.tasks["rw.forever"].delay()
        with pytest.raises(TimeoutError):
            r.get(timeout=7200)
        assert sim.elapsed == 7200


# -- what the guards leave alone ----------------------------------------------------------


def test_defaults() -> None:
    """The default guards: 5,000 steps at one instant, 1,000,000 per call, 365 days."""
    with simq.Simulation(make_app()) as sim:
        assert sim.limits == Limits(5_000, 1_000_000, 365 * 86_400.0)


def test_many_tasks_at_one_instant_are_not_a_runaway() -> None:
    """A step is one timer, not one task: 2,000 tasks at one instant take a few steps."""
    app = make_app()
    with simq.Simulation(app, max_instant_steps=20, concurrency=4) as sim:
        results = [app.tasks["rw.add"].delay(i, 1) for i in range(2_000)]
        sim.run()
        assert [r.get() for r in results] == [i + 1 for i in range(2_000)]
        assert sim.elapsed == 0


def test_one_get_after_another_at_one_instant_is_not_a_runaway() -> None:
    """Steps at one instant count per call: a test may get() 500 zero-duration tasks one
    after another without the clock moving."""
    app = make_app()
    with simq.Simulation(app, max_instant_steps=20) as sim:
        assert [app.tasks["rw.add"].delay(i, 1).get() for i in range(500)] == list(range(1, 501))
        assert sim.elapsed == 0


def test_a_requeued_message_comes_back_at_once_after_the_reject() -> None:
    """RabbitMQ redelivers a requeued message at once: same virtual instant, no invented
    delay, as the broker's own step after the reject."""
    app = make_app()
    with simq.Simulation(app) as sim:
        r = app.tasks["rw.once"].delay()
        assert r.get() == "second delivery"
        kinds = [e.kind for e in sim.history.where(task_id=r.id)]
        assert kinds[:7] == [
            "published", "delivered", "started", "declined", "rejected", "delivered", "started"
        ]  # fmt: skip
        assert {e.time for e in sim.history.where(task_id=r.id)} == {sim.started_at}


# -- the guards' own values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_instant_steps": 0}, "max_instant_steps must be an int >= 1, got 0"),
        ({"max_instant_steps": "100"}, "max_instant_steps must be an int >= 1, got the string '100'"),
        ({"max_steps": -1}, "max_steps must be an int >= 1, got -1"),
        ({"max_steps": 2.5}, "max_steps must be an int >= 1, got 2.5"),
    ],
)  # fmt: skip
def test_step_limits_must_be_positive_ints(options: dict[str, Any], message: str) -> None:
    """max_instant_steps and max_steps take a positive int or None, checked at creation."""
    with pytest.raises(
        InvalidArgument,
        match=exactly(f"Simulation(): {message}; pass a larger int, or None for no limit"),
    ):
        simq.Simulation(make_app(), **options)


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, "60"])
def test_max_run_time_must_be_positive_seconds(value: Any) -> None:
    """max_run_time takes finite seconds > 0 or None, checked at creation."""
    expected = "Simulation(): max_run_time must be a number of seconds > 0, or None, got "
    with pytest.raises(InvalidArgument, match=f"^{re.escape(expected)}"):
        simq.Simulation(make_app(), max_run_time=value)


# -- configurations that loop for ever on a real broker ----------------------------------


@pytest.mark.parametrize("transport", ["redis", "sqs"])
@pytest.mark.parametrize("timeout", [0, -5])
def test_a_visibility_timeout_of_zero_or_less_is_refused(transport: str, timeout: int) -> None:
    """kombu's Redis and SQS would hand every unacked message out again at once, for ever."""
    app = make_app()
    app.conf.broker_transport_options = {"visibility_timeout": timeout}
    default = {"redis": 3600, "sqs": 1800}[transport]
    with pytest.raises(
        InvalidArgument,
        match=exactly(
            "Simulation(): app.conf.broker_transport_options['visibility_timeout'] must be a "
            f"number of seconds > 0 on the {transport} transport, got {timeout}: the broker "
            "would hand every unacked message out again at once, for ever; pass the longest "
            f"a task may run before its message is redelivered (kombu's default: {default})"
        ),
    ):
        simq.Simulation(app, transport=transport)


def test_amqp_ignores_the_visibility_timeout() -> None:
    """kombu's amqp transport has no visibility timeout: a 0 there changes nothing."""
    app = make_app()
    app.conf.broker_transport_options = {"visibility_timeout": 0}
    with simq.Simulation(app, transport="amqp"):
        assert app.tasks["rw.add"].delay(1, 2).get() == 3


@pytest.mark.parametrize(
    ("rate", "what"),
    [
        ("nan/s", "is not a number: Celery's worker would take it and never limit the task"),
        ("-1/s", "is negative: Celery's worker would run the task once and then never again"),
    ],
)
def test_a_rate_limit_that_cannot_work_stops_the_worker_at_startup(rate: str, what: str) -> None:
    """A NaN or negative rate_limit is refused as the worker starts, naming the task (it
    ran at one instant for ever before)."""
    app = simq.App("rl")

    @app.task(name="rl.limited", rate_limit=rate, shared=False)
    def limited() -> None:
        return None

    with pytest.raises(
        SimqError,
        match=exactly(
            f"worker 'worker-1' cannot start: task 'rl.limited' has rate_limit {rate!r}, which "
            f"{what}; use a positive number of tasks per second, or a string like '10/s', "
            "'10/m' or '10/h' (None: no limit)"
        ),
    ):
        simq.Simulation(app)


def test_a_rate_limit_of_zero_is_no_limit_as_in_celery() -> None:
    """Celery's consumer makes no bucket for a rate of 0: every task starts at once."""
    app = simq.App("rl")

    @app.task(name="rl.zero", rate_limit="0/s", shared=False)
    def zero(x: int) -> int:
        return x

    with simq.Simulation(app) as sim:
        results = [zero.delay(i) for i in range(3)]
        assert [r.get() for r in results] == [0, 1, 2]
        assert sim.elapsed == 0
