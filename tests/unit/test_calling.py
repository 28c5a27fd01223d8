"""Tests for calling tasks: __call__, delay, apply_async options, request, hooks, states."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import celery
import celery.exceptions
import pytest
from kombu.exceptions import EncodeError

import simq
from simq.exceptions import NoActiveSimulation

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)


def published(sim: simq.Simulation, task_id: str) -> simq.Event:
    (event,) = sim.history.where(kind="published", task_id=task_id)
    return event


def started(sim: simq.Simulation, task_id: str) -> simq.Event:
    return sim.history.where(kind="started", task_id=task_id).first()


MISSING = "<missing>"  # a request field the Context does not have at all


class Recorder:
    """A task body that keeps a copy of the request it ran with, by task id."""

    FIELDS = (
        "id", "task", "args", "kwargs", "retries", "is_eager", "called_directly", "eta",
        "expires", "delivery_info", "hostname", "root_id", "parent_id", "correlation_id",
        "timelimit", "time_limit", "soft_time_limit", "ignore_result", "headers", "shadow",
    )  # fmt: skip

    def __init__(self, app: celery.Celery) -> None:
        self.requests: dict[str | None, dict[str, Any]] = {}
        recorder = self

        @app.task(shared=False, bind=True, name="proj.record")
        def record(self: celery.Task, *args: Any, **kwargs: Any) -> str | None:
            request = self.request
            seen = {name: getattr(request, name, MISSING) for name in Recorder.FIELDS}
            seen["__dict__"] = dict(vars(request))
            recorder.requests[request.id] = seen
            return request.id

        self.task = record


# -- calling directly (§1.4) -----------------------------------------------------------


def test_direct_call_runs_the_body_in_process_without_a_message() -> None:
    """task(...) runs the body now with called_directly True and id None, sending nothing."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app) as sim:
        assert recorder.task(1, k=2) is None
        assert not sim.history.where(kind="published")
        assert not sim.history.where(kind="state")
    # A direct call pushes a bare Context: no id, no task name (celery/app/task.py
    # Task.__call__ and Context's class defaults).
    seen = recorder.requests[None]
    assert seen["called_directly"] is True
    assert seen["is_eager"] is False
    assert seen["task"] == MISSING
    assert seen["args"] == (1,)
    assert seen["kwargs"] == {"k": 2}


def test_direct_call_outside_a_simulation_works() -> None:
    """A direct call needs no simulation at all."""
    app = simq.App("proj")

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    assert add(2, 3) == 5


# -- delay and apply_async (§1.5) ------------------------------------------------------


