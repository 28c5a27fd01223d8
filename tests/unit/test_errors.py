"""simq's error messages, and which errors are Celery's.

simq's own errors (``simq.exceptions``) say what went wrong, why, and how to fix it; every
test of one matches the whole message with an anchored regex (tests/README.md). Errors of
the calling API, the tracer and the result (``NotRegistered``, ``TimeoutError``, kombu's
``EncodeError``...) are Celery's own, raised by Celery's code running on the simulation.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from typing import Any

import celery
import pytest
from celery.exceptions import Ignore, NotRegistered, TimeoutError
from kombu.exceptions import EncodeError

import simq
from simq.exceptions import NoActiveSimulation, SimqError, SimulationIdle, UnknownTarget

UTC = dt.timezone.utc
TID = "00000000-0000-4000-8000-000000000001"

NO_BROKER = (
    "this app's broker is simq's simulated broker, which exists only inside a simulation; "
    "use `with simq.Simulation(app) as sim:` around the call, or configure a real "
    "broker_url for use outside simq"
)
NO_BACKEND = (
    "this app's result backend is simq's simulated store, which exists only inside a "
    "simulation; use `with simq.Simulation(app) as sim:` around the call, or configure a "
    "real result_backend for use outside simq"
)


def exactly(message: str) -> str:
    """An anchored regex matching ``message`` and nothing else."""
    return f"^{re.escape(message)}$"


def make_app(**settings: Any) -> celery.Celery:
    app = simq.App("errs", **settings)

    @app.task(name="errs.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="errs.skip")
    def skip() -> None:
        raise Ignore()

    return app


# -- no simulation, or the wrong app ---------------------------------------------------


def test_delay_outside_a_simulation() -> None:
    """delay() on a simq.App with no active simulation raises NoActiveSimulation saying how
    to start one (or to configure a real broker), and nothing is published anywhere."""
    app = make_app()
    with pytest.raises(NoActiveSimulation, match=exactly(NO_BROKER)) as info:
        app.tasks["errs.add"].delay(1, 2)
    assert isinstance(info.value, SimqError)
    assert isinstance(info.value, RuntimeError)


def test_revoke_outside_a_simulation() -> None:
    """app.control.revoke() with no active simulation raises NoActiveSimulation."""
    app = make_app()
    with pytest.raises(NoActiveSimulation, match=exactly(NO_BROKER)):
        app.control.revoke(TID)


def test_result_outside_a_simulation() -> None:
    """Reading a result of a simq.App with no active simulation raises NoActiveSimulation."""
    app = make_app()
    with pytest.raises(NoActiveSimulation, match=exactly(NO_BACKEND)):
        app.AsyncResult(TID).get(timeout=1)


def test_outside_again_after_the_simulation_ends() -> None:
    """The same app works inside a simulation and refuses again once it has ended."""
    app = make_app()
    with simq.Simulation(app, seed=1):
        assert app.tasks["errs.add"].delay(1, 2).get() == 3
    with pytest.raises(NoActiveSimulation, match=exactly(NO_BROKER)):
        app.tasks["errs.add"].delay(1, 2)


def test_simulation_of_something_that_is_not_a_celery_app() -> None:
    """Simulation() takes only a celery.Celery app; anything else is a TypeError naming it."""
    with pytest.raises(
        TypeError,
        match=r"^Simulation\(\) takes a celery\.Celery app, got object <object object at 0x[0-9a-f]+>$",
    ):
        simq.Simulation(object())
    with pytest.raises(
        TypeError, match=exactly("Simulation() takes a celery.Celery app, got str 'errs'")
    ):
        simq.Simulation("errs")


def test_always_eager_app_is_refused() -> None:
    """An app with task_always_eager=True would bypass the simulation: start() refuses it
    and leaves the app as it was."""
    app = make_app(task_always_eager=True)
    sim = simq.Simulation(app)
    with pytest.raises(
        SimqError,
        match=exactly(
            "app 'errs' has task_always_eager=True, which would run every call in the "
            "caller and bypass the simulation; set app.conf.task_always_eager = False for "
            "the simulated run"
        ),
    ):
        sim.start()
    assert not sim.active
    app.conf.task_always_eager = False
    with simq.Simulation(app) as sim:
        assert app.tasks["errs.add"].delay(2, 2).get() == 4


def test_always_eager_celery_app_is_refused() -> None:
    """The same holds for a plain celery.Celery app configured eager."""
    app = celery.Celery("eager")
    app.conf.task_always_eager = True
    with pytest.raises(SimqError, match=r"^app 'eager' has task_always_eager=True, "):
        simq.Simulation(app).start()


def test_two_simulations_in_one_process() -> None:
    """A second simulation (of the same app or another) cannot start while one is active;
    the message names the active one and where it was started."""
    app = make_app()
    line = sys._getframe().f_lineno + 1
    with simq.Simulation(app, seed=3):
        for second in (simq.Simulation(app, seed=4), simq.Simulation(simq.App("other"))):
            with pytest.raises(
                SimqError,
                match=exactly(
                    "another simulation is active in this process (<Simulation seed=3 "
                    "now=2030-01-01T00:00:00+00:00 workers=['worker-1'] events=1>, started at "
                    f"tests/unit/test_errors.py:{line} in test_two_simulations_in_one_process); "
                    "close it (sim.close(), or end its `with` block) before starting another"
                ),
            ):
                second.start()
            assert not second.active


def test_run_on_an_inactive_simulation() -> None:
    """run() before start() says to use the context manager or start()."""
    sim = simq.Simulation(make_app())
    with pytest.raises(
        SimqError,
        match=exactly(
            "run() needs an active simulation; use `with Simulation(app) as sim:` or call "
            "sim.start()"
        ),
    ):
        sim.run()


def test_restarting_a_closed_simulation() -> None:
    """A closed simulation cannot start again; the message says to make a new one."""
    sim = simq.Simulation(make_app())
    with sim:
        pass
    with pytest.raises(
        SimqError, match=exactly("this simulation has ended; create a new Simulation to run again")
    ):
        sim.start()


# -- topology -------------------------------------------------------------------------


def test_worker_name_that_already_exists() -> None:
    """Adding a worker under a taken name says to pick another."""
    with (
        simq.Simulation(make_app()) as sim,
        pytest.raises(
            SimqError, match=exactly("a worker named 'worker-1' already exists; pick another name")
        ),
    ):
        sim.add_worker(name="worker-1")


def test_unknown_worker_names_the_existing_ones() -> None:
    """sim.worker() with an unknown name raises UnknownTarget listing the workers."""
    with simq.Simulation(make_app(), workers=2) as sim:
        sim.add_worker(name="io")
        with pytest.raises(
            UnknownTarget,
            match=exactly("no worker named 'nope'; workers: 'worker-1', 'worker-2', 'io'"),
        ) as info:
            sim.worker("nope")
    assert isinstance(info.value, LookupError)


def test_unknown_worker_when_there_are_none() -> None:
    """sim.worker() in a simulation without workers says there are none."""
    with (
        simq.Simulation(make_app(), workers=0) as sim,
        pytest.raises(UnknownTarget, match=exactly("no worker named 'worker-1'; workers: none")),
    ):
        sim.worker("worker-1")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"seed": "7"},
            TypeError,
            "Simulation(): seed must be an int, got the string '7'; pass a number, not a "
            "string: seed=7",
        ),
        ({"workers": -1}, ValueError, "Simulation(): workers must be an int >= 0, got -1"),
        ({"concurrency": 0}, ValueError, "Simulation(): concurrency must be an int >= 1, got 0"),
        (
            {"prefetch_multiplier": -2},
            ValueError,
            "Simulation(): prefetch_multiplier must be an int >= 0, got -2",
        ),
        (
            {"start": dt.datetime(2030, 1, 1)},
            ValueError,
            "Simulation(): start must be a timezone-aware datetime, got "
            "datetime.datetime(2030, 1, 1, 0, 0); add a timezone, e.g. "
            "tzinfo=datetime.timezone.utc",
        ),
    ],
)
def test_invalid_simulation_options(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """An invalid Simulation option is refused at construction with what was wrong."""
    with pytest.raises(error, match=exactly(message)):
        simq.Simulation(make_app(), **options)


def test_worker_queues_given_as_a_string() -> None:
    """queues='name' is refused: it would be read as one queue per character."""
    with (
        simq.Simulation(make_app()) as sim,
        pytest.raises(
            TypeError,
            match=exactly(
                "add_worker(): queues must be a non-empty list of queue names, got the string "
                "'celery'; pass queues=['celery']"
            ),
        ),
    ):
        sim.add_worker(queues="celery")


# -- time -----------------------------------------------------------------------------


def test_negative_advance() -> None:
    """advance() with negative seconds is a ValueError naming the value."""
    with (
        simq.Simulation(make_app()) as sim,
        pytest.raises(
            ValueError,
            match=exactly("advance(): seconds must be a number of seconds >= 0, got -1.5"),
        ),
    ):
        sim.advance(-1.5)


def test_naive_until() -> None:
    """run(until=) with a naive datetime says to make it timezone-aware."""
    with (
        simq.Simulation(make_app()) as sim,
        pytest.raises(
            ValueError,
            match=exactly(
                "run(): until must be a timezone-aware datetime, got "
                "datetime.datetime(2030, 1, 2, 0, 0); add a timezone, e.g. "
                "tzinfo=datetime.timezone.utc"
            ),
        ),
    ):
        sim.run(until=dt.datetime(2030, 1, 2))


def test_get_timeout_uses_celerys_message() -> None:
    """get(timeout=) running out of virtual time raises Celery's TimeoutError message."""
    app = make_app()
    with simq.Simulation(app) as sim:
        result = app.tasks["errs.add"].apply_async((1, 2), countdown=60)
        with pytest.raises(TimeoutError, match=exactly("The operation timed out.")):
            result.get(timeout=10)
        assert sim.elapsed == 10


