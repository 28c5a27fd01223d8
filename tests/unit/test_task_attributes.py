"""Task attributes of a real Celery app, and what they make the simulated worker do.

Celery's own ``Task`` resolves a task's attributes (decorator options, base classes, the
config fallback of ``Task.bind``); simq no longer re-implements any of that. These tests
check the user-visible side: the attribute Celery resolved is what the simulation does
(when the message is acked or rejected, which states are stored, which hooks run, how
fast a rate limit lets tasks start, where a call is refused).

Tasks are declared with ``shared=False``: Celery's default ``shared=True`` would add every
task to every app finalized later in the process (``connect_on_app_finalize``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import celery
import pytest
from celery import states

import simq

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)


def make_app(**settings: Any) -> celery.Celery:
    app = celery.Celery("proj")
    app.conf.update(settings)
    return app


def settles(sim: simq.Simulation, task_id: str) -> list[tuple[str, Any]]:
    """The task's first attempt, in order: start, outcome, ack or reject."""
    out: list[tuple[str, Any]] = []
    for event in sim.history.where(task_id=task_id):
        if event.kind in ("started", "succeeded", "failed", "acked"):
            out.append((event.kind, None))
        elif event.kind == "rejected":
            out.append((event.kind, event.details["requeue"]))
        kinds = {k for k, _ in out}
        if (
            event.kind in ("acked", "rejected")
            and "started" in kinds
            and kinds & {"succeeded", "failed"}
        ):
            break
    return out


def stored_states(sim: simq.Simulation, task_id: str) -> list[str]:
    return [e.details["state"] for e in sim.history.where(task_id=task_id, kind="state")]


# -- the task's own call convention and base class ---------------------------------------


def test_bind_makes_the_task_the_first_argument() -> None:
    """With bind=True the body receives the task as self; on the simulated worker its
    request carries the message's id, the worker's hostname and the retry count (§1.1)."""
    app = make_app()

    @app.task(shared=False, bind=True)
    def whoami(self: celery.Task) -> list[Any]:
        return [self.name, self.request.id, self.request.hostname, self.request.retries]

    @app.task(shared=False)
    def plain(x: int) -> int:
        return x

    assert plain(4) == 4
    with simq.Simulation(app, seed=1):
        result = whoami.delay()
        assert result.get() == [whoami.name, result.id, "worker-1", 0]


def test_base_supplies_attributes_and_hooks() -> None:
    """A custom base's attributes apply and its hooks run on the simulated worker (§1.1)."""
    calls: list[tuple[str, Any]] = []

    class Audited(celery.Task):
        max_retries = 9

        def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
            calls.append(("before_start", list(args)))

        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            calls.append(("on_success", retval))

        def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            calls.append(("on_failure", type(exc).__name__))

        def after_return(self, status: str, *rest: Any) -> None:
            calls.append(("after_return", status))

    app = make_app()

    @app.task(shared=False, base=Audited)
    def double(x: int) -> int:
        if x < 0:
            raise ValueError(x)
        return 2 * x

    assert isinstance(double, Audited)
    assert double.max_retries == 9
    with simq.Simulation(app):
        assert double.delay(4).get() == 8
        with pytest.raises(ValueError):
            double.delay(-1).get()
    assert calls == [
        ("before_start", [4]),
        ("on_success", 8),
        ("after_return", states.SUCCESS),
        ("before_start", [-1]),
        ("on_failure", "ValueError"),
        ("after_return", states.FAILURE),
    ]


# -- config fallback: what the worker does (§1.1, §1.2, §3.1) ---------------------------------


@pytest.mark.parametrize(
    ("settings", "options", "expected"),
    [
        ({}, {}, [("started", None), ("acked", None), ("succeeded", None)]),
        (
            {"task_acks_late": True},
            {},
            [("started", None), ("succeeded", None), ("acked", None)],
        ),
        (
            {"task_acks_late": True},
            {"acks_late": False},
            [("started", None), ("acked", None), ("succeeded", None)],
        ),
        (
            {},
            {"acks_late": True},
            [("started", None), ("succeeded", None), ("acked", None)],
        ),
    ],
)
def test_acks_late_from_config_or_decorator_moves_the_ack(
    settings: dict[str, Any], options: dict[str, Any], expected: list[tuple[str, Any]]
) -> None:
    """task_acks_late fills acks_late when the decorator leaves it unset; the decorator's
    value beats the setting (exp11). Early ack: when the pool accepts; late: after the body."""
    app = make_app(**settings)

    @app.task(shared=False, **options)
    def job() -> int:
        return 1

    with simq.Simulation(app) as sim:
        result = job.delay()
        assert result.get() == 1
        assert settles(sim, result.id) == expected
        assert sim.check() == []


