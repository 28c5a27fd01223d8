"""Tests for simq.Task's attributes: Celery's defaults, decorator options, config fallback."""

from __future__ import annotations

from typing import Any

import celery
import pytest

import simq

# The §1.2 attributes that celery.Task defines as class attributes (others are read
# through getattr with a default in Celery, so there is no class value to compare).
CELERY_CLASS_ATTRIBUTES = [
    "typing",
    "max_retries",
    "default_retry_delay",
    "rate_limit",
    "ignore_result",
    "trail",
    "send_events",
    "store_errors_even_if_ignored",
    "serializer",
    "time_limit",
    "soft_time_limit",
    "track_started",
    "acks_late",
    "acks_on_failure_or_timeout",
    "acks_on_failure",
    "acks_on_timeout",
    "reject_on_worker_lost",
    "retry_on_worker_lost",
    "throws",
    "expires",
    "priority",
    "resultrepr_maxsize",
    "abstract",
]

# Attributes a decorated task has after binding, with Celery's values for default config.
BOUND_ATTRIBUTES = [*CELERY_CLASS_ATTRIBUTES, "store_eager_result"]


def real_task(settings: dict[str, Any], **options: Any) -> Any:
    """A task decorated in a real Celery app with ``settings``, after finalize."""
    app = celery.Celery("proj", set_as_current=False)
    app.conf.update(settings)

    def job() -> None: ...

    task = app.task(shared=False, **options)(job)
    app.finalize()
    return app.tasks[task.name]


def sim_task(settings: dict[str, Any], **options: Any) -> simq.Task:
    app = simq.App("proj", **settings)

    def job() -> None: ...

    return app.task(**options)(job)  # type: ignore[no-any-return]


@pytest.mark.parametrize("attribute", CELERY_CLASS_ATTRIBUTES)
def test_class_defaults_equal_celerys(attribute: str) -> None:
    """Every §1.2 attribute of simq.Task has celery.Task's class default."""
    assert getattr(simq.Task, attribute) == getattr(celery.Task, attribute)


@pytest.mark.parametrize("attribute", BOUND_ATTRIBUTES)
def test_bound_defaults_equal_a_real_decorated_task(attribute: str) -> None:
    """After binding, a decorated task's attributes equal a real Celery task's (§1.2)."""
    assert getattr(sim_task({}), attribute) == getattr(real_task({}), attribute)


@pytest.mark.parametrize(
    ("attribute", "default"),
    [
        ("autoretry_for", ()),
        ("dont_autoretry_for", ()),
        ("retry_kwargs", {}),
        ("retry_backoff", False),
        ("retry_backoff_max", 600),
        ("retry_jitter", True),
        ("compression", None),
    ],
)
def test_getattr_read_attributes_have_celerys_effective_default(
    attribute: str, default: Any
) -> None:
    """Attributes Celery reads with getattr(task, name, default) have that default (§1.2)."""
    assert getattr(simq.Task, attribute) == default


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("max_retries", 7),
        ("max_retries", None),
        ("default_retry_delay", 5),
        ("rate_limit", "10/m"),
        ("ignore_result", True),
        ("trail", False),
        ("send_events", False),
        ("store_errors_even_if_ignored", True),
        ("serializer", "json"),
        ("time_limit", 30),
        ("soft_time_limit", 20),
        ("track_started", True),
        ("acks_late", True),
        ("acks_on_failure_or_timeout", False),
        ("acks_on_failure", False),
        ("acks_on_timeout", False),
        ("reject_on_worker_lost", True),
        ("retry_on_worker_lost", True),
        ("throws", (KeyError,)),
        ("expires", 60),
        ("priority", 5),
        ("resultrepr_maxsize", 10),
        ("store_eager_result", True),
        ("autoretry_for", (ValueError,)),
        ("dont_autoretry_for", (KeyError,)),
        ("retry_kwargs", {"max_retries": 5}),
        ("retry_backoff", 2),
        ("retry_backoff_max", 30),
        ("retry_jitter", False),
        ("typing", False),
    ],
)
def test_decorator_accepts_every_attribute(attribute: str, value: Any) -> None:
    """Each §1.2 attribute passed to @app.task is the task's value after binding."""
    assert getattr(sim_task({}, **{attribute: value}), attribute) == value


def test_other_keywords_become_class_attributes() -> None:
    """Unknown decorator keywords become class attributes of the task type (§1.1)."""
    task = sim_task({}, count=0, label="x")
    assert type(task).count == 0
    assert type(task).label == "x"
    real = real_task({}, count=0, label="x")
    assert (real.count, real.label) == (0, "x")