# -- tasks and arguments --------------------------------------------------------------


def test_unknown_task_name_keeps_celerys_message() -> None:
    """app.tasks['x'] raises NotRegistered whose str() and repr() are Celery's."""
    app = make_app()
    with pytest.raises(NotRegistered) as info:
        app.tasks["x"]
    assert str(info.value) == "'x'"
    assert repr(info.value) == "Task of kind 'x' never registered, please make sure it's imported."


def test_unserializable_argument() -> None:
    """An argument JSON cannot encode raises kombu's EncodeError at the call (Celery's
    producer serializes before publishing), and nothing is published."""
    app = make_app()
    with simq.Simulation(app) as sim:
        with pytest.raises(
            EncodeError, match=exactly("Object of type object is not JSON serializable")
        ) as info:
            app.tasks["errs.add"].delay(object(), 1)
        assert isinstance(info.value.__cause__ or info.value.args[0], TypeError)
        assert len(sim.history.where(kind="published")) == 0


def test_serializer_the_worker_does_not_accept() -> None:
    """Celery publishes a pickle message when asked (the producer is not limited by
    accept_content), but a worker accepting only json refuses it: Celery's consumer
    (consumer.py on_task_received -> on_invalid_task) rejects it without requeue, so the
    task never runs and its result stays PENDING."""
    app = make_app()
    with simq.Simulation(app) as sim:
        result = app.tasks["errs.add"].apply_async((1, 2), serializer="pickle", task_id=TID)
        (published,) = sim.history.where(kind="published")
        assert published.task_id == TID
        with pytest.raises(SimulationIdle):
            result.get()
        kinds = sim.history.where(task_id=TID).kinds()
        assert "started" not in kinds
        assert "acked" not in kinds
        assert kinds[-2:] == ["undecodable", "rejected"]
        assert sim.history.where(task_id=TID, kind="rejected").last().details["requeue"] is False
        assert result.state == "PENDING"
        assert sim.check() == []


