"""Tests for simq.App (a real celery.Celery app on the simulated broker and backend): its
settings, registry, naming and routing, all Celery's own, running on the simulation."""

from __future__ import annotations

import re
from typing import Any

import celery
import pytest
from celery.exceptions import NotRegistered, QueueNotFound, TaskError
from celery.result import AsyncResult
from kombu import Queue

import simq
from simq.app import SIMULATED_BACKEND, SIMULATED_BROKER

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)

#: A setting Celery 5.5 does not have (app/defaults.py): it has no default to compare to.
NEW_IN_5_7 = pytest.mark.celery_version(
    min="5.7", why="the setting is new in 5.7 (app/defaults.py)"
)


def make_app(main: str | None = "proj", **settings: Any) -> celery.Celery:
    return simq.App(main, **settings)


def published(sim: simq.Simulation, task_id: str) -> simq.Event:
    (event,) = sim.history.where(kind="published", task_id=task_id)
    return event


# -- the app and its settings -----------------------------------------------------------


def test_app_is_a_real_celery_app() -> None:
    """simq.App() builds a celery.Celery app with the settings given, on simq's broker and
    result backend."""
    app = simq.App("proj", task_acks_late=True)
    assert type(app) is celery.Celery
    assert app.main == "proj"
    assert app.conf.task_acks_late is True
    assert app.conf.broker_url == SIMULATED_BROKER == "simq://"
    assert app.conf.result_backend == SIMULATED_BACKEND


def test_a_plain_celery_app_runs_on_the_simulation() -> None:
    """A celery.Celery app built without simq runs on the simulation unchanged, and its
    broker and backend settings are as they were once the simulation ends."""
    app = celery.Celery("plain", broker="amqp://nowhere//", backend="redis://nowhere/0")

    @app.task(name="plain.add")
    def add(x: int, y: int) -> int:
        return x + y

    with simq.Simulation(app, seed=1) as sim:
        result = add.delay(2, 3)
        assert result.get() == 5
        assert published(sim, result.id)["task"] == "plain.add"
    assert app.conf.broker_url == "amqp://nowhere//"
    assert app.conf.result_backend == "redis://nowhere/0"


def test_main_defaults_to_none() -> None:
    """App() without arguments has no main name, like Celery()."""
    assert simq.App().main is None


@pytest.mark.parametrize(
    "setting",
    [
        "task_acks_late",
        "task_acks_on_failure_or_timeout",
        pytest.param("task_acks_on_failure", marks=NEW_IN_5_7),
        pytest.param("task_acks_on_timeout", marks=NEW_IN_5_7),
        "task_always_eager",
        "task_eager_propagates",
        "task_default_queue",
        "task_create_missing_queues",
        "task_serializer",
        "task_ignore_result",
        "task_track_started",
        "task_time_limit",
        "task_soft_time_limit",
        "task_reject_on_worker_lost",
        pytest.param("task_retry_on_worker_lost", marks=NEW_IN_5_7),
        "task_store_eager_result",
        "task_default_rate_limit",
        "task_default_priority",
        "task_publish_retry_policy",
        "worker_prefetch_multiplier",
        "worker_disable_rate_limits",
        "result_expires",
        "enable_utc",
        "accept_content",
    ],
)
def test_setting_defaults_equal_celerys(setting: str) -> None:
    """Each setting reads Celery 5.7's default when the app does not change it."""
    expected = celery.Celery(set_as_current=False).conf[setting]
    conf = make_app().conf
    assert getattr(conf, setting) == expected
    assert conf[setting] == expected


def test_conf_attribute_and_item_access_agree() -> None:
    """Settings given to App() read the same through attribute and item access."""
    conf = make_app(task_default_queue="work", task_acks_late=True).conf
    assert conf.task_default_queue == conf["task_default_queue"] == "work"
    assert conf.task_acks_late is conf["task_acks_late"] is True


def test_conf_update_and_assignment_change_settings() -> None:
    """conf.update(), item and attribute assignment all change what the app reads."""
    app = make_app()
    app.conf.update(task_acks_late=True, task_default_queue="a")
    app.conf["task_track_started"] = True
    app.conf.worker_prefetch_multiplier = 1
    assert app.conf.task_acks_late is True
    assert app.conf.task_default_queue == "a"
    assert app.conf.task_track_started is True
    assert app.conf["worker_prefetch_multiplier"] == 1


def test_conf_unknown_setting_raises_celerys_attribute_error() -> None:
    """Reading a setting nobody set and Celery has no default for is Celery's AttributeError."""
    with pytest.raises(
        AttributeError, match=r"^'Settings' object has no attribute 'no_such_thing'$"
    ):
        make_app().conf.no_such_thing  # noqa: B018


def test_broker_and_backend_keywords_set_their_urls() -> None:
    """broker= and backend= set broker_url and result_backend, as in Celery."""
    conf = make_app(broker="memory://", backend="cache+memory://").conf
    assert conf.broker_url == "memory://"
    assert conf.result_backend == "cache+memory://"


# -- the registry ----------------------------------------------------------------------


