"""A simulation's lifecycle: who may drive it, nesting, closing, and leaks.

A task cannot drive the simulation it runs in; a nested ``with sim:`` leaves it open; a
closed simulation refuses changes to its final history; another thread gets a clear
error; a simulation a test leaves active fails that test (the pytest plugin).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import celery
import pytest
from celery.exceptions import TimeoutError
from celery.result import E_WOULDBLOCK, allow_join_result

import simq
from simq.exceptions import SimqError

pytest_plugins = ["pytester"]


def exactly(message: str) -> str:
    """An anchored regex matching ``message`` and nothing else."""
    return f"^{re.escape(message)}$"


def make_app() -> celery.Celery:
    app = simq.App("life")

    @app.task(name="life.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="life.double", shared=False)
    def double(x: int) -> int:
        time.sleep(3)
        return x * 2

    return app


# -- a task cannot drive the simulation -----------------------------------------------------


@pytest.mark.parametrize("call", ["run()", "advance()"])
def test_driving_the_simulation_inside_a_task_fails_that_task(call: str) -> None:
    """sim.run()/advance() inside a task raise SimqError there; the task fails, the
    simulation goes on (before, the call was accepted and the task never finished)."""
    app = make_app()
    with simq.Simulation(app) as sim:

        @app.task(name="life.drives", shared=False)
        def drives() -> str:
            sim.run() if call == "run()" else sim.advance(1)
            return "never"

        r = drives.delay()
        assert r.get(propagate=False) is not None
        assert r.state == "FAILURE"
        assert isinstance(r.result, SimqError)
        assert re.match(
            exactly(
                f"{call} was called inside task 'life.drives' [{r.id}], running in "
                "worker-1/child-1: a task cannot drive the simulation it runs in, and would "
                "never finish; call it from test code. Inside a task, time.sleep() lets "
                "virtual time pass"
            ),
            str(r.result),
        )
        assert app.tasks["life.add"].delay(1, 2).get() == 3


def test_get_inside_a_task_raises_celerys_error() -> None:
    """result.get() inside a task raises Celery's RuntimeError, as in a prefork child."""
    app = make_app()
    with simq.Simulation(app):

        @app.task(name="life.joins", shared=False)
        def joins() -> int:
            return int(app.tasks["life.add"].delay(1, 1).get())

        r = joins.delay()
        r.get(propagate=False)
        assert isinstance(r.result, RuntimeError)
        assert str(r.result) == E_WOULDBLOCK


def test_allowed_get_inside_a_task_waits_in_virtual_time() -> None:
    """With allow_join_result() a task polls for its subtask's result as Celery's child
    does, in virtual time, while another child runs the subtask (before, the loop ran
    inside the task and the outer get() timed out)."""
    app = make_app()
    with simq.Simulation(app, concurrency=2) as sim:

        @app.task(name="life.waits", shared=False)
        def waits() -> int:
            with allow_join_result():
                return int(app.tasks["life.double"].delay(21).get(timeout=60))

        assert waits.delay().get(timeout=100) == 42
        assert sim.elapsed == 3


def test_allowed_get_on_the_only_child_times_out_as_in_celery() -> None:
    """With one child the subtask cannot start while its parent waits: the parent's get()
    times out, as on a real worker with -c 1, and then the subtask runs."""
    app = make_app()
    with simq.Simulation(app, concurrency=1) as sim:

        @app.task(name="life.stuck", shared=False)
        def stuck() -> int:
            with allow_join_result():
                return int(app.tasks["life.double"].delay(21).get(timeout=10))

        r = stuck.delay()
        r.get(propagate=False)
        assert isinstance(r.result, TimeoutError)
        sim.run()
        [child] = [e.task_id for e in sim.history.where(kind="succeeded")]
        assert app.AsyncResult(child).get() == 42
        assert sim.elapsed == 13


# -- nesting and closing --------------------------------------------------------------------