def test_delay_outside_a_simulation_says_how_to_start_one() -> None:
    """delay() on a simq.App with no active simulation raises NoActiveSimulation naming the fix."""
    app = simq.App("proj")

    @app.task(shared=False, name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(
        NoActiveSimulation,
        match=(
            r"^this app's broker is simq's simulated broker, which exists only inside a "
            r"simulation; use `with simq\.Simulation\(app\) as sim:` around the call, or "
            r"configure a real broker_url for use outside simq$"
        ),
    ):
        add.delay(1, 2)


def test_delay_is_apply_async_with_args_and_kwargs() -> None:
    """delay(*args, **kwargs) sends the same call as apply_async(args, kwargs)."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app):
        first = recorder.task.delay(1, 2, k=3)
        second = recorder.task.apply_async((1, 2), {"k": 3})
        first.get()
        second.get()
    assert recorder.requests[first.id]["args"] == recorder.requests[second.id]["args"] == [1, 2]
    assert recorder.requests[first.id]["kwargs"] == {"k": 3}


def test_arguments_are_serialized_at_publish() -> None:
    """Arguments travel as JSON: a tuple arrives as a list (§1.12)."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app):
        result = recorder.task.delay((1, 2), nested={"t": (3,)})
        result.get()
    seen = recorder.requests[result.id]
    assert seen["args"] == [[1, 2]]
    assert seen["kwargs"] == {"nested": {"t": [3]}}


def test_unserializable_argument_raises_encode_error_and_publishes_nothing() -> None:
    """An argument JSON cannot encode fails at the call; no message is published."""
    app = simq.App("proj")

    @app.task(shared=False)
    def take(x: Any) -> None: ...

    with simq.Simulation(app) as sim:
        with pytest.raises(EncodeError, match=r"^Object of type object is not JSON serializable$"):
            take.delay(object())
        assert not sim.history.where(kind="published")


def test_countdown_delays_the_start() -> None:
    """countdown=N makes the message's eta now+N and the task starts N seconds later."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app) as sim:
        result = recorder.task.apply_async(countdown=30)
        result.get()
        assert published(sim, result.id)["eta"] == "2030-01-01T00:00:30+00:00"
        assert started(sim, result.id).time - published(sim, result.id).time == 30
    assert recorder.requests[result.id]["eta"] == "2030-01-01T00:00:30+00:00"


def test_eta_sets_the_start_time() -> None:
    """eta=datetime holds the task until that virtual instant."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app) as sim:
        when = sim.now + dt.timedelta(minutes=5)
        result = recorder.task.apply_async(eta=when)
        result.get()
        assert started(sim, result.id).at == when
    assert recorder.requests[result.id]["eta"] == when.isoformat()


def test_countdown_wins_over_eta() -> None:
    """When both are given, countdown overwrites eta, as amqp.py does (§1.5)."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app) as sim:
        result = recorder.task.apply_async(eta=sim.now + dt.timedelta(hours=1), countdown=5)
        result.get()
        assert sim.elapsed == 5
        assert published(sim, result.id)["eta"] == "2030-01-01T00:00:05+00:00"


def test_expires_is_an_absolute_iso_timestamp_in_the_request() -> None:
    """expires=seconds becomes an absolute ISO string in the header and request (§1.12)."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app) as sim:
        result = recorder.task.apply_async(expires=90)
        result.get()
        assert published(sim, result.id)["expires"] == "2030-01-01T00:01:30+00:00"
    assert recorder.requests[result.id]["expires"] == "2030-01-01T00:01:30+00:00"


def test_expired_task_is_revoked_on_receipt() -> None:
    """A task whose expires passed before it could start is REVOKED('expired') (§1.5)."""
    app = simq.App("proj")

    @app.task(shared=False)
    def job() -> int:
        return 1

    with simq.Simulation(app) as sim:
        result = job.apply_async(countdown=60, expires=10)
        with pytest.raises(celery.exceptions.TaskRevokedError, match=r"^expired$"):
            result.get()
        assert sim.history.where(kind="revoked", task_id=result.id).first()["reason"] == "expired"
        assert not sim.history.where(kind="started", task_id=result.id)


def test_queue_routing_key_and_priority_reach_the_message() -> None:
    """queue and priority are the message's routing and request.delivery_info.

    queue="fast" names a direct queue, so Celery publishes to the default (anonymous)
    exchange with the queue's name as routing key and drops the routing_key option
    (celery/app/amqp.py send_task_message: "convert to anon-exchange").
    """
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app) as sim:
        sim.add_worker(name="fast", queues=["fast"])
        result = recorder.task.apply_async(queue="fast", routing_key="fast.key", priority=7)
        result.get()
        event = published(sim, result.id)
        assert (event["queue"], event["priority"]) == ("fast", 7)
        assert started(sim, result.id).worker == "fast"
    info = recorder.requests[result.id]["delivery_info"]
    assert (info["exchange"], info["routing_key"]) == ("", "fast")
    assert info["priority"] == 7


def test_task_id_option_names_the_task() -> None:
    """task_id= is the id of the message, the result and the request."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app) as sim:
        result = recorder.task.apply_async(task_id="my-id")
        assert result.id == "my-id"
        assert result.get() == "my-id"
        assert published(sim, "my-id")["task"] == "proj.record"


def test_headers_become_request_headers_and_attributes() -> None:
    """Custom headers are request.headers and also request attributes (§1.5)."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app):
        result = recorder.task.apply_async(headers={"x-custom": "v", "tenant": 4})
        result.get()
    seen = recorder.requests[result.id]
    assert seen["headers"] == {"x-custom": "v", "tenant": 4}
    assert seen["__dict__"]["x-custom"] == "v"
    assert seen["__dict__"]["tenant"] == 4


def test_ignore_result_stores_nothing_and_get_returns_none() -> None:
    """ignore_result=True: AsyncResult.ignored, get() returns None, no state is stored."""
    app = simq.App("proj")

    @app.task(shared=False)
    def job() -> int:
        return 1

    with simq.Simulation(app) as sim:
        result = job.apply_async(ignore_result=True)
        assert result.ignored is True
        assert result.get() is None
        sim.run()
        assert sim.history.where(kind="succeeded", task_id=result.id)
        assert not sim.history.where(kind="state", task_id=result.id)
        assert app.AsyncResult(result.id).state == "PENDING"