def test_tasks_holds_decorated_tasks_by_name() -> None:
    """A decorated task is registered in app.tasks under its name."""
    app = make_app()

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    # Before the app is finalized Celery's decorator returns a proxy to the task.
    assert app.tasks["proj.add"] is add._get_current_object()
    assert "proj.add" in app.tasks
    assert app.tasks["proj.add"](2, 3) == 5


def test_tasks_miss_raises_not_registered_with_celerys_repr() -> None:
    """A miss in app.tasks raises NotRegistered, a KeyError, with Celery's message."""
    app = make_app()
    with pytest.raises(NotRegistered) as info:
        app.tasks["proj.missing"]
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, TaskError)
    expected = celery.exceptions.NotRegistered("proj.missing")
    assert repr(info.value) == repr(expected)
    assert str(info.value) == str(expected)


def test_register_task_registers_a_class_based_task() -> None:
    """register_task() binds and registers a Task subclass instance under its name."""
    app = make_app(task_acks_late=True)

    class Multiply(celery.Task):
        name = "proj.multiply"

        def run(self, x: int, y: int) -> int:
            return x * y

    task = app.register_task(Multiply())
    assert app.tasks["proj.multiply"] is task
    assert task.app is app
    assert task.acks_late is True  # filled from config at bind time
    with simq.Simulation(app) as sim:
        result = task.delay(6, 7)
        assert result.get() == 42
        assert published(sim, result.id)["task"] == "proj.multiply"


def test_register_task_names_an_unnamed_class_from_its_module() -> None:
    """A class registered without a name gets module.ClassName."""
    app = make_app()

    class Unnamed(celery.Task):
        def run(self) -> str:
            return "ok"

    Unnamed.__module__ = "pkg.jobs"
    task = app.register_task(Unnamed)
    assert task.name == "pkg.jobs.Unnamed"
    assert app.tasks["pkg.jobs.Unnamed"] is task


# -- naming ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("main", "module", "expected"),
    [
        ("proj", "__main__", "proj.pay"),
        (None, "__main__", "__main__.pay"),
        ("proj", "shop.tasks", "shop.tasks.pay"),
        (None, "shop.tasks", "shop.tasks.pay"),
    ],
)
def test_gen_task_name_follows_celery(main: str | None, module: str, expected: str) -> None:
    """Task names are main.name for __main__ tasks and module.name otherwise (§1.3)."""
    app = make_app(main)

    def pay() -> None: ...

    pay.__module__ = module
    task = app.task(pay)
    assert task.name == expected
    assert expected == celery.Celery(main, set_as_current=False).gen_task_name("pay", module)


def test_gen_task_name_can_be_overridden_in_a_subclass() -> None:
    """A subclass's gen_task_name names every decorated task (§1.3)."""

    class ShortNames(celery.Celery):
        def gen_task_name(self, name: str, module: str) -> str:
            return f"{module.rsplit('.', 1)[-1]}:{name}"

    app = ShortNames("proj")

    def refund() -> str:
        return "refunded"

    refund.__module__ = "shop.billing"
    task = app.task(refund)
    assert task.name == "billing:refund"
    assert "billing:refund" in app.tasks
    with simq.Simulation(app) as sim:
        result = task.delay()
        assert result.get() == "refunded"
        assert published(sim, result.id)["task"] == "billing:refund"


def test_explicit_name_beats_generated_name() -> None:
    """name= on the decorator is used as is."""
    app = make_app()

    @app.task(name="custom-name")
    def anything() -> None: ...

    assert anything.name == "custom-name"
    assert app.tasks["custom-name"] is anything._get_current_object()
    assert "proj.anything" not in app.tasks
    assert "test_app.anything" not in app.tasks


# -- app.Task, send_task, AsyncResult ----------------------------------------------------


def test_app_task_is_the_default_base() -> None:
    """Decorated tasks derive from app.Task, which derives from celery.Task."""
    app = make_app()

    @app.task
    def job() -> None: ...

    assert issubclass(app.Task, celery.Task)
    assert isinstance(job, app.Task)
    assert app.Task is app.Task
    assert app.Task.app is app


def test_send_task_publishes_by_name_and_runs() -> None:
    """send_task() publishes a message by name; the registered task runs and succeeds."""
    app = make_app()

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    with simq.Simulation(app) as sim:
        result = app.send_task("proj.add", args=(2, 3), countdown=5)
        assert result.get() == 5
        event = published(sim, result.id)
        assert event["task"] == "proj.add"
        assert event["queue"] == "celery"
        started = sim.history.where(kind="started", task_id=result.id).first()
        assert started.time - event.time == 5


def test_send_task_of_an_unknown_name_fails_on_the_worker() -> None:
    """A name no worker knows is stored FAILURE(NotRegistered) and rejected (§1.3)."""
    app = make_app()
    with simq.Simulation(app) as sim:
        result = app.send_task("proj.nobody")
        with pytest.raises(NotRegistered):
            result.get()
        assert sim.history.where(kind="unregistered", task_id=result.id)
        assert sim.history.where(kind="rejected", task_id=result.id).first()["requeue"] is False


