"""Tests for eager execution: Task.apply() and task_always_eager (CELERY_SEMANTICS.md §1.7)."""

from __future__ import annotations

from typing import Any

import celery
import pytest

import simq
from simq import states
from simq.exceptions import EncodeError, Ignore, Reject, Retry


class Runs:
    """What each run of a recording task saw in its request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def record(self, task: simq.Task) -> None:
        r = task.request
        self.requests.append({
            "id": r.id, "args": r.args, "kwargs": r.kwargs, "retries": r.retries,
            "is_eager": r.is_eager, "called_directly": r.called_directly,
            "delivery_info": r.delivery_info, "timelimit": r.timelimit,
            "parent_id": r.parent_id, "root_id": r.root_id, "headers": r.headers,
            "ignore_result": r.ignore_result,
        })  # fmt: skip


def test_apply_runs_now_and_returns_an_eager_result() -> None:
    """apply() runs the body in process and returns a ready EagerResult."""
    app = simq.App("proj")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.apply((2, 3))
    assert isinstance(result, simq.EagerResult)
    assert (result.state, result.result, result.get()) == (states.SUCCESS, 5, 5)
    assert result.ready() and result.successful() and not result.failed()


def test_apply_needs_no_simulation_and_publishes_nothing_inside_one() -> None:
    """apply() sends no message, even while a simulation is active."""
    app = simq.App("proj")

    @app.task
    def one() -> int:
        return 1

    with simq.Simulation(app) as sim:
        assert one.apply().get() == 1
        assert not sim.history.where(kind="published")


def test_apply_request_is_eager() -> None:
    """The eager request: given id, is_eager True, called_directly False, root = own id."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(bind=True)
    def job(self: simq.Task, *args: Any, **kwargs: Any) -> None:
        runs.record(self)

    job.apply((1, (2,)), {"k": 3}, task_id="eager-1", headers={"h": 1})
    seen = runs.requests[0]
    assert seen["id"] == "eager-1"
    assert seen["args"] == [1, (2,)]  # apply() does not serialize
    assert seen["kwargs"] == {"k": 3}
    assert seen["retries"] == 0
    assert seen["is_eager"] is True
    assert seen["called_directly"] is False
    assert seen["root_id"] == "eager-1"
    assert seen["parent_id"] is None
    assert seen["headers"] == {"h": 1}


def test_apply_simulates_delivery_info() -> None:
    """delivery_info is {'is_eager': True, exchange, routing_key, priority} (§8 #24)."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(bind=True)
    def job(self: simq.Task) -> None:
        runs.record(self)

    job.apply(exchange="ex", routing_key="rk", priority=4)
    job.apply()
    assert runs.requests[0]["delivery_info"] == {
        "is_eager": True, "exchange": "ex", "routing_key": "rk", "priority": 4,
    }  # fmt: skip
    assert runs.requests[1]["delivery_info"] == {
        "is_eager": True, "exchange": None, "routing_key": None, "priority": None,
    }  # fmt: skip


def test_apply_timelimit_comes_from_task_attributes() -> None:
    """request.timelimit is [time_limit, soft_time_limit] when the task sets either."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(bind=True, time_limit=30, soft_time_limit=20)
    def job(self: simq.Task) -> None:
        runs.record(self)

    job.apply()
    assert list(runs.requests[0]["timelimit"]) == [30, 20]


def test_apply_inside_a_task_has_parent_and_root() -> None:
    """A task applied from a running task gets it as parent and shares its root (§5.5)."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(bind=True)
    def inner(self: simq.Task) -> None:
        runs.record(self)

    @app.task
    def outer() -> None:
        inner.apply(task_id="inner-id")

    outer.apply(task_id="outer-id")
    assert runs.requests[0]["parent_id"] == "outer-id"
    assert runs.requests[0]["root_id"] == "outer-id"


# -- outcomes --------------------------------------------------------------------------


def test_failure_is_captured_in_the_result() -> None:
    """A raising body gives FAILURE; get() raises, get(propagate=False) returns it."""
    app = simq.App("proj")

    @app.task
    def boom() -> None:
        raise KeyError("k")

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
def test_reject_and_ignore_give_eager_only_states(raised: Exception, state: str) -> None:
    """Reject gives REJECTED and Ignore IGNORED; get() returns None (§1.7 E3, exp8)."""
    app = simq.App("proj")

    @app.task
    def job() -> None:
        raise raised

    result = job.apply()
    assert result.state == state
    assert result.result is raised
    assert result.get() is None
    assert result.ready() and not result.failed() and not result.successful()


def test_get_of_rejected_eager_result_matches_celery() -> None:
    """EagerResult.get() of a REJECTED result returns what Celery's returns (None)."""
    app = celery.Celery("proj", set_as_current=False)

    @app.task(shared=False)
    def job() -> None:
        raise celery.exceptions.Reject("no")

    assert job.apply().get() is None


def test_throw_true_propagates_the_exception() -> None:
    """apply(throw=True) re-raises the task's exception (§8 #22)."""
    app = simq.App("proj")

    @app.task
    def boom() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        boom.apply(throw=True)


