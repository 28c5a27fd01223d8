"""A real ``celery.Celery`` app on the simulation: Celery's own features work unchanged (issue 7).

Each test builds a plain Celery app (never ``simq.App``) configured for a real broker and
result backend that nothing listens on, runs it inside ``simq.Simulation`` and checks
what Celery's own code did there: serialization, task classes and hooks, exceptions
that steer the ack, time limits, extended results, signals, canvas and routing.
"""

from __future__ import annotations

import datetime as dt
import decimal
import time
import uuid
from collections.abc import Callable
from typing import Any

import celery
import celery._state
import pydantic
import pytest
from billiard.einfo import ExceptionInfo
from celery import chain, chord, group, signals, states
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from kombu.exceptions import EncodeError

import simq

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)

#: Broker and backend nothing listens on: reaching them would fail the test.
UNREACHABLE = "redis://127.0.0.1:1/0"


class Order(pydantic.BaseModel):
    id: int
    qty: int


class Receipt(pydantic.BaseModel):
    order_id: int
    total: float


def make_app(name: str = "proj", **settings: Any) -> celery.Celery:
    app = celery.Celery(name, broker=UNREACHABLE, backend=UNREACHABLE, set_as_current=False)
    if settings:
        app.conf.update(settings)
    return app


def kinds(sim: simq.Simulation, task_id: str) -> list[str]:
    return sim.history.where(task_id=task_id).kinds()


# -- serialization (kombu's, through Celery's publish and result paths) -----------------


def test_kombu_json_round_trips_rich_types_through_a_task_and_its_result() -> None:
    """datetime, date, UUID, Decimal and bytes reach the task as themselves and come back
    from the result as themselves (kombu.utils.json's typed encoding)."""
    app = make_app()
    seen: list[list[type]] = []

    @app.task(shared=False)
    def echo(*values: Any) -> dict[str, Any]:
        seen.append([type(v) for v in values])
        return {"values": list(values)}

    values = (
        dt.datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=dt.timezone.utc),
        dt.date(2030, 5, 6),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        decimal.Decimal("10.10"),
        b"\x00raw bytes",
    )
    types = [dt.datetime, dt.date, uuid.UUID, decimal.Decimal, bytes]
    with simq.Simulation(app, seed=1) as sim:
        result = echo.delay(*values)
        out = result.get()
        assert seen == [types]
        assert out == {"values": list(values)}
        assert [type(v) for v in out["values"]] == types
        assert [type(v) for v in app.AsyncResult(result.id).get()["values"]] == types
        # The store holds kombu's json form: typed markers, not str() of the objects.
        (stored,) = sim.history.where(kind="state", task_id=result.id)
        assert stored["result"]["values"][:2] == [
            {"__type__": "datetime", "__value__": "2030-01-02T03:04:05.600000+00:00"},
            {"__type__": "date", "__value__": "2030-05-06"},
        ]


def test_pickle_serializer_on_a_task() -> None:
    """serializer='pickle' on a task (accept_content including pickle) carries what JSON
    cannot: a set arrives as a set; the same call with json fails at the call."""
    app = make_app(accept_content=["json", "pickle"])

    @app.task(shared=False, serializer="pickle")
    def pickled(items: Any) -> list[Any]:
        assert isinstance(items, set)
        return sorted(items)

    @app.task(shared=False)
    def plain(items: Any) -> list[Any]:
        return sorted(items)

    with simq.Simulation(app, seed=1) as sim:
        assert pickled.delay({3, 1, 2}).get() == [1, 2, 3]
        with pytest.raises(EncodeError):
            plain.delay({3, 1, 2})
        assert len(sim.history.where(kind="published")) == 1