def test_time_limits_reach_the_request() -> None:
    """time_limit/soft_time_limit are request.timelimit [hard, soft] and unpacked (§1.12)."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app):
        result = recorder.task.apply_async(time_limit=30, soft_time_limit=20)
        result.get()
    seen = recorder.requests[result.id]
    assert list(seen["timelimit"]) == [30, 20]
    if CELERY_VERSION >= (5, 7):  # 5.5's Context keeps only the timelimit pair (app/task.py)
        assert (seen["time_limit"], seen["soft_time_limit"]) == (30, 20)
    else:
        assert (seen["time_limit"], seen["soft_time_limit"]) == (MISSING, MISSING)


def test_soft_limit_above_hard_limit_is_refused() -> None:
    """A task whose soft_time_limit exceeds its time_limit cannot be sent (§1.2)."""
    app = simq.App("proj")

    @app.task(shared=False, time_limit=10, soft_time_limit=20)
    def job() -> None: ...

    with simq.Simulation(app) as sim:
        with pytest.raises(
            ValueError, match=r"^soft_time_limit must be less than or equal to time_limit$"
        ):
            job.delay()
        assert not sim.history.where(kind="published")


def test_shadow_names_the_call() -> None:
    """shadow= is the message's shadow header and request.shadow (§1.5)."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app):
        result = recorder.task.apply_async(shadow="display-name")
        result.get()
    assert recorder.requests[result.id]["shadow"] == "display-name"


# -- typing (§1.2) ---------------------------------------------------------------------


def test_typing_rejects_wrong_arguments_at_the_call() -> None:
    """With typing on (the default), a call that does not fit the signature raises TypeError."""
    app = simq.App("proj")

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    with simq.Simulation(app) as sim:
        with pytest.raises(
            TypeError, match=r"^add\(\) missing 1 required positional argument: 'y'$"
        ):
            add.delay(1)
        with pytest.raises(TypeError, match=r"^add\(\) got an unexpected keyword argument 'z'$"):
            add.delay(1, 2, z=3)
        assert not sim.history.where(kind="published")


def test_typing_false_sends_the_bad_call() -> None:
    """typing=False sends the call; the body fails in the worker instead."""
    app = simq.App("proj")

    @app.task(shared=False, typing=False)
    def add(x: int, y: int) -> int:
        return x + y

    with simq.Simulation(app), pytest.raises(TypeError):
        add.delay(1).get()


def test_strict_typing_false_turns_checks_off_for_the_app() -> None:
    """Celery(strict_typing=False) publishes calls that do not fit the signature.

    strict_typing is an argument of the Celery constructor, not a setting.
    """
    app = celery.Celery("proj", strict_typing=False)

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    with simq.Simulation(app) as sim:
        result = add.delay(1)
        assert published(sim, result.id)["task"] == add.name


# -- the request in a worker (§1.12) ---------------------------------------------------


def test_request_fields_in_a_worker() -> None:
    """Inside a simulated worker the request has the §1.12 worker values."""
    app = simq.App("proj")
    recorder = Recorder(app)
    with simq.Simulation(app) as sim:
        result = recorder.task.apply_async((1, 2), {"k": "v"})
        result.get()
    seen = recorder.requests[result.id]
    assert seen["id"] == result.id
    assert seen["task"] == "proj.record"
    assert seen["args"] == [1, 2]
    assert seen["kwargs"] == {"k": "v"}
    assert seen["retries"] == 0
    assert seen["is_eager"] is False
    assert seen["called_directly"] is False
    assert seen["eta"] is None
    assert seen["expires"] is None
    assert seen["delivery_info"] == {
        "exchange": "",
        "routing_key": "celery",
        "priority": 0,  # kombu's Producer.publish(priority=0) default
        "redelivered": False,
    }
    assert seen["hostname"] == "worker-1" == next(iter(sim.workers))
    assert seen["root_id"] == result.id
    assert seen["parent_id"] is None
    assert seen["correlation_id"] == result.id
    assert seen["ignore_result"] is False
    assert seen["headers"] is None


def test_task_sent_from_a_task_has_parent_and_root_ids() -> None:
    """A task sent from a running task gets parent_id = that task and its root (§5.5)."""
    app = simq.App("proj")
    recorder = Recorder(app)

    @app.task(shared=False, name="proj.outer")
    def outer() -> str:
        return recorder.task.delay().id

    @app.task(shared=False, name="proj.top")
    def top() -> str:
        return outer.delay().id

    with simq.Simulation(app) as sim:
        root = top.delay()
        middle_id = root.get()
        sim.run()
        inner_id = app.AsyncResult(middle_id).get()
        inner = recorder.requests[inner_id]
        assert inner["parent_id"] == middle_id
        assert inner["root_id"] == root.id
        assert published(sim, inner_id)["parent_id"] == middle_id
        assert published(sim, middle_id)["root_id"] == root.id