# (settings, decorator options) -> (acks_on_failure, acks_on_timeout) as Task.bind resolves
# them: the task's own flag, else its setting, else the combined flag (task or setting).
ACK_FLAG_CASES = [
    ({}, {}, (True, True)),
    ({"task_acks_on_failure_or_timeout": False}, {}, (False, False)),
    (
        {"task_acks_on_failure_or_timeout": False, "task_acks_on_failure": True},
        {},
        (True, False),
    ),
    (
        {"task_acks_on_failure_or_timeout": False, "task_acks_on_timeout": True},
        {},
        (False, True),
    ),
    ({"task_acks_on_failure": False}, {}, (False, True)),
    ({"task_acks_on_timeout": False}, {}, (True, False)),
    ({}, {"acks_on_failure_or_timeout": False}, (False, False)),
    ({"task_acks_on_failure": True}, {"acks_on_failure_or_timeout": False}, (True, False)),
    ({"task_acks_on_failure": False}, {"acks_on_failure": True}, (True, True)),
    ({"task_acks_on_timeout": True}, {"acks_on_timeout": False}, (True, False)),
]


def resolved_flags(
    settings: dict[str, Any], options: dict[str, Any], flags: tuple[bool, bool]
) -> tuple[bool, bool]:
    """The (on failure, on timeout) ack flags this Celery's Request.on_failure applies.

    5.7 resolves the two flags as the table says. 5.5 has only acks_on_failure_or_timeout
    (task, else task_acks_on_failure_or_timeout) for both; it ignores the split names.
    """
    if CELERY_VERSION >= (5, 7):
        return flags
    combined = options.get(
        "acks_on_failure_or_timeout", settings.get("task_acks_on_failure_or_timeout", True)
    )
    return (combined, combined)


def ack_flags_of(task: celery.Task) -> tuple[bool, bool]:
    if CELERY_VERSION >= (5, 7):
        return (task.acks_on_failure, task.acks_on_timeout)
    return (task.acks_on_failure_or_timeout, task.acks_on_failure_or_timeout)


@pytest.mark.parametrize(("settings", "options", "flags"), ACK_FLAG_CASES)
def test_acks_on_failure_decides_how_a_failed_late_task_is_settled(
    settings: dict[str, Any], options: dict[str, Any], flags: tuple[bool, bool]
) -> None:
    """A failing acks_late task is acked when acks_on_failure resolves True, else rejected
    without requeue (celery/worker/request.py Request.on_failure); FAILURE is stored."""
    app = make_app(task_acks_late=True, **settings)

    @app.task(shared=False, **options)
    def broken() -> None:
        raise KeyError("boom")

    flags = resolved_flags(settings, options, flags)
    assert ack_flags_of(broken) == flags
    with simq.Simulation(app) as sim:
        result = broken.delay()
        with pytest.raises(KeyError):
            result.get()
        settle = ("acked", None) if flags[0] else ("rejected", False)
        assert settles(sim, result.id) == [("started", None), ("failed", None), settle]
        assert stored_states(sim, result.id) == [states.FAILURE]
        assert sim.check() == []


@pytest.mark.parametrize(("settings", "options", "flags"), ACK_FLAG_CASES)
def test_acks_on_timeout_decides_how_a_timed_out_late_task_is_settled(
    settings: dict[str, Any], options: dict[str, Any], flags: tuple[bool, bool]
) -> None:
    """At a hard time limit an acks_late task is acked when acks_on_timeout resolves True;
    otherwise Celery rejects it WITH requeue (request.py on_failure: ``is_timeout and not
    ack_flag``), so it is delivered again and times out again."""
    app = make_app(task_acks_late=True, **settings)

    @app.task(shared=False, time_limit=1, **options)
    def slow() -> None: ...

    flags = resolved_flags(settings, options, flags)
    with simq.Simulation(app, durations={slow.name: 10}) as sim:
        result = slow.delay()
        sim.run(until=sim.now + dt.timedelta(seconds=2.5))
        settle = ("acked", None) if flags[1] else ("rejected", True)
        assert settles(sim, result.id) == [("started", None), ("failed", None), settle]
        deliveries = len(sim.history.where(task_id=result.id, kind="delivered"))
        assert deliveries == (1 if flags[1] else 3)
        assert result.state == states.FAILURE
        assert sim.check() == []