@pytest.mark.celery_version(
    min="5.6",
    why="5.5's pydantic_wrapper reads inspect.signature annotations, which this module's "
    "`from __future__ import annotations` leaves as strings: nothing is validated; 5.6+ "
    "resolves them with typing.get_type_hints (app/base.py)",
)
def test_pydantic_task_validates_arguments_and_dumps_its_model_result() -> None:
    """pydantic=True: a dict argument becomes the model, the model result is model_dump()ed,
    and arguments that do not validate fail the task before its body runs."""
    app = make_app()
    ran: list[Any] = []

    @app.task(shared=False, pydantic=True)
    def charge(order: Order) -> Receipt:
        ran.append(order)
        return Receipt(order_id=order.id, total=order.qty * 2.5)

    with simq.Simulation(app, seed=1) as sim:
        assert charge.delay({"id": 7, "qty": 4}).get() == {"order_id": 7, "total": 10.0}
        assert ran == [Order(id=7, qty=4)]
        bad = charge.delay({"id": "seven", "qty": 4})
        with pytest.raises(Exception, match="ValidationError"):
            bad.get()
        assert bad.state == states.FAILURE
        failed = sim.history.where(kind="failed", task_id=bad.id).first()
        assert failed["exception"]["exc_type"] == "ValidationError"
    assert len(ran) == 1


# -- task classes and hooks -------------------------------------------------------------


def test_on_failure_receives_billiard_exception_info() -> None:
    """on_failure(exc, task_id, args, kwargs, einfo) gets the exception and a billiard
    ExceptionInfo: its traceback names the raising line and, as billiard 4 builds it, its
    .exception is an ExceptionWithTraceback wrapping the task's exception (.exc)."""
    app = make_app()
    seen: list[tuple[Any, ...]] = []

    class Hooked(celery.Task):
        def on_failure(
            self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
        ) -> None:
            seen.append((type(einfo), exc, einfo.exception.exc, einfo.type, task_id, args, kwargs))
            seen.append((einfo.traceback,))

    @app.task(shared=False, base=Hooked)
    def boom(x: int) -> None:
        raise KeyError(f"no {x}")

    with simq.Simulation(app, seed=1):
        result = boom.delay(3)
        with pytest.raises(KeyError):
            result.get()
    (einfo_type, exc, wrapped, exc_type, task_id, args, kwargs), (traceback,) = seen
    assert einfo_type is ExceptionInfo
    assert isinstance(exc, KeyError) and exc.args == ("no 3",)
    assert wrapped is exc
    assert exc_type is KeyError
    assert (task_id, list(args), kwargs) == (result.id, [3], {})
    assert 'raise KeyError(f"no {x}")' in traceback


def test_custom_task_call_on_a_base_class_is_used_by_the_worker() -> None:
    """A base class overriding __call__ wraps every run on the simulated worker (Celery's
    tracer calls the task itself, not run(), when __call__ is custom)."""
    app = make_app()
    calls: list[tuple[str, tuple[Any, ...]]] = []

    class Wrapped(celery.Task):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            calls.append((self.request.hostname, args))
            return ("wrapped", super().__call__(*args, **kwargs))

    @app.task(shared=False, base=Wrapped)
    def double(x: int) -> int:
        return 2 * x

    with simq.Simulation(app, seed=1):
        assert double.delay(21).get() == ["wrapped", 42]
    assert calls == [("worker-1", (21,))]


def test_base_subclass_and_task_cls_set_attributes_the_worker_obeys() -> None:
    """base= gives one task a class; Celery(task_cls=) gives every task one. The worker
    obeys the class attributes: acks_late acks after the outcome, early ack before."""

    class LateAck(celery.Task):
        acks_late = True

        def describe(self) -> str:
            return f"late:{self.name}"

    app = celery.Celery(
        "proj", broker=UNREACHABLE, backend=UNREACHABLE, task_cls=LateAck, set_as_current=False
    )

    class EarlyAck(celery.Task):
        acks_late = False

    @app.task(shared=False, bind=True, name="proj.by_task_cls")
    def by_task_cls(self: celery.Task) -> str:
        return self.describe()

    @app.task(shared=False, base=EarlyAck, name="proj.by_base")
    def by_base() -> str:
        return "early"

    assert isinstance(app.tasks["proj.by_task_cls"], LateAck)
    assert isinstance(app.tasks["proj.by_base"], EarlyAck)
    with simq.Simulation(app, seed=1) as sim:
        late = by_task_cls.delay()
        early = by_base.delay()
        assert (late.get(), early.get()) == ("late:proj.by_task_cls", "early")
        assert kinds(sim, late.id)[-3:] == ["state", "succeeded", "acked"]
        assert kinds(sim, early.id)[2:4] == ["started", "acked"]