def test_app_async_result_reads_the_task_state() -> None:
    """app.AsyncResult(id) is a handle on the state and result stored for that id."""
    app = make_app()

    @app.task
    def three() -> int:
        return 3

    with simq.Simulation(app):
        task_id = three.delay().id
        handle = app.AsyncResult(task_id)
        assert isinstance(handle, AsyncResult)
        assert handle.id == task_id
        assert handle.state == "PENDING"
        assert handle.get() == 3
        assert app.AsyncResult(task_id).state == "SUCCESS"


# -- routing ---------------------------------------------------------------------------


def routed_queue(app: celery.Celery, name: str, **options: Any) -> str:
    def body() -> None: ...

    task = app.task(name=name)(body)
    with simq.Simulation(app, workers=0) as sim:
        result = task.apply_async(**options)
        return str(published(sim, result.id)["queue"])


def test_default_queue_is_celery() -> None:
    """Without routes a task goes to task_default_queue, 'celery' by default."""
    assert routed_queue(make_app(), "proj.a") == "celery"


def test_task_default_queue_setting_moves_unrouted_tasks() -> None:
    """task_default_queue names the queue of every unrouted task."""
    assert routed_queue(make_app(task_default_queue="main"), "proj.a") == "main"


@pytest.mark.parametrize(
    ("routes", "name", "queue"),
    [
        ({"proj.a": {"queue": "exact"}}, "proj.a", "exact"),
        ({"proj.a": "short"}, "proj.a", "short"),
        ({"proj.*": {"queue": "glob"}}, "proj.anything", "glob"),
        ({re.compile(r"proj\.r\d+"): {"queue": "regex"}}, "proj.r12", "regex"),
        ({"proj.a": "exact", "proj.*": "glob"}, "proj.a", "exact"),
        ({"other.*": "glob"}, "proj.a", "celery"),
        ([{"x.y": "no"}, {"proj.a": "second"}], "proj.a", "second"),
    ],
)
def test_task_routes_match_like_celery(routes: Any, name: str, queue: str) -> None:
    """task_routes maps exact names, globs and regexes, first router first (§1.5)."""
    assert routed_queue(make_app(task_routes=routes), name) == queue
    real = celery.Celery("proj", set_as_current=False, task_routes=routes)
    assert real.amqp.router.route({}, name, (), {})["queue"].name == queue


def test_callable_router_receives_the_call() -> None:
    """A router function gets name, args, kwargs and options and its answer routes."""
    seen: list[tuple[Any, ...]] = []

    def router(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        seen.append((name, tuple(args), dict(kwargs), task.name if task else None))
        return {"queue": f"q-{kwargs['region']}"} if name == "proj.ship" else None

    app = make_app(task_routes=(router,))

    @app.task(name="proj.ship")
    def ship(order: int, region: str) -> None: ...

    with simq.Simulation(app, workers=0) as sim:
        result = ship.apply_async((7,), {"region": "eu"})
        assert published(sim, result.id)["queue"] == "q-eu"
    assert seen == [("proj.ship", (7,), {"region": "eu"}, "proj.ship")]


def test_callable_router_may_return_a_queue_name() -> None:
    """A router that returns a string routes to the queue of that name."""
    app = make_app(task_routes=[lambda name, *a, **kw: "strq"])
    assert routed_queue(app, "proj.a") == "strq"


def test_queue_option_beats_task_routes() -> None:
    """An explicit queue= on the call wins over task_routes (§5.3)."""
    app = make_app(task_routes={"proj.a": "routed"})
    assert routed_queue(app, "proj.a", queue="explicit") == "explicit"


def test_missing_queue_raises_queue_not_found_when_creation_is_off() -> None:
    """With task_create_missing_queues=False an undeclared queue raises QueueNotFound."""
    app = make_app(task_create_missing_queues=False, task_routes={"proj.a": "other"})

    @app.task(name="proj.a")
    def a() -> None: ...

    with simq.Simulation(app) as sim:
        with pytest.raises(QueueNotFound) as info:
            a.delay()
        assert not sim.history.where(kind="published")
    assert isinstance(info.value, KeyError)
    real = celery.Celery(
        "proj",
        set_as_current=False,
        task_create_missing_queues=False,
        task_routes={"proj.a": "other"},
    )
    with pytest.raises(celery.exceptions.QueueNotFound) as real_info:
        real.amqp.router.route({}, "proj.a", (), {})
    assert str(info.value) == str(real_info.value)


def test_declared_queue_is_allowed_when_creation_is_off() -> None:
    """A queue declared in task_queues (kombu Queue objects, as Celery requires) is
    routable with task_create_missing_queues=False."""
    app = make_app(task_create_missing_queues=False, task_queues=[Queue("extra")])
    if CELERY_VERSION >= (5, 7):
        assert routed_queue(app, "proj.a", queue="extra") == "extra"
    else:
        # 5.5's AMQP._create_task_sender reads default_queue up front (app/amqp.py), so
        # any send fails while the default queue is undeclared and creation is off.
        with pytest.raises(KeyError, match="celery"):
            routed_queue(app, "proj.a", queue="extra")
