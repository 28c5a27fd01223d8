"""Eager execution: Celery's Task.apply(), outside and inside a simulation (§1.7).

``apply()`` is Celery's own code: it runs the body in the caller and returns an
``EagerResult``. Every test runs twice (the ``where`` fixture): on a ``simq.App``
outside any simulation, and inside an active simulation, where it must publish no
message, leave virtual time alone and store nothing unless ``task_store_eager_result``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import celery
import celery.result
import pytest
from celery import states
from celery.exceptions import Ignore, Reject, Retry

import simq
from simq.exceptions import SimqError

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)


class Runs:
    """What each run of a recording task saw in its request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def record(self, task: celery.Task) -> None:
        r = task.request
        self.requests.append({
            "id": r.id, "args": r.args, "kwargs": r.kwargs, "retries": r.retries,
            "is_eager": r.is_eager, "called_directly": r.called_directly,
            "delivery_info": r.delivery_info, "timelimit": r.timelimit,
            "parent_id": r.parent_id, "root_id": r.root_id, "headers": r.headers,
            "ignore_result": r.ignore_result,
        })  # fmt: skip


class Where:
    """Runs a block outside any simulation, or inside one that must stay untouched."""

    def __init__(self, inside: bool) -> None:
        self.inside = inside
        self.sim: simq.Simulation | None = None

    @contextlib.contextmanager
    def __call__(self, app: celery.Celery, stores: bool = False) -> Iterator[None]:
        if not self.inside:
            yield
            return
        with simq.Simulation(app) as sim:
            self.sim = sim
            yield
            # apply() ran in the caller: no message, no worker, no virtual time.
            assert not sim.history.where(kind="published")
            assert not sim.history.where(kind="started")
            assert sim.elapsed == 0
            if not stores:
                assert not sim.history.where(kind="state")


@pytest.fixture(params=["outside", "inside"])
def where(request: pytest.FixtureRequest) -> Where:
    return Where(request.param == "inside")


def test_apply_runs_now_and_returns_an_eager_result(where: Where) -> None:
    """apply() runs the body in process and returns a ready EagerResult."""
    app = simq.App("proj")

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    with where(app):
        result = add.apply((2, 3))
        assert isinstance(result, celery.result.EagerResult)
        assert (result.state, result.result, result.get()) == (states.SUCCESS, 5, 5)
        assert result.ready() and result.successful() and not result.failed()