def test_track_started_from_config_stores_started() -> None:
    """task_track_started fills track_started: the tracer stores STARTED before the result;
    a decorator's track_started=False beats it."""
    app = make_app(task_track_started=True)

    @app.task(shared=False)
    def tracked() -> int:
        return 1

    @app.task(shared=False, track_started=False)
    def untracked() -> int:
        return 2

    with simq.Simulation(app) as sim:
        a, b = tracked.delay(), untracked.delay()
        assert (a.get(), b.get()) == (1, 2)
        assert stored_states(sim, a.id) == [states.STARTED, states.SUCCESS]
        assert stored_states(sim, b.id) == [states.SUCCESS]


def test_ignore_result_from_config_stores_nothing() -> None:
    """task_ignore_result fills ignore_result: the result is never stored (the task stays
    PENDING to a reader); ignore_result=False on the decorator stores it."""
    app = make_app(task_ignore_result=True)

    @app.task(shared=False)
    def ignored() -> int:
        return 1

    @app.task(shared=False, ignore_result=False)
    def kept() -> int:
        return 2

    with simq.Simulation(app) as sim:
        a, b = ignored.delay(), kept.delay()
        assert b.get() == 2
        sim.run()
        assert [e.kind for e in sim.history.where(task_id=a.id)][-2:] == ["acked", "succeeded"]
        assert stored_states(sim, a.id) == []
        assert a.state == states.PENDING
        assert stored_states(sim, b.id) == [states.SUCCESS]


@pytest.mark.parametrize(("setting", "stored"), [(False, []), (True, [states.FAILURE])])
def test_store_errors_even_if_ignored_from_config(setting: bool, stored: list[str]) -> None:
    """With ignore_result, a failure is stored only if store_errors_even_if_ignored (from
    task_store_errors_even_if_ignored) is set."""
    app = make_app(task_store_errors_even_if_ignored=setting)

    @app.task(shared=False, ignore_result=True)
    def broken() -> None:
        raise ValueError("boom")

    with simq.Simulation(app) as sim:
        result = broken.delay()
        sim.run()
        assert "failed" in sim.history.where(task_id=result.id).kinds()
        assert stored_states(sim, result.id) == stored


def test_time_limit_from_config_kills_the_task() -> None:
    """task_time_limit fills time_limit: a body running past it is killed at that virtual
    second and FAILURE(TimeLimitExceeded) is stored."""
    app = make_app(task_time_limit=5)

    @app.task(shared=False)
    def slow() -> None: ...

    with simq.Simulation(app, durations={slow.name: 60}) as sim:
        result = slow.delay()
        with pytest.raises(celery.exceptions.TimeLimitExceeded):
            result.get()
        (limit,) = sim.history.where(task_id=result.id, kind="time-limit")
        assert (limit.details["which"], limit.details["limit"]) == ("hard", 5)
        assert sim.elapsed == 5


def test_rate_limit_from_config_spaces_the_starts() -> None:
    """task_default_rate_limit fills rate_limit: '1/s' lets one task start per second on a
    worker with free slots; an explicit rate_limit='2/s' on the decorator wins."""
    app = make_app(task_default_rate_limit="1/s")

    @app.task(shared=False)
    def tick() -> None: ...

    @app.task(shared=False, rate_limit="2/s")
    def fast() -> None: ...

    with simq.Simulation(app, concurrency=4) as sim:
        ticks = [tick.delay() for _ in range(3)]
        sim.run()
        starts = [sim.history.where(task_id=r.id, kind="started").first().time for r in ticks]
        assert [t - starts[0] for t in starts] == [0.0, 1.0, 2.0]
    with simq.Simulation(app, concurrency=4) as sim:
        fasts = [fast.delay() for _ in range(3)]
        sim.run()
        starts = [sim.history.where(task_id=r.id, kind="started").first().time for r in fasts]
        assert [t - starts[0] for t in starts] == [0.0, 0.5, 1.0]


def test_strict_typing_decides_where_bad_arguments_fail() -> None:
    """typing falls back to the app's strict_typing: True refuses bad arguments at the
    call (nothing published); False publishes and the task fails on the worker."""
    strict = make_app()
    loose = celery.Celery("proj", strict_typing=False)

    @strict.task(shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @loose.task(shared=False, name=add.name)
    def loose_add(x: int, y: int) -> int:
        return x + y

    assert (add.typing, loose_add.typing) == (True, False)
    with simq.Simulation(strict) as sim:
        with pytest.raises(TypeError):
            add.delay(1)
        assert len(sim.history.where(kind="published")) == 0
    with simq.Simulation(loose) as sim:
        result = loose_add.delay(1)
        with pytest.raises(TypeError):
            result.get()
        assert sim.history.where(task_id=result.id).kinds()[:3] == [
            "published",
            "delivered",
            "started",
        ]