def test_task_eager_propagates_is_the_default_throw() -> None:
    """task_eager_propagates=True makes apply() re-raise; throw=False overrides it."""
    app = simq.App("proj", task_eager_propagates=True)

    @app.task
    def boom() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        boom.apply()
    assert boom.apply(throw=False).state == states.FAILURE


def test_eager_results_are_not_stored_by_default() -> None:
    """Without store_eager_result the backend has nothing for the id (§1.7 E5)."""
    app = simq.App("proj")

    @app.task
    def one() -> int:
        return 1

    result = one.apply()
    assert app.AsyncResult(result.id).state == states.PENDING


def test_store_eager_result_stores_unless_ignored() -> None:
    """store_eager_result stores SUCCESS; a per-call ignore_result wins (§8 #23)."""
    app = simq.App("proj", task_store_eager_result=True)

    @app.task
    def one() -> int:
        return 1

    stored = one.apply()
    assert app.AsyncResult(stored.id).state == states.SUCCESS
    assert app.AsyncResult(stored.id).result == 1
    ignored = one.apply(ignore_result=True)
    assert app.AsyncResult(ignored.id).state == states.PENDING


# -- retries (§1.7, §4.5) --------------------------------------------------------------


def flaky_app(**settings: Any) -> tuple[simq.App, simq.Task, Runs]:
    app = simq.App("proj", **settings)
    runs = Runs()

    @app.task(bind=True, max_retries=2, default_retry_delay=100)
    def flaky(self: simq.Task, x: int) -> None:
        runs.record(self)
        raise self.retry(exc=ValueError(f"boom {self.request.retries}"))

    return app, flaky, runs


def test_eager_retries_run_immediately_with_the_same_id() -> None:
    """Retries recurse at once with the same id; the last exc is the FAILURE (exp1)."""
    _, flaky, runs = flaky_app()
    result = flaky.apply((1,), task_id="tid")
    assert [r["retries"] for r in runs.requests] == [0, 1, 2]
    assert {r["id"] for r in runs.requests} == {"tid"}
    assert result.id == "tid"
    assert result.state == states.FAILURE
    assert repr(result.result) == "ValueError('boom 2')"


def test_eager_retry_ends_in_success_when_the_body_recovers() -> None:
    """An eager retry that succeeds returns the value of the last run."""
    app = simq.App("proj")
    runs = Runs()

    @app.task(bind=True)
    def recovers(self: simq.Task) -> int:
        runs.record(self)
        if self.request.retries < 2:
            raise self.retry(countdown=3600)
        return 42

    result = recovers.apply()
    assert (result.state, result.get()) == (states.SUCCESS, 42)
    assert len(runs.requests) == 3


@pytest.mark.parametrize("how", ["throw", "setting"])
def test_retry_propagates_when_throwing(how: str) -> None:
    """With throw=True or task_eager_propagates the first Retry escapes (§1.7 E2)."""
    settings = {"task_eager_propagates": True} if how == "setting" else {}
    _, flaky, runs = flaky_app(**settings)
    options = {"throw": True} if how == "throw" else {}
    with pytest.raises(Retry, match=r"^Retry in 100s: ValueError\('boom 0'\)$"):
        flaky.apply((1,), **options)
    assert len(runs.requests) == 1


# -- task_always_eager -----------------------------------------------------------------


def test_always_eager_runs_apply_async_in_process() -> None:
    """task_always_eager: apply_async returns an EagerResult; no simulation needed."""
    app = simq.App("proj", task_always_eager=True)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.apply_async((2, 3), countdown=100, expires=1, queue="elsewhere")
    assert isinstance(result, simq.EagerResult)
    assert result.get() == 5


def test_always_eager_roundtrips_arguments() -> None:
    """Under task_always_eager arguments go through the serializer: tuples become lists."""
    app = simq.App("proj", task_always_eager=True)
    runs = Runs()

    @app.task(bind=True)
    def job(self: simq.Task, *args: Any, **kwargs: Any) -> None:
        runs.record(self)

    job.delay((1, 2), t=(3,))
    assert runs.requests[0]["args"] == [[1, 2]]
    assert runs.requests[0]["kwargs"] == {"t": [3]}
    assert runs.requests[0]["is_eager"] is True


def test_always_eager_refuses_unserializable_arguments() -> None:
    """Under task_always_eager an unserializable argument raises EncodeError (§1.7)."""
    app = simq.App("proj", task_always_eager=True)
    calls: list[Any] = []

    @app.task
    def take(x: Any) -> None:
        calls.append(x)

    with pytest.raises(EncodeError, match=r"^Object of type object is not JSON serializable$"):
        take.delay(object())
    assert calls == []


def test_always_eager_checks_typing() -> None:
    """The typing check applies before the eager path too."""
    app = simq.App("proj", task_always_eager=True)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match=r"^add\(\) missing 1 required positional argument: 'y'$"):
        add.delay(1)