def test_nested_with_leaves_the_simulation_open() -> None:
    """An inner ``with sim:`` does not close it; the outer one does (before, the inner
    exit closed it)."""
    app = make_app()
    with simq.Simulation(app) as sim:
        with sim as inner:
            assert inner is sim
        assert sim.active
        assert app.tasks["life.add"].delay(2, 2).get() == 4
    assert not sim.active


def test_with_around_a_started_simulation_leaves_it_to_its_starter() -> None:
    """A ``with`` block around a simulation started with start() leaves it running."""
    sim = simq.Simulation(make_app()).start()
    try:
        with sim:
            pass
        assert sim.active
    finally:
        sim.close()
    assert not sim.active


def test_an_error_in_a_nested_with_propagates_and_the_outer_closes() -> None:
    """An exception leaving the inner block keeps the simulation open for the outer."""
    app = make_app()
    with pytest.raises(KeyError), simq.Simulation(app) as sim:
        try:
            with sim:
                raise KeyError("inner")
        finally:
            assert sim.active
    assert not sim.active


CLOSED = (
    "{call}: this simulation is closed (its `with` block ended, or close() was called) and "
    "its history is final; create a new Simulation to run again"
)

CHANGES: dict[str, Callable[[simq.Simulation], Any]] = {
    "add_worker()": lambda sim: sim.add_worker(),
    "crash_worker()": lambda sim: sim.crash_worker("worker-1"),
    "kill_child()": lambda sim: sim.kill_child("some-task"),
    "lose_connection()": lambda sim: sim.lose_connection("worker-1"),
    "restart_broker()": lambda sim: sim.restart_broker(),
    "shutdown_worker()": lambda sim: sim.shutdown_worker("worker-1"),
    "revoke()": lambda sim: sim.revoke("some-task"),
    "run()": lambda sim: sim.run(),
    "advance()": lambda sim: sim.advance(1),
}


@pytest.mark.parametrize("call", sorted(CHANGES))
def test_a_closed_simulation_refuses_changes(call: str) -> None:
    """Faults, workers, revokes and runs on a closed simulation raise SimqError and leave
    its history as it was (before, faults and workers were added to the final history)."""
    with simq.Simulation(make_app()) as sim:
        pass
    before = sim.history.to_jsonl()
    with pytest.raises(SimqError, match=exactly(CLOSED.format(call=call))):
        CHANGES[call](sim)
    assert sim.history.to_jsonl() == before


# -- threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["run()", "get()"])
def test_driving_from_another_thread_is_a_clear_error(call: str) -> None:
    """run() or get() from a thread other than the one that started the simulation raise
    SimqError (before: greenlet.error from the first task switch)."""
    app = make_app()
    errors: list[BaseException] = []
    with simq.Simulation(app) as sim:
        r = app.tasks["life.add"].delay(1, 2)

        def drive() -> None:
            try:
                sim.run() if call == "run()" else r.get(timeout=5)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=drive, name="driver")
        thread.start()
        thread.join()
        assert r.get() == 3
    [error] = errors
    assert isinstance(error, SimqError), error
    line = sim.started_where
    shown = "run()" if call == "run()" else "get()"
    assert str(error) == (
        f"{shown} was called from thread 'driver', but this simulation was started in "
        f"another thread ({line}): a simulation runs in the thread that started it (its "
        f"workers' children are greenlets of that thread); call {shown} from there"
    )
    assert re.match(r"^tests/unit/test_lifecycle\.py:\d+ in test_driving_from_another", line)


# -- where a simulation was started --------------------------------------------------------


def test_a_simulation_knows_where_it_was_started() -> None:
    """started_where names the user's file, line and function, not simq's."""
    line = sys._getframe().f_lineno + 1
    with simq.Simulation(make_app()) as sim:
        pass
    assert sim.started_where == (
        f"tests/unit/test_lifecycle.py:{line} in test_a_simulation_knows_where_it_was_started"
    )


# -- the pytest plugin fails a test that leaks a simulation ---------------------------------