def test_shared_task_runs_on_the_app_of_the_simulation() -> None:
    """A @shared_task binds to the app being simulated (the current app inside the block)."""

    @celery.shared_task(name="shared.multiply")
    def multiply(x: int, y: int) -> int:
        return x * y

    app = make_app()
    app.finalize()
    assert "shared.multiply" in app.tasks
    with simq.Simulation(app, seed=1) as sim:
        result = multiply.delay(6, 7)
        assert result.get() == 42
        assert sim.history.where(kind="published").first()["task"] == "shared.multiply"
        assert sim.history.where(kind="succeeded", task_id=result.id)


def test_config_from_object_with_a_namespace_django_style() -> None:
    """Settings read Django-style (CELERY_ prefix) steer the simulated run: the default
    queue the worker consumes, late acks, and the broker URL stays what was configured."""

    class Settings:
        CELERY_BROKER_URL = UNREACHABLE
        CELERY_RESULT_BACKEND = UNREACHABLE
        CELERY_TASK_DEFAULT_QUEUE = "orders"
        CELERY_TASK_ACKS_LATE = True
        CELERY_TASK_TRACK_STARTED = True
        TASK_ACKS_LATE = False  # not in the namespace: ignored

    app = celery.Celery("django_proj", set_as_current=False)
    app.config_from_object(Settings, namespace="CELERY")

    @app.task(shared=False)
    def place(order: int) -> str:
        return f"placed {order}"

    with simq.Simulation(app, seed=1) as sim:
        result = place.delay(5)
        assert result.get() == "placed 5"
        assert sim.history.where(kind="published").first()["queue"] == "orders"
        assert sim.workers["worker-1"].queues == ["orders"]
        states_written = [e["state"] for e in sim.history.where(kind="state")]
        assert states_written == [states.STARTED, states.SUCCESS]
        assert kinds(sim, result.id)[-1] == "acked"  # acks_late from the namespace
    assert app.conf.broker_url == UNREACHABLE
    assert app.conf.task_acks_late is True


# -- exceptions that steer the message ---------------------------------------------------


def test_reject_without_requeue_ends_failure_and_ignore_leaves_the_state_alone() -> None:
    """Reject(requeue=False): Celery stores FAILURE(Reject) and rejects the message
    (celery/worker/request.py on_failure, #4222). Ignore: nothing stored, message acked."""
    app = make_app(task_acks_late=True)

    @app.task(shared=False)
    def refuse() -> None:
        raise Reject("bad input", requeue=False)

    @app.task(shared=False)
    def skip() -> None:
        raise Ignore()

    with simq.Simulation(app, seed=1) as sim:
        rejected = refuse.delay()
        if CELERY_VERSION >= (5, 7):
            with pytest.raises(Reject):
                rejected.get()
            assert rejected.state == states.FAILURE
            stored = ["state"]
        else:
            # 5.5's Request.on_failure rejects without storing FAILURE (#4222 is new in 5.7).
            with pytest.raises(simq.exceptions.SimulationIdle):
                rejected.get()
            assert rejected.state == states.PENDING
            stored = []
        ignored = skip.delay()
        sim.run()
        assert ignored.state == states.PENDING
        assert kinds(sim, rejected.id)[2:] == ["started", "declined", *stored, "rejected"]
        assert sim.history.where(kind="declined", task_id=rejected.id).first()["requeue"] is False
        assert kinds(sim, ignored.id)[2:] == ["started", "ignored", "acked"]
        assert not sim.history.where(kind="state", task_id=ignored.id)
        assert len(sim.history.where(kind="started")) == 2  # neither ran again


def test_a_task_can_catch_soft_time_limit_exceeded() -> None:
    """SoftTimeLimitExceeded is raised inside the task where it stands (mid-sleep, in
    virtual time); a task that catches it cleans up and succeeds."""
    app = make_app()

    @app.task(shared=False, soft_time_limit=5)
    def careful() -> str:
        started = time.time()
        try:
            time.sleep(60)
        except SoftTimeLimitExceeded:
            return f"cleaned up after {time.time() - started:.0f}s"
        return "finished"

    with simq.Simulation(app, seed=1) as sim:
        result = careful.delay()
        assert result.get() == "cleaned up after 5s"
        assert result.state == states.SUCCESS
        limit = sim.history.where(kind="time-limit", task_id=result.id).first()
        assert (limit["which"], limit["limit"], limit.time - sim.started_at) == ("soft", 5, 5.0)
        assert sim.elapsed == 5


