"""Ctrl-C stops a simulation and reaches the user; a task's own KeyboardInterrupt does not."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import celery
import pytest
from celery.exceptions import WorkerLostError

import simq


@pytest.fixture(autouse=True)
def _python_sigint() -> Iterator[None]:
    """Python's own SIGINT handler for the test, whatever the runner installed."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _app(log: list[str]) -> celery.Celery:
    app = celery.Celery("interrupts", set_as_current=False)

    @app.task(name="interrupts.ctrl_c", shared=False)
    def ctrl_c() -> str:
        try:
            time.sleep(1)
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C now
            time.sleep(1)
            log.append("after the signal")
        finally:
            log.append("finally")
        return "done"

    @app.task(name="interrupts.own", shared=False)
    def own() -> None:
        raise KeyboardInterrupt

    return app


def test_ctrl_c_during_a_task_body_stops_the_run_and_reaches_the_caller() -> None:
    """A SIGINT while a task runs raises KeyboardInterrupt out of get(); the task's
    finally runs on the way, the simulation closes, and Python's handler is back."""
    log: list[str] = []
    app = _app(log)
    with pytest.raises(KeyboardInterrupt), simq.Simulation(app) as sim:
        app.tasks["interrupts.ctrl_c"].delay().get()
    assert log == ["finally"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not sim.active
    # The attempt has no outcome: no child-lost, no failure, no result stored.
    assert sim.history.kinds() == ["worker-online", "published", "delivered", "started", "acked"]


def test_a_simulation_interrupted_by_ctrl_c_can_be_closed_later() -> None:
    """After a Ctrl-C the caller may catch it and end the `with` block normally."""
    log: list[str] = []
    app = _app(log)
    with simq.Simulation(app) as sim:
        r = app.tasks["interrupts.ctrl_c"].delay()
        with pytest.raises(KeyboardInterrupt):
            sim.run()
    assert r.id in {e.task_id for e in sim.history.where(kind="started")}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.celery_version(
    min="5.7",
    why="5.5's worker parent runs no task hook at a hard time limit",
)
def test_ctrl_c_during_a_hook_the_workers_parent_runs_reaches_the_caller() -> None:
    """A SIGINT while on_failure runs at a hard time limit (in the worker's parent, not a
    child) stops the run too, rather than taking the simulated worker down."""
    app = celery.Celery("interrupts", set_as_current=False)

    class Base(app.Task):  # type: ignore[name-defined,misc]
        def on_failure(self, *args: Any) -> None:
            signal.raise_signal(signal.SIGINT)

    @app.task(shared=False, base=Base, time_limit=2)
    def slow() -> None:
        time.sleep(10)

    with simq.Simulation(app) as sim:
        slow.delay()
        with pytest.raises(KeyboardInterrupt):
            sim.run()
        assert not sim.history.where(kind=["worker-crashed", "shutdown"])


@pytest.mark.celery_version(
    min="5.7",
    why="5.5's Request.on_failure does not turn the job's own KeyboardInterrupt into WorkerLostError",
)
def test_a_tasks_own_keyboard_interrupt_is_still_a_dead_child() -> None:
    """`raise KeyboardInterrupt` in a task body ends its child (WorkerLostError), and the
    run goes on."""
    app = _app([])
    with simq.Simulation(app) as sim:
        with pytest.raises(WorkerLostError, match=r"^Worker exited prematurely: "):
            app.tasks["interrupts.own"].delay().get()
        assert sim.history.where(kind="child-lost").first()["exitcode"] == 1


def test_a_sigint_handler_the_user_installed_stays_in_charge() -> None:
    """simq takes over only from Python's default handler."""
    calls: list[int] = []

    def mine(signum: int, frame: Any) -> None:
        calls.append(signum)

    signal.signal(signal.SIGINT, mine)
    app = _app([])
    with simq.Simulation(app):
        assert signal.getsignal(signal.SIGINT) is mine
    assert signal.getsignal(signal.SIGINT) is mine


SCRIPT = textwrap.dedent(
    """
    import signal, time
    import celery, simq

    app = celery.Celery("ctrl_c", set_as_current=False)

    @app.task
    def work():
        time.sleep(1)
        signal.raise_signal(signal.SIGINT)
        time.sleep(1)
        return "finished"

    with simq.Simulation(app) as sim:
        work.delay()
        sim.run()
    print("the run carried on")
    """
)


def test_a_script_interrupted_during_a_task_exits_with_keyboard_interrupt(tmp_path: Any) -> None:
    """Ctrl-C in a script's task ends the script as Ctrl-C ends any Python program
    (it used to end the task's simulated child, and the script carried on to exit 0)."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.rstrip().splitlines()[-1] == "KeyboardInterrupt"