def test_apply_request_is_eager(where: Where) -> None:
    """The eager request: given id, is_eager True, called_directly False, root = own id."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(shared=False, bind=True)
    def job(self: celery.Task, *args: Any, **kwargs: Any) -> None:
        runs.record(self)

    with where(app):
        job.apply((1, (2,)), {"k": 3}, task_id="eager-1", headers={"h": 1})
    seen = runs.requests[0]
    assert seen["id"] == "eager-1"
    assert seen["args"] == (1, (2,))  # apply() does not serialize: the tuple stays
    assert seen["kwargs"] == {"k": 3}
    assert seen["retries"] == 0
    assert seen["is_eager"] is True
    assert seen["called_directly"] is False
    # 5.5's Task.apply sets no root_id (5.6+ does, app/task.py apply).
    assert seen["root_id"] == ("eager-1" if CELERY_VERSION >= (5, 6) else None)
    assert seen["parent_id"] is None
    assert seen["headers"] == {"h": 1}


def test_apply_simulates_delivery_info(where: Where) -> None:
    """delivery_info is {'is_eager': True, exchange, routing_key, priority} (§8 #24)."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(shared=False, bind=True)
    def job(self: celery.Task) -> None:
        runs.record(self)

    with where(app):
        job.apply(exchange="ex", routing_key="rk", priority=4)
        job.apply()
    assert runs.requests[0]["delivery_info"] == {
        "is_eager": True, "exchange": "ex", "routing_key": "rk", "priority": 4,
    }  # fmt: skip
    assert runs.requests[1]["delivery_info"] == {
        "is_eager": True, "exchange": None, "routing_key": None, "priority": None,
    }  # fmt: skip


@pytest.mark.celery_version(
    min="5.7", why="Task.apply puts no timelimit in the eager request before 5.7 (app/task.py)"
)
def test_apply_timelimit_comes_from_task_attributes(where: Where) -> None:
    """request.timelimit is [time_limit, soft_time_limit] when the task sets either."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(shared=False, bind=True, time_limit=30, soft_time_limit=20)
    def job(self: celery.Task) -> None:
        runs.record(self)

    with where(app):
        job.apply()
    assert list(runs.requests[0]["timelimit"]) == [30, 20]


@pytest.mark.celery_version(
    min="5.6", why="5.5's Task.apply sets no parent_id/root_id in the eager request (app/task.py)"
)
def test_apply_inside_a_task_has_parent_and_root(where: Where) -> None:
    """A task applied from a running task gets it as parent and shares its root (§5.5)."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(shared=False, bind=True)
    def inner(self: celery.Task) -> None:
        runs.record(self)

    @app.task(shared=False)
    def outer() -> None:
        inner.apply(task_id="inner-id")

    with where(app):
        outer.apply(task_id="outer-id")
    assert runs.requests[0]["parent_id"] == "outer-id"
    assert runs.requests[0]["root_id"] == "outer-id"


def test_apply_inside_a_simulated_task_runs_in_that_task() -> None:
    """apply() called by a task running on a simulated worker runs in that worker's child:
    its request names the calling task as parent and root, and nothing is sent."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(shared=False, bind=True)
    def inner(self: celery.Task) -> str:
        runs.record(self)
        return "inner"

    @app.task(shared=False)
    def outer() -> str:
        eager = inner.apply(task_id="inner-id")
        try:
            eager.get()  # Celery refuses even an EagerResult's get() in a worker child
        except RuntimeError as exc:
            assert str(exc) == celery.result.E_WOULDBLOCK
        else:  # pragma: no cover - the assertion below reports it
            return "get() did not refuse"
        return str(eager.result)

    with simq.Simulation(app) as sim:
        result = outer.delay()
        assert result.get() == "inner"
        assert [e.task_id for e in sim.history.where(kind="published")] == [result.id]
        assert not sim.history.where(kind="state", task_id="inner-id")
    seen = runs.requests[0]
    # 5.5's Task.apply sets no parent_id/root_id (5.6+ takes them from the calling task).
    expected = (result.id, result.id) if CELERY_VERSION >= (5, 6) else (None, None)
    assert (seen["parent_id"], seen["root_id"]) == expected
    assert seen["is_eager"] is True


# -- outcomes --------------------------------------------------------------------------


def test_failure_is_captured_in_the_result(where: Where) -> None:
    """A raising body gives FAILURE; get() raises, get(propagate=False) returns it."""
    app = simq.App("proj")

    @app.task(shared=False)
    def boom() -> None:
        raise KeyError("k")

    with where(app):
        result = boom.apply()
    assert result.state == states.FAILURE
    assert isinstance(result.result, KeyError)
    assert "KeyError" in (result.traceback or "")
    assert result.failed() and result.ready() and not result.successful()
    with pytest.raises(KeyError):
        result.get()
    assert isinstance(result.get(propagate=False), KeyError)


@pytest.mark.parametrize(
    ("raised", "state"),
    [(Reject("no"), states.REJECTED), (Ignore(), states.IGNORED)],
)
def test_reject_and_ignore_give_eager_only_states(
    where: Where, raised: Exception, state: str
) -> None:
    """Reject gives REJECTED and Ignore IGNORED; get() returns None (§1.7 E3, exp8)."""
    app = simq.App("proj")

    @app.task(shared=False)
    def job() -> None:
        raise raised

    with where(app):
        result = job.apply()
    assert result.state == state
    assert result.result is raised
    assert result.get() is None
    assert result.ready() and not result.failed() and not result.successful()


def test_throw_true_propagates_the_exception(where: Where) -> None:
    """apply(throw=True) re-raises the task's exception (§8 #22)."""
    app = simq.App("proj")

    @app.task(shared=False)
    def boom() -> None:
        raise KeyError("k")

    with where(app), pytest.raises(KeyError):
        boom.apply(throw=True)


def test_task_eager_propagates_is_the_default_throw(where: Where) -> None:
    """task_eager_propagates=True makes apply() re-raise; throw=False overrides it."""
    app = simq.App("proj", task_eager_propagates=True)

    @app.task(shared=False)
    def boom() -> None:
        raise KeyError("k")

    with where(app):
        with pytest.raises(KeyError):
            boom.apply()
        assert boom.apply(throw=False).state == states.FAILURE


# -- storing eager results (§1.7 E5) ---------------------------------------------------


def test_eager_results_are_not_stored_by_default() -> None:
    """Without store_eager_result the simulation's backend has nothing for the id."""
    app = simq.App("proj")

    @app.task(shared=False)
    def one() -> int:
        return 1

    with simq.Simulation(app) as sim:
        result = one.apply()
        assert app.AsyncResult(result.id).state == states.PENDING
        assert not sim.history.where(kind="state")


def test_store_eager_result_stores_unless_ignored() -> None:
    """store_eager_result stores SUCCESS in the simulation's backend; a per-call
    ignore_result wins (§8 #23)."""
    app = simq.App("proj", task_store_eager_result=True)

    @app.task(shared=False)
    def one() -> int:
        return 1

    with simq.Simulation(app) as sim:
        stored = one.apply()
        assert app.AsyncResult(stored.id).state == states.SUCCESS
        assert app.AsyncResult(stored.id).result == 1
        ignored = one.apply(ignore_result=True)
        assert app.AsyncResult(ignored.id).state == states.PENDING
        writes = [(e.task_id, e["state"]) for e in sim.history.where(kind="state")]
        assert writes == [(stored.id, states.SUCCESS)]
        assert not sim.history.where(kind="published")


def test_store_eager_result_outside_a_simulation_names_the_fix() -> None:
    """Outside a simulation a simq.App has no store: storing an eager result raises
    NoActiveSimulation (apply() itself works, see above)."""
    app = simq.App("proj", task_store_eager_result=True)

    @app.task(shared=False)
    def one() -> int:
        return 1

    with pytest.raises(simq.exceptions.NoActiveSimulation, match="exists only inside a simulation"):
        one.apply(throw=True)


# -- retries (§1.7, §4.5) --------------------------------------------------------------


def flaky_app(**settings: Any) -> tuple[celery.Celery, celery.Task, Runs]:
    app = simq.App("proj", **settings)
    runs = Runs()

    @app.task(shared=False, bind=True, max_retries=2, default_retry_delay=100)
    def flaky(self: celery.Task, x: int) -> None:
        runs.record(self)
        raise self.retry(exc=ValueError(f"boom {self.request.retries}"))

    return app, flaky, runs


def test_eager_retries_run_immediately_with_the_same_id(where: Where) -> None:
    """Retries recurse at once with the same id; the last exc is the FAILURE (exp1)."""
    app, flaky, runs = flaky_app()
    with where(app):
        result = flaky.apply((1,), task_id="tid")
    assert [r["retries"] for r in runs.requests] == [0, 1, 2]
    assert {r["id"] for r in runs.requests} == {"tid"}
    assert result.id == "tid"
    assert result.state == states.FAILURE
    assert repr(result.result) == "ValueError('boom 2')"


def test_eager_retry_ends_in_success_when_the_body_recovers(where: Where) -> None:
    """An eager retry that succeeds returns the value of the last run, at once: a
    countdown does not wait (inside a simulation no virtual time passes)."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(shared=False, bind=True)
    def recovers(self: celery.Task) -> int:
        runs.record(self)
        if self.request.retries < 2:
            raise self.retry(countdown=3600)
        return 42

    with where(app):
        result = recovers.apply()
    assert (result.state, result.get()) == (states.SUCCESS, 42)
    assert len(runs.requests) == 3


@pytest.mark.parametrize("how", ["throw", "setting"])
def test_retry_propagates_when_throwing(where: Where, how: str) -> None:
    """With throw=True or task_eager_propagates the first Retry escapes (§1.7 E2)."""
    settings = {"task_eager_propagates": True} if how == "setting" else {}
    app, flaky, runs = flaky_app(**settings)
    options = {"throw": True} if how == "throw" else {}
    with where(app), pytest.raises(Retry, match=r"^Retry in 100s: ValueError\('boom 0'\)$"):
        flaky.apply((1,), **options)
    assert len(runs.requests) == 1


# -- task_always_eager -----------------------------------------------------------------


def test_always_eager_app_is_refused_by_the_simulation() -> None:
    """task_always_eager would run every call in the caller and bypass the simulation:
    Simulation refuses to start, and the app is left as it was."""
    app = simq.App("proj", task_always_eager=True)

    @app.task(shared=False)
    def one() -> int:
        return 1

    sim = simq.Simulation(app)
    with pytest.raises(SimqError, match=r"has task_always_eager=True.*task_always_eager = False"):
        sim.start()
    assert not sim.active
    assert app.conf.task_always_eager is True
    assert app.conf.broker_url == "simq://"