def test_bind_makes_the_task_the_first_argument() -> None:
    """With bind=True the body receives the task instance as self (§1.1)."""
    app = simq.App("proj")

    @app.task(bind=True)
    def whoami(self: simq.Task) -> str:
        return str(self.name)

    @app.task
    def plain(x: int) -> int:
        return x

    assert whoami() == whoami.name
    assert plain(4) == 4
    with simq.Simulation(app):
        assert whoami.delay().get() == whoami.name


def test_base_supplies_attributes_and_hooks() -> None:
    """A custom base's attributes apply and its hooks run in the worker (§1.1)."""
    calls: list[tuple[str, Any]] = []

    class Audited(simq.Task):
        max_retries = 9

        def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
            calls.append(("before_start", list(args)))

        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            calls.append(("on_success", retval))

    app = simq.App("proj")

    @app.task(base=Audited)
    def double(x: int) -> int:
        return 2 * x

    assert isinstance(double, Audited)
    assert double.max_retries == 9
    with simq.Simulation(app):
        assert double.delay(4).get() == 8
    assert calls == [("before_start", [4]), ("on_success", 8)]


def test_on_bound_runs_when_the_task_is_bound() -> None:
    """on_bound(app) is called once the task type is bound to the app (§1.10)."""
    bound: list[Any] = []

    class Recording(simq.Task):
        @classmethod
        def on_bound(cls, app: Any) -> None:
            bound.append((cls.__name__, app))

    app = simq.App("proj")

    @app.task(base=Recording)
    def anything() -> None: ...

    assert bound == [("anything", app)]


# -- config fallback (§1.1, §1.2) ------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "setting", "value"),
    [
        ("acks_late", "task_acks_late", True),
        ("track_started", "task_track_started", True),
        ("ignore_result", "task_ignore_result", True),
        ("rate_limit", "task_default_rate_limit", "5/s"),
        ("priority", "task_default_priority", 3),
        ("time_limit", "task_time_limit", 60),
        ("soft_time_limit", "task_soft_time_limit", 50),
        ("reject_on_worker_lost", "task_reject_on_worker_lost", True),
        ("retry_on_worker_lost", "task_retry_on_worker_lost", True),
        ("store_eager_result", "task_store_eager_result", True),
        ("store_errors_even_if_ignored", "task_store_errors_even_if_ignored", True),
    ],
)
def test_unset_attribute_is_filled_from_config(attribute: str, setting: str, value: Any) -> None:
    """An attribute left None at bind time takes its setting's value (§1.2)."""
    assert getattr(sim_task({setting: value}), attribute) == value
    assert getattr(real_task({setting: value}), attribute) == value


def test_decorator_value_beats_config() -> None:
    """acks_late=False on the decorator beats task_acks_late=True (§1.1, exp11)."""
    task = sim_task({"task_acks_late": True}, acks_late=False)
    assert task.acks_late is False
    assert real_task({"task_acks_late": True}, acks_late=False).acks_late is False


def test_strict_typing_fills_typing() -> None:
    """typing falls back to the app's strict_typing (§1.2)."""
    assert sim_task({}).typing is True
    app = simq.App("proj", strict_typing=False)

    @app.task
    def loose() -> None: ...

    assert loose.typing is False


@pytest.mark.parametrize(
    ("settings", "options"),
    [
        ({}, {}),
        ({"task_acks_on_failure_or_timeout": False}, {}),
        ({"task_acks_on_failure_or_timeout": False, "task_acks_on_failure": True}, {}),
        ({"task_acks_on_failure_or_timeout": False, "task_acks_on_timeout": True}, {}),
        ({"task_acks_on_failure": False}, {}),
        ({"task_acks_on_timeout": False}, {}),
        ({}, {"acks_on_failure_or_timeout": False}),
        ({"task_acks_on_failure": True}, {"acks_on_failure_or_timeout": False}),
        ({"task_acks_on_failure": False}, {"acks_on_failure": True}),
        ({"task_acks_on_timeout": True}, {"acks_on_timeout": False}),
    ],
)
def test_acks_on_failure_and_timeout_fall_back_like_celery(
    settings: dict[str, Any], options: dict[str, Any]
) -> None:
    """acks_on_failure/acks_on_timeout: decorator, own setting, combined flag, True (§1.2)."""
    sim = sim_task(settings, **options)
    real = real_task(settings, **options)
    assert (sim.acks_on_failure, sim.acks_on_timeout) == (
        real.acks_on_failure,
        real.acks_on_timeout,
    )


def test_config_fallback_changes_what_the_worker_does() -> None:
    """task_acks_late from config makes the worker ack only after the body ran (§3)."""
    app = simq.App("proj", task_acks_late=True)

    @app.task
    def job() -> int:
        return 1

    with simq.Simulation(app) as sim:
        result = job.delay()
        result.get()
        kinds = [
            k
            for k in sim.history.where(task_id=result.id).kinds()
            if k in ("started", "acked", "succeeded")
        ]
    assert kinds == ["started", "succeeded", "acked"]