def test_result_extended_stores_name_args_and_worker() -> None:
    """result_extended=True stores the task name, args, kwargs, worker and queue."""
    app = make_app(result_extended=True)

    @app.task(shared=False, name="proj.add")
    def add(x: int, y: int = 0) -> int:
        return x + y

    with simq.Simulation(app, seed=1):
        result = add.apply_async((1,), {"y": 2})
        assert result.get() == 3
        fresh = app.AsyncResult(result.id)
        assert (fresh.name, fresh.args, fresh.kwargs) == ("proj.add", [1], {"y": 2})
        assert (fresh.worker, fresh.queue, fresh.retries) == ("worker-1", "celery", 0)


# -- signals ------------------------------------------------------------------------------


class Heard:
    """Receivers for a set of signals, each logging (signal name, what it saw)."""

    def __init__(self, **signals_by_name: Any) -> None:
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.receivers: list[tuple[Any, Callable[..., None]]] = []
        for name, signal in signals_by_name.items():
            self.receivers.append((signal, self._receiver(name)))

    def _receiver(self, name: str) -> Callable[..., None]:
        def receive(sender: Any = None, **kwargs: Any) -> None:
            # The task id a signal is about, read when it fires (a task's request is
            # popped after the run): task_id=, request=, the sending task's request, or
            # the message headers of a publish.
            request = kwargs.get("request") or getattr(sender, "request", None)
            headers = kwargs.get("headers") or {}
            about = kwargs.get("task_id") or getattr(request, "id", None) or headers.get("id")
            self.log.append((name, {"sender": sender, "about": about, **kwargs}))

        return receive

    def connect(self) -> None:
        for signal, receiver in self.receivers:
            signal.connect(receiver, weak=False)

    def disconnect(self) -> None:
        for signal, receiver in self.receivers:
            signal.disconnect(receiver)

    def names(self) -> list[str]:
        return [name for name, _ in self.log]

    def only(self, name: str) -> list[dict[str, Any]]:
        return [seen for n, seen in self.log if n == name]


def test_signals_fire_with_what_celery_sends() -> None:
    """Celery's signals fire on the simulation in Celery's order, with its arguments."""
    app = make_app()

    @app.task(shared=False, name="proj.ok")
    def ok(x: int) -> int:
        return x * 2

    @app.task(shared=False, name="proj.bad")
    def bad() -> None:
        raise ValueError("bad")

    @app.task(shared=False, bind=True, name="proj.again", max_retries=1)
    def again(self: celery.Task) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=1)
        return "second"

    heard = Heard(
        worker_ready=signals.worker_ready,
        worker_process_init=signals.worker_process_init,
        before_task_publish=signals.before_task_publish,
        after_task_publish=signals.after_task_publish,
        task_received=signals.task_received,
        task_prerun=signals.task_prerun,
        task_postrun=signals.task_postrun,
        task_success=signals.task_success,
        task_failure=signals.task_failure,
        task_retry=signals.task_retry,
    )
    heard.connect()
    try:
        with simq.Simulation(app, seed=1) as sim:
            good = ok.delay(21)
            assert good.get() == 42
            failed = bad.delay()
            with pytest.raises(ValueError):
                failed.get()
            retried = again.delay()
            assert retried.get() == "second"
            sim.run()
    finally:
        heard.disconnect()

    (ready,) = heard.only("worker_ready")
    assert ready["sender"].hostname == "worker-1"
    assert len(heard.only("worker_process_init")) == 1  # one child, initialised once
    assert heard.names()[:2] == ["worker_ready", "before_task_publish"]

    before = heard.only("before_task_publish")
    assert [b["sender"] for b in before] == ["proj.ok", "proj.bad", "proj.again", "proj.again"]
    assert before[0]["headers"]["id"] == good.id
    assert before[0]["body"][0] == (21,)  # the body before serialization
    assert [a["routing_key"] for a in heard.only("after_task_publish")] == ["celery"] * 4

    received = heard.only("task_received")
    assert [r["request"].id for r in received][:2] == [good.id, failed.id]
    assert received[0]["sender"].hostname == "worker-1"

    # The good task: received, prerun, success, postrun, in that order.
    for_good = [name for name, seen in heard.log if seen["about"] == good.id]
    assert for_good == [
        "before_task_publish",
        "after_task_publish",
        "task_received",
        "task_prerun",
        "task_success",
        "task_postrun",
    ]
    (post,) = [p for p in heard.only("task_postrun") if p["task_id"] == good.id]
    assert (post["retval"], post["state"], list(post["args"])) == (42, states.SUCCESS, [21])
    assert [s["result"] for s in heard.only("task_success")] == [42, "second"]

    (failure,) = heard.only("task_failure")
    assert failure["task_id"] == failed.id
    assert isinstance(failure["exception"], ValueError)
    assert isinstance(failure["einfo"], ExceptionInfo)

    (retry,) = heard.only("task_retry")
    assert retry["request"].id == retried.id
    assert retry["sender"].name == "proj.again"
    assert "Retry in 1s" in str(retry["reason"])

    # Every receiver was disconnected: nothing more is heard.
    count = len(heard.log)
    with simq.Simulation(app, seed=1):
        ok.delay(1).get()
    assert len(heard.log) == count