# -- update_state (§1.10) --------------------------------------------------------------


def test_update_state_shows_custom_states_during_the_run() -> None:
    """A task's PROGRESS state is seen while it runs, then SUCCESS (exp7)."""
    app = simq.App("proj")

    @app.task(shared=False, bind=True)
    def crunch(self: celery.Task) -> str:
        self.update_state(state="PROGRESS", meta={"done": 1})
        time.sleep(10)
        self.update_state(state="PROGRESS", meta={"done": 2})
        time.sleep(10)
        return "finished"

    with simq.Simulation(app) as sim:
        result = crunch.delay()
        assert app.AsyncResult(result.id).state == "PENDING"
        sim.advance(5)
        first = app.AsyncResult(result.id)
        assert (first.state, first.info) == ("PROGRESS", {"done": 1})
        sim.advance(10)
        second = app.AsyncResult(result.id)
        assert (second.state, second.result) == ("PROGRESS", {"done": 2})
        assert not second.ready()
        assert result.get() == "finished"
        assert sim.elapsed == 20
        writes = [e["state"] for e in sim.history.where(kind="state", task_id=result.id)]
        assert writes == ["PROGRESS", "PROGRESS", "SUCCESS"]


# -- hooks (§1.11) ---------------------------------------------------------------------


def hooked_app(log: list[tuple[Any, ...]]) -> tuple[celery.Celery, type[celery.Task]]:
    """An app whose base task logs each hook with the stored state at that moment."""
    app = simq.App("proj")

    class Hooked(celery.Task):
        def state(self, task_id: str) -> str:
            return app.AsyncResult(task_id).state

        def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
            log.append(("before_start", self.state(task_id)))

        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            log.append(("on_success", retval, self.state(task_id)))

        def on_failure(
            self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
        ) -> None:
            log.append(("on_failure", type(exc).__name__, self.state(task_id)))

        def on_retry(
            self, exc: BaseException | None, task_id: str | None, args: Any, kwargs: Any, einfo: Any
        ) -> None:
            log.append(("on_retry", type(exc).__name__, self.state(task_id or "")))

        def after_return(
            self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
        ) -> None:
            log.append(("after_return", status))

    return app, Hooked


def test_success_hooks_run_in_celerys_order() -> None:
    """Success: before_start, run, on_success (SUCCESS stored), after_return (§1.11)."""
    log: list[tuple[Any, ...]] = []
    app, hooked = hooked_app(log)

    @app.task(shared=False, base=hooked)
    def job() -> int:
        log.append(("run",))
        return 7

    with simq.Simulation(app):
        job.delay().get()
    assert log == [
        ("before_start", "PENDING"),
        ("run",),
        ("on_success", 7, "SUCCESS"),
        ("after_return", "SUCCESS"),
    ]


def test_failure_hooks_run_in_celerys_order() -> None:
    """Failure: errback, on_failure (FAILURE stored), after_return (§1.11)."""
    log: list[tuple[Any, ...]] = []
    app, hooked = hooked_app(log)

    @app.task(shared=False, name="proj.errback")
    def errback(request: Any, exc: BaseException, traceback: Any) -> None:
        log.append(("errback", type(exc).__name__))

    @app.task(shared=False, base=hooked)
    def job() -> None:
        log.append(("run",))
        raise KeyError("boom")

    with simq.Simulation(app), pytest.raises(KeyError):
        job.apply_async(link_error=errback.s()).get()
    assert log == [
        ("before_start", "PENDING"),
        ("run",),
        ("errback", "KeyError"),
        ("on_failure", "KeyError", "FAILURE"),
        ("after_return", "FAILURE"),
    ]


def test_retry_runs_on_retry_and_no_after_return() -> None:
    """Retry: RETRY stored, on_retry, no after_return; the retry then succeeds (§1.11)."""
    log: list[tuple[Any, ...]] = []
    app, hooked = hooked_app(log)

    @app.task(shared=False, bind=True, base=hooked)
    def job(self: celery.Task) -> int:
        log.append(("run", self.request.retries))
        if self.request.retries == 0:
            raise self.retry(exc=ValueError("again"), countdown=1)
        return 2

    with simq.Simulation(app):
        assert job.delay().get() == 2
    assert log == [
        ("before_start", "PENDING"),
        ("run", 0),
        ("on_retry", "ValueError", "RETRY"),
        ("before_start", "RETRY"),
        ("run", 1),
        ("on_success", 2, "SUCCESS"),
        ("after_return", "SUCCESS"),
    ]
