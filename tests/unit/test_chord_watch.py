"""A chord that can never complete ends the run with a clear message, at once.

On the polling result backends Celery's ``celery.chord_unlock`` retries every second,
without limit, until every header result is ready. A header task with
``ignore_result=True`` never stores one: a real worker retries for ever, and before this
guard a ``sim.run()`` did too, for the 365 virtual days of ``max_run_time`` (measured:
3,600 virtual seconds took 16.8 s of real time, so about 26 minutes before ``max_steps``
stopped it). With Celery's Redis backend the chord counts finished parts and the body runs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import celery
import celery.exceptions
import pytest
from celery import chain, chord

import simq
from simq.exceptions import RunawaySimulation


def make_app() -> Any:
    app = celery.Celery("chords")

    @app.task(name="chords.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="chords.quiet", shared=False, ignore_result=True)
    def quiet(x: int) -> int:
        return x

    @app.task(name="chords.total", shared=False)
    def total(xs: list[int]) -> int:
        return sum(xs)

    return app


def quiet_chord(app: Any) -> Any:
    add, quiet, total = (app.tasks[f"chords.{n}"] for n in ("add", "quiet", "total"))
    return chord([chain(add.s(1, 1), quiet.s()), add.s(2, 2)], total.s())


@pytest.mark.parametrize("backend", ["database", "rpc"])
def test_a_chord_whose_header_stores_no_result_stops_the_run_naming_it(backend: str) -> None:
    app = make_app()
    with simq.Simulation(app, workers=1, concurrency=2, result_backend=backend) as sim:
        result = quiet_chord(app).delay()
        with pytest.raises(RunawaySimulation) as info:
            sim.run()
        assert info.value.limit == "stuck_chord"
        message = str(info.value)
        assert f"the chord of body task {result.id} can never complete" in message
        header = [e for e in sim.history.where(kind="published") if e["task"] == "chords.quiet"]
        assert f"chords.quiet[{header[0].task_id}] (PENDING)" in message
        assert "ignore_result=True" in message and f"result_backend={backend!r}" in message
        # It stopped after 30 quiet retries: about 30 virtual seconds, body never run.
        assert 25 <= sim.elapsed <= 35
        assert not sim.history.where(kind="started", task_id=result.id)


def test_with_the_redis_backend_the_same_chord_completes() -> None:
    app = make_app()
    with simq.Simulation(app, workers=1, concurrency=2, result_backend="redis") as sim:
        result = quiet_chord(app).delay()
        sim.run()
        assert result.get() == 6  # the chord counter stashed the ignored part's value


def test_a_bounded_run_watches_the_body_never_run() -> None:
    app = make_app()
    with simq.Simulation(app, workers=1, concurrency=2, result_backend="database") as sim:
        result = quiet_chord(app).delay()
        sim.advance(120)  # bounded: no guard stops it
        assert len(sim.history.where(kind="retried")) >= 100
        assert not sim.history.where(kind="started", task_id=result.id)
        with pytest.raises(celery.exceptions.TimeoutError):
            result.get(timeout=30)


def test_a_slow_chord_is_not_stopped() -> None:
    """A header task held for a 5-minute countdown: chord_unlock retries 300 times with
    nothing else happening, but a message is still held, so the chord completes."""
    app = make_app()
    add, total = app.tasks["chords.add"], app.tasks["chords.total"]
    with simq.Simulation(app, workers=1, concurrency=2, result_backend="database") as sim:
        result = chord([add.s(1, 1).set(countdown=300), add.s(2, 2)], total.s()).delay()
        sim.run()
        assert result.get() == 6
        assert len(sim.history.where(kind="retried")) >= 290
        body = sim.history.where(kind="started", task_id=result.id).first()
        assert body.at >= sim.now - dt.timedelta(seconds=5)
