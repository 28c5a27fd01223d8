"""simq's error messages: each says what went wrong, why, and how to fix it.

Every test matches the whole message with an anchored regex (tests/README.md).
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from typing import Any

import pytest

import simq
from simq.exceptions import (
    EncodeError,
    Ignore,
    NoActiveSimulation,
    NotRegistered,
    SimqError,
    SimulationIdle,
    TimeoutError,
    UnknownTarget,
)

UTC = dt.timezone.utc
TID = "00000000-0000-4000-8000-000000000001"


def exactly(message: str) -> str:
    """An anchored regex matching ``message`` and nothing else."""
    return f"^{re.escape(message)}$"


def make_app(**settings: Any) -> simq.App:
    app = simq.App("errs", **settings)

    @app.task(name="errs.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="errs.skip")
    def skip() -> None:
        raise Ignore()

    return app


# -- no or too many simulations -------------------------------------------------------


def test_delay_outside_a_simulation() -> None:
    """delay() with no active simulation raises NoActiveSimulation saying how to start one."""
    app = make_app()
    with pytest.raises(
        NoActiveSimulation,
        match=exactly(
            "sending task 'errs.add' publishes a message, but app 'errs' has no active "
            "simulation; start one with `with simq.Simulation(app) as sim:` (or the "
            "`simulation` pytest fixture), or run the task in process with task.apply()"
        ),
    ):
        app.tasks["errs.add"].delay(1, 2)


def test_revoke_outside_a_simulation() -> None:
    """app.control.revoke() with no active simulation raises NoActiveSimulation."""
    app = make_app()
    with pytest.raises(
        NoActiveSimulation,
        match=exactly(
            "app.control.revoke() publishes a message, but app 'errs' has no active "
            "simulation; start one with `with simq.Simulation(app) as sim:` (or the "
            "`simulation` pytest fixture), or run the task in process with task.apply()"
        ),
    ):
        app.control.revoke(TID)


def test_two_simulations_on_one_app() -> None:
    """Starting a second simulation of an app names the active one's seed."""
    app = make_app()
    with simq.Simulation(app, seed=3):
        second = simq.Simulation(app, seed=4)
        with pytest.raises(
            SimqError,
            match=exactly(
                "app 'errs' already has an active simulation (seed=3); close it before "
                "starting another"
            ),
        ):
            second.start()
        assert not second.active
    assert app._world is None


def test_two_simulations_in_one_process() -> None:
    """A simulation of another app cannot start while one is active, and says where."""
    first, other = make_app(), simq.App("other")
    with simq.Simulation(first):
        with pytest.raises(
            SimqError,
            match=(
                r"^cannot start virtual time: another simulation's virtual time is active"
                r" \(started at .+test_errors\.py:\d+\); one process runs one simulation at a"
                r" time, so stop the other simulation first$"
            ),
        ):
            simq.Simulation(other).start()
        assert other._world is None


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
        ({"seed": "7"}, TypeError, "seed must be an int, got '7'"),
        ({"workers": -1}, ValueError, "workers must be >= 0, got -1"),
        ({"concurrency": 0}, ValueError, "worker 'worker-1': concurrency must be >= 1, got 0"),
        (
            {"prefetch_multiplier": -2},
            ValueError,
            "worker 'worker-1': prefetch_multiplier must be >= 0, got -2",
        ),
        (
            {"start": dt.datetime(2030, 1, 1)},
            ValueError,
            "start must be timezone-aware (e.g. tzinfo=datetime.timezone.utc)",
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
            TypeError, match=exactly("queues must be a list of names, got the string 'celery'")
        ),
    ):
        sim.add_worker(queues="celery")


# -- time -----------------------------------------------------------------------------


def test_negative_advance() -> None:
    """advance() with negative seconds is a ValueError naming the value."""
    with (
        simq.Simulation(make_app()) as sim,
        pytest.raises(ValueError, match=exactly("advance() needs seconds >= 0, got -1.5")),
    ):
        sim.advance(-1.5)


def test_naive_until() -> None:
    """run(until=) with a naive datetime says to make it timezone-aware."""
    with (
        simq.Simulation(make_app()) as sim,
        pytest.raises(
            ValueError,
            match=exactly("until must be timezone-aware (e.g. tzinfo=datetime.timezone.utc)"),
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


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")
def test_unknown_task_name_suggests_the_closest() -> None:
    """A NotRegistered miss carries a note with the closest registered name, if any."""
    app = make_app()
    with pytest.raises(
        NotRegistered,
        match=exactly(
            "'errs.ad'\nno task named 'errs.ad' is registered with this app; "
            "did you mean 'errs.add'?"
        ),
    ):
        app.tasks["errs.ad"]
    with pytest.raises(
        NotRegistered,
        match=exactly(
            "'x'\nno task named 'x' is registered with this app; "
            "import the module that defines it before calling it"
        ),
    ):
        app.tasks["x"]


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        (
            "10/x",
            "task 'errs.limited': rate_limit: unknown time unit in rate '10/x'; "
            "use 's', 'm' or 'h'",
        ),
        (
            "ten/s",
            "task 'errs.limited': rate_limit: cannot parse rate 'ten/s'; "
            "use a number or 'N/s', 'N/m', 'N/h'",
        ),
        ("-5/m", "task 'errs.limited': rate_limit: rate '-5/m' is negative"),
        (
            True,
            "task 'errs.limited': rate_limit: True is not a rate; "
            "use a number or 'N/s', 'N/m', 'N/h'",
        ),
    ],
)
def test_malformed_rate_limit(rate: Any, message: str) -> None:
    """A malformed rate_limit fails at decoration, naming the task and the accepted forms."""
    app = make_app()
    with pytest.raises(ValueError, match=exactly(message)):

        @app.task(name="errs.limited", rate_limit=rate)
        def limited() -> None: ...

    assert "errs.limited" not in app.tasks


def test_unserializable_argument() -> None:
    """An argument JSON cannot encode raises kombu's EncodeError at the call."""
    app = make_app()
    with simq.Simulation(app) as sim:
        with pytest.raises(
            EncodeError, match=exactly("Object of type object is not JSON serializable")
        ):
            app.tasks["errs.add"].delay(object(), 1)
        assert len(sim.history.where(kind="published")) == 0


def test_unsupported_serializer() -> None:
    """A serializer simq does not implement is refused, naming the supported ones."""
    app = make_app()
    with (
        simq.Simulation(app),
        pytest.raises(
            EncodeError,
            match=exactly("serializer 'pickle' is not supported by simq; use one of ('json',)"),
        ),
    ):
        app.tasks["errs.add"].apply_async((1, 2), serializer="pickle")


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
