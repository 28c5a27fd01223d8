"""Behaviour tests of ``autoretry_for`` and retry backoff on simulated workers (§4.4).

The autoretry wrapper and the backoff are Celery's own (``celery.app.autoretry``); these
tests check what they do on the simulation. Tasks use ``shared=False`` so a task of one
test is not registered on the apps of later tests (Celery's shared tasks).
"""

from __future__ import annotations

import itertools
from typing import Any

import celery
import pytest
from celery import states
from celery.exceptions import Ignore

import simq
from simq.exceptions import SimulationIdle


@pytest.fixture
def app() -> celery.Celery:
    return celery.Celery("shop")


def starts(sim: simq.Simulation, task_id: str) -> list[float]:
    """Virtual seconds since the start at which each attempt of ``task_id`` began."""
    return [e.time - sim.started_at for e in sim.history.where(kind="started", task_id=task_id)]


def gaps(sim: simq.Simulation, task_id: str) -> list[float]:
    """Virtual seconds between consecutive attempts of ``task_id``."""
    times = starts(sim, task_id)
    return [b - a for a, b in itertools.pairwise(times)]


def failing(app: celery.Celery, exc: BaseException, **options: Any) -> Any:
    """A task that records its attempts and always raises ``exc``."""
    runs: list[int] = []

    @app.task(shared=False, bind=True, name="shop.failing", **options)
    def task(self):
        runs.append(self.request.retries)
        raise exc

    task.runs = runs
    return task


def test_autoretry_for_retries_up_to_max_retries_then_reraises(app, simulation):
    """An autoretry_for exception is retried max_retries times, then re-raised (§4.2, #5061)."""
    task = failing(app, ValueError("flaky"), autoretry_for=(ValueError,))
    sim = simulation(app)
    r = task.delay()
    with pytest.raises(ValueError, match=r"^flaky$"):
        r.get()
    assert task.runs == [0, 1, 2, 3]
    assert [e["state"] for e in sim.history.where(kind="state")] == [states.RETRY] * 3 + [
        states.FAILURE
    ]
    assert sim.history.where(kind="failed").last()["exception"]["exc_type"] == "ValueError"


def test_retry_kwargs_max_retries_wins_over_the_attribute(app, simulation):
    """retry_kwargs={'max_retries': 5} gives 6 executions (Celery test #16)."""
    task = failing(
        app, ValueError("x"), autoretry_for=(ValueError,), retry_kwargs={"max_retries": 5}
    )
    simulation(app)
    with pytest.raises(ValueError):
        task.delay().get()
    assert task.runs == [0, 1, 2, 3, 4, 5]


def test_dont_autoretry_for_wins_over_autoretry_for(app, simulation):
    """dont_autoretry_for wins over autoretry_for: one run, FAILURE (Celery test #17)."""
    task = failing(
        app,
        ZeroDivisionError("zero"),
        autoretry_for=(ArithmeticError,),
        dont_autoretry_for=(ZeroDivisionError,),
    )
    sim = simulation(app)
    with pytest.raises(ZeroDivisionError, match=r"^zero$"):
        task.delay().get()
    assert task.runs == [0]
    assert len(sim.history.where(kind="published")) == 1


def test_a_sibling_of_the_excluded_exception_is_still_retried(app, simulation):
    """dont_autoretry_for excludes only its own classes, not the rest of autoretry_for (§4.4)."""
    task = failing(
        app,
        OverflowError("big"),
        autoretry_for=(ArithmeticError,),
        dont_autoretry_for=(ZeroDivisionError,),
        max_retries=1,
    )
    simulation(app)
    with pytest.raises(OverflowError):
        task.delay().get()
    assert task.runs == [0, 1]


def test_exception_outside_autoretry_for_fails_at_once(app, simulation):
    """An exception autoretry_for does not cover is a normal FAILURE (§4.4 step 5)."""
    task = failing(app, KeyError("k"), autoretry_for=(ValueError,))
    simulation(app)
    with pytest.raises(KeyError):
        task.delay().get()
    assert task.runs == [0]


def test_without_backoff_default_retry_delay_applies(app, simulation):
    """Without retry_backoff the autoretry waits default_retry_delay (180 s) (§4.4)."""
    task = failing(app, ValueError("x"), autoretry_for=(ValueError,), max_retries=2)
    sim = simulation(app)
    r = task.delay()
    with pytest.raises(ValueError):
        r.get()
    assert gaps(sim, r.id) == [180.0, 180.0]


def test_retry_kwargs_countdown_is_used(app, simulation):
    """A countdown in retry_kwargs spaces the attempts (§4.4 step 4)."""
    task = failing(
        app,
        ValueError("x"),
        autoretry_for=(ValueError,),
        retry_kwargs={"countdown": 3, "max_retries": 2},
    )
    sim = simulation(app)
    r = task.delay()
    with pytest.raises(ValueError):
        r.get()
    assert gaps(sim, r.id) == [3.0, 3.0]


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        (True, [1, 2, 4, 8]),
        (1, [1, 2, 4, 8]),
        (0.1, [1, 2, 4, 8]),
        (1.9, [1, 2, 4, 8]),
        (-1, [1, 2, 4, 8]),
        (2, [2, 4, 8, 16]),
        (3, [3, 6, 12, 24]),
    ],
)
def test_backoff_without_jitter_doubles_the_countdown(app, simulation, backoff, expected):
    """retry_backoff gives countdowns factor*2**n, factor=int(max(1, backoff)) (Celery test #18)."""
    task = failing(
        app,
        ValueError("x"),
        autoretry_for=(ValueError,),
        max_retries=4,
        retry_backoff=backoff,
        retry_jitter=False,
    )
    sim = simulation(app)
    r = task.delay()
    with pytest.raises(ValueError):
        r.get()
    assert gaps(sim, r.id) == expected
    assert [e["when"] for e in sim.history.where(kind="retried")] == expected