def test_soft_time_limit_above_time_limit() -> None:
    """A soft limit above the hard limit raises Celery's ValueError at apply_async (§3.2 G12)."""
    app = make_app()

    @app.task(name="errs.slow", soft_time_limit=10, time_limit=5)
    def slow() -> None: ...

    with simq.Simulation(app) as sim:
        with pytest.raises(
            ValueError, match=exactly("soft_time_limit must be less than or equal to time_limit")
        ):
            slow.apply_async()
        assert len(sim.history.where(kind="published")) == 0


def test_wrong_arguments_name_the_function() -> None:
    """Arguments that do not fit the task's signature fail at the call, as in Celery."""
    app = make_app()
    with (
        simq.Simulation(app),
        pytest.raises(
            TypeError, match=exactly("add() missing 1 required positional argument: 'y'")
        ),
    ):
        app.tasks["errs.add"].delay(1)


# -- SimulationIdle explanations --------------------------------------------------------


def test_idle_with_a_queue_nobody_consumes() -> None:
    """Waiting on a task routed to an unconsumed queue says which worker to add."""
    app = make_app()
    with simq.Simulation(app) as sim:
        result = app.tasks["errs.add"].apply_async((1, 2), queue="reports", task_id=TID)
        with pytest.raises(
            SimulationIdle,
            match=exactly(
                f"task {TID} can never become ready: the simulation is idle and it is PENDING;"
                " its message waits in queue 'reports', which no worker consumes: call"
                " sim.add_worker(queues=['reports'])"
            ),
        ):
            result.get()
        sim.add_worker(queues=["reports"])
        assert result.get() == 3


def test_idle_without_workers() -> None:
    """Waiting in a simulation with no workers says to add one."""
    app = make_app()
    with simq.Simulation(app, workers=0) as sim:
        result = app.tasks["errs.add"].apply_async((1, 2), task_id=TID)
        with pytest.raises(
            SimulationIdle,
            match=exactly(
                f"task {TID} can never become ready: the simulation is idle and it is PENDING;"
                " its message waits in queue 'celery' and the simulation has no workers: pass"
                " workers=1 or call sim.add_worker()"
            ),
        ) as info:
            result.get()
        assert isinstance(info.value, RuntimeError)
        assert sim.elapsed == 0


def test_idle_for_a_task_never_published() -> None:
    """Waiting on an id nothing published says so."""
    app = make_app()
    with (
        simq.Simulation(app),
        pytest.raises(
            SimulationIdle,
            match=exactly(
                f"task {TID} can never become ready: the simulation is idle and it is PENDING;"
                " no message for this task id was ever published in this simulation"
            ),
        ),
    ):
        app.AsyncResult(TID).get()


def test_idle_after_the_last_attempt_ended_unready() -> None:
    """Waiting on an ignored task names its last events and that nothing is left to run."""
    app = make_app()
    with (
        simq.Simulation(app),
        pytest.raises(
            SimulationIdle,
            match=exactly(
                f"task {TID} can never become ready: the simulation is idle and it is PENDING;"
                " its last event was 'ignored' at 2030-01-01T00:00:00+00:00 (delivered, started,"
                " acked, ignored): no message for it is left to run"
            ),
        ),
    ):
        app.tasks["errs.skip"].apply_async(task_id=TID).get()