# -- canvas --------------------------------------------------------------------------------


def test_chain_group_and_chord_give_the_right_results() -> None:
    """Celery's canvas runs on the simulated workers and backend (chord counting included)."""
    app = make_app()

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False)
    def total(values: list[int]) -> int:
        return sum(values)

    with simq.Simulation(app, seed=1, concurrency=2) as sim:
        assert chain(add.s(1, 2), add.s(3), add.s(4)).apply_async().get() == 10
        assert group(add.s(i, i) for i in range(4)).apply_async().get() == [0, 2, 4, 6]
        chord_result = chord((add.s(i, i) for i in range(4)), total.s()).apply_async()
        assert chord_result.get() == 12
        sim.run()
        names = [e["task"] for e in sim.history.where(kind="published")]
        # chain: 3 adds; group: 4 adds; chord: 4 adds and the body.
        assert names.count(add.name) == 11
        assert names.count(total.name) == 1
        assert sim.check() == []


# -- routing and the app afterwards ----------------------------------------------------------


def test_a_message_to_an_undeclared_exchange_is_published_then_lost() -> None:
    """apply_async(exchange='nowhere') routes to no queue: the broker drops it (unroutable)."""
    app = make_app()

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    with simq.Simulation(app, seed=1) as sim:
        result = add.apply_async((1, 2), exchange="nowhere", routing_key="x")
        sim.run()
        events = sim.history.where(task_id=result.id)
        assert events.kinds() == ["published", "lost"]
        lost = events.last()
        assert (lost["reason"], lost["exchange"], lost["routing_key"]) == (
            "unroutable",
            "nowhere",
            "x",
        )
        assert result.state == states.PENDING


def test_the_app_is_as_before_after_the_block() -> None:
    """After the block: the configured broker_url, the backend's class and the producer
    pool are the app's own again, and the app still talks to its own backend."""
    app = celery.Celery(
        "restore", broker="memory://", backend="cache+memory://", set_as_current=False
    )

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    producer_pool = app.amqp.producer_pool
    backend_class = type(app.backend)
    with simq.Simulation(app, seed=1):
        assert add.delay(1, 2).get() == 3
        assert type(app.backend) is not backend_class
        assert app.amqp._producer_pool is not producer_pool
    assert app.conf.broker_url == "memory://"
    assert type(app.backend) is backend_class
    assert app.amqp._producer_pool is producer_pool
    app.backend.store_result("outside", 5, states.SUCCESS)
    assert app.AsyncResult("outside").get() == 5


def test_after_task_publish_fires_before_the_worker_receives_the_task() -> None:
    """The publisher's after_task_publish precedes the worker's task_received."""
    app = make_app()

    @app.task(shared=False)
    def ok() -> int:
        return 1

    heard = Heard(
        after_task_publish=signals.after_task_publish, task_received=signals.task_received
    )
    heard.connect()
    try:
        with simq.Simulation(app, seed=1):
            ok.delay().get()
    finally:
        heard.disconnect()
    assert heard.names() == ["after_task_publish", "task_received"]