@pytest.mark.parametrize("backoff", [False, 0, 0.0])
def test_falsy_backoff_uses_default_retry_delay(app, simulation, backoff):
    """A falsy retry_backoff leaves the countdown to default_retry_delay (Celery test #18)."""
    task = failing(
        app,
        ValueError("x"),
        autoretry_for=(ValueError,),
        max_retries=1,
        retry_backoff=backoff,
        retry_jitter=False,
    )
    sim = simulation(app)
    r = task.delay()
    with pytest.raises(ValueError):
        r.get()
    assert gaps(sim, r.id) == [180.0]


def test_backoff_is_capped_by_retry_backoff_max(app, simulation):
    """retry_backoff_max=16 caps the countdowns at 16 (Celery test #20)."""
    task = failing(
        app,
        ValueError("x"),
        autoretry_for=(ValueError,),
        max_retries=6,
        retry_backoff=True,
        retry_backoff_max=16,
        retry_jitter=False,
    )
    sim = simulation(app)
    r = task.delay()
    with pytest.raises(ValueError):
        r.get()
    assert gaps(sim, r.id) == [1, 2, 4, 8, 16, 16]


def test_default_backoff_max_is_600(app, simulation):
    """Without retry_backoff_max the countdown stops growing at 600 s (§4.4 table)."""
    task = failing(
        app,
        ValueError("x"),
        autoretry_for=(ValueError,),
        max_retries=11,
        retry_backoff=True,
        retry_jitter=False,
    )
    sim = simulation(app)
    r = task.delay()
    with pytest.raises(ValueError):
        r.get()
    assert gaps(sim, r.id) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600]


def jittered_gaps(seed: int) -> list[float]:
    """The gaps between attempts of a jittered backoff run with ``seed``."""
    app = celery.Celery("shop")
    task = failing(
        app, ValueError("x"), autoretry_for=(ValueError,), max_retries=10, retry_backoff=True
    )
    with simq.Simulation(app, seed=seed) as sim:
        r = task.delay()
        with pytest.raises(ValueError):
            r.get()
        assert [e["when"] for e in sim.history.where(kind="retried")] == gaps(sim, r.id)
        return gaps(sim, r.id)


def test_jitter_draws_each_countdown_from_zero_to_the_backoff():
    """With retry_jitter (the default) each countdown is an integer in [0, factor*2**n] (§4.4)."""
    for seed in range(5):
        drawn = jittered_gaps(seed)
        assert len(drawn) == 10
        for n, countdown in enumerate(drawn):
            assert countdown == int(countdown)
            assert 0 <= countdown <= 2**n, (seed, n, drawn)


def test_jitter_is_reproducible_from_the_seed():
    """The same seed draws the same jittered countdowns (§4.4; determinism)."""
    assert jittered_gaps(3) == jittered_gaps(3)


def test_jitter_differs_between_seeds():
    """Different seeds draw different jittered countdowns over a long run (§4.4)."""
    assert jittered_gaps(0) != jittered_gaps(1)


def test_explicit_retry_inside_an_autoretry_task_is_not_wrapped_again(app, simulation):
    """A self.retry() raised in an autoretry task passes through unchanged (§4.4 step 2, #6135)."""
    runs = []

    @app.task(
        shared=False,
        bind=True,
        autoretry_for=(Exception,),
        max_retries=2,
        retry_backoff=True,
        retry_jitter=False,
    )
    def explicit(self):
        runs.append(self.request.retries)
        raise self.retry(exc=LookupError("explicit"), countdown=5)

    sim = simulation(app)
    r = explicit.delay()
    with pytest.raises(LookupError, match=r"^explicit$"):
        r.get()
    assert runs == [0, 1, 2]
    assert gaps(sim, r.id) == [5.0, 5.0]
    assert [e["retries"] for e in sim.history.where(kind="published")] == [0, 1, 2]


def test_retry_max_retries_override_is_honoured_by_autoretry(app, simulation):
    """retry(max_retries=0) in an autoretry task stops it with its exc (Celery test #14)."""
    runs = []

    @app.task(shared=False, bind=True, autoretry_for=(Exception,), retry_kwargs={"countdown": 1})
    def override(self):
        runs.append(self.request.retries)
        if self.request.retries < 2:
            raise ValueError("again")
        self.retry(exc=KeyError("stop"), max_retries=0)

    simulation(app)
    with pytest.raises(KeyError):
        override.delay().get()
    assert runs == [0, 1, 2]


def test_max_retries_zero_runs_once_and_raises_the_original(app, simulation):
    """autoretry with max_retries=0 runs once and re-raises the original (Celery test #15)."""
    task = failing(app, ValueError("once"), autoretry_for=(ValueError,), max_retries=0)
    simulation(app)
    with pytest.raises(ValueError, match=r"^once$"):
        task.delay().get()
    assert task.runs == [0]


def test_ignore_is_not_autoretried(app, simulation):
    """Ignore passes through the autoretry wrapper: one run, acked, PENDING (§4.4 step 1)."""
    task = failing(app, Ignore(), autoretry_for=(Exception,))
    sim = simulation(app)
    r = task.delay()
    with pytest.raises(SimulationIdle):
        r.get()
    assert task.runs == [0]
    assert sim.history.where(kind="ignored", task_id=r.id).first()
    assert not sim.history.where(kind="state")
    assert r.state == states.PENDING