APP = """
import datetime

import pytest
import simq

app = simq.App("leaky")


@app.task(name="leaky.add")
def add(x, y):
    return x + y
"""

ON_REAL_TIME = """

def test_after():
    assert datetime.datetime.now().year < 2030
    assert simq.simulation._ACTIVE[0] is None
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:randomly", *args)


def test_plugin_fails_a_test_that_leaves_a_simulation_active(pytester: pytest.Pytester) -> None:
    """A test that starts a simulation and never closes it errors at teardown with where
    it was started; the next test runs on real time (before: it passed, and every later
    test ran on virtual time)."""
    pytester.makepyfile(
        test_leak=APP
        + """

def test_leaks():
    sim = simq.Simulation(app).start()
    assert add.delay(1, 2).get() == 3
"""
        + ON_REAL_TIME
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            "simq: a Simulation started at test_leak.py:15 in test_leaks was never closed "
            "(<Simulation seed=0 *>); it kept the whole process on virtual time and would have "
            "leaked into every later test. It has been closed now. Use `with "
            "simq.Simulation(app) as sim:`, the `simulation` fixture, or call sim.close() (in "
            "a fixture: after its yield)",
        ]
    )


def test_plugin_fails_a_function_fixture_that_leaks(pytester: pytest.Pytester) -> None:
    """A function-scoped fixture that starts a simulation and never closes it fails the
    test that used it."""
    pytester.makepyfile(
        test_fixture_leak=APP
        + """

@pytest.fixture
def sim():
    return simq.Simulation(app).start()


def test_uses(sim):
    assert add.delay(1, 2).get() == 3
"""
        + ON_REAL_TIME
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_uses*", "simq: a Simulation started at *in sim was never*"]
    )


def test_plugin_leaves_a_module_fixtures_simulation_to_it(pytester: pytest.Pytester) -> None:
    """A module-scoped fixture may keep a simulation active across its tests; it is only
    checked once the fixture is torn down."""
    pytester.makepyfile(
        test_module_fixture=APP
        + """

@pytest.fixture(scope="module")
def sim():
    with simq.Simulation(app) as sim:
        yield sim


def test_one(sim):
    assert add.delay(1, 2).get() == 3


def test_two(sim):
    assert add.delay(2, 2).get() == 4
    assert len(sim.history.where(kind="succeeded")) == 2
""",
        test_z_after=APP + ON_REAL_TIME,
    )
    run(pytester).assert_outcomes(passed=3)


def test_plugin_fails_a_module_fixture_that_never_closes(pytester: pytest.Pytester) -> None:
    """A module-scoped fixture that never closes its simulation fails the test at whose
    teardown the fixture ended."""
    pytester.makepyfile(
        test_module_leak=APP
        + """

@pytest.fixture(scope="module")
def sim():
    yield simq.Simulation(app).start()


def test_one(sim):
    assert add.delay(1, 2).get() == 3


def test_two(sim):
    assert add.delay(2, 2).get() == 4
""",
        test_z_after=APP + ON_REAL_TIME,
    )
    result = run(pytester)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_two*"])


def test_pause_keeps_the_run_and_start_resumes_it() -> None:
    """pause() restores the app and time like close(), but the task in flight, the queue
    and the virtual clock wait for start() to carry on where they were."""
    app = celery.Celery("pause", set_as_current=False)

    @app.task(shared=False)
    def nap(n: int) -> int:
        time.sleep(10)
        return n

    sim = simq.Simulation(app).start()
    running = nap.delay(1)
    queued = nap.delay(2)
    sim.advance(4)
    sim.pause()
    assert not sim.active and simq.simulation._ACTIVE[0] is None
    assert time.time() < 1.8e9  # the real clock (virtual time starts in 2030)
    assert "send_task" not in app.__dict__ and app.amqp._producer_pool is None
    sim.start()
    assert sim.elapsed == 4.0
    assert (running.get(), queued.get()) == (1, 2)
    assert sim.elapsed == 20.0
    sim.close()
    assert sim.check() == []
