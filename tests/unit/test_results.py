"""Celery's AsyncResult on the simulation: reading states, waiting in virtual time, control."""

from __future__ import annotations

from typing import Any

import celery
import celery.result
import pytest
from celery import states
from celery.exceptions import TaskRevokedError, TimeoutError

import simq
from simq.exceptions import SimulationIdle


def make_app() -> tuple[celery.Celery, dict[str, Any]]:
    app = simq.App("proj")

    @app.task(shared=False, name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, name="proj.boom")
    def boom() -> None:
        raise KeyError("k")

    @app.task(shared=False, bind=True, name="proj.flip")
    def flip(self: celery.Task) -> str:
        # FAILURE first, then a retry sent with throw=False succeeds 10 s later (§2.2).
        if self.request.retries == 0:
            self.retry(countdown=10, throw=False)
            raise KeyError("first")
        return "second"

    return app, {"add": add, "boom": boom, "flip": flip}


# -- reading ---------------------------------------------------------------------------


def test_success_reads_through_every_accessor() -> None:
    """A succeeded task: state/status SUCCESS, result/info the value, ready, successful."""
    app, t = make_app()
    with simq.Simulation(app):
        result = t["add"].delay(2, 3)
        assert (result.state, result.ready()) == (states.PENDING, False)
        assert result.get() == 5
        assert result.id == result.task_id
        assert result.state == result.status == states.SUCCESS
        assert result.result == result.info == 5
        assert result.traceback is None
        assert result.ready() and result.successful() and not result.failed()


def test_failure_reads_the_exception_and_traceback() -> None:
    """A failed task: FAILURE, the exception as result, a traceback string, failed()."""
    app, t = make_app()
    with simq.Simulation(app):
        result = t["boom"].delay()
        with pytest.raises(KeyError, match=r"^'k'$"):
            result.get()
        assert result.state == states.FAILURE
        assert isinstance(result.result, KeyError)
        assert "KeyError" in (result.traceback or "")
        assert result.ready() and result.failed() and not result.successful()


def test_get_without_propagate_returns_the_exception() -> None:
    """get(propagate=False) returns the stored exception instead of raising it."""
    app, t = make_app()
    with simq.Simulation(app):
        value = t["boom"].delay().get(propagate=False)
    assert isinstance(value, KeyError)
    assert value.args == ("k",)


def test_unknown_id_reads_pending() -> None:
    """An id nothing was stored for reads PENDING, as in Celery (§2.1)."""
    app, _ = make_app()
    with simq.Simulation(app):
        handle = app.AsyncResult("no-such-id")
        assert (handle.state, handle.result, handle.ready()) == (states.PENDING, None, False)


# -- waiting in virtual time -----------------------------------------------------------


def test_get_runs_the_simulation_forward_in_virtual_time() -> None:
    """get() advances the virtual clock until the result is ready."""
    app, t = make_app()
    with simq.Simulation(app) as sim:
        result = t["add"].apply_async((1, 1), countdown=3600)
        assert sim.elapsed == 0
        assert result.get() == 2
        assert sim.elapsed == 3600


def test_get_timeout_is_in_virtual_seconds() -> None:
    """get(timeout=T) raises TimeoutError after exactly T virtual seconds."""
    app, t = make_app()
    with simq.Simulation(app) as sim:
        result = t["add"].apply_async((1, 1), countdown=100)
        with pytest.raises(TimeoutError, match=r"^The operation timed out\.$"):
            result.get(timeout=30)
        assert sim.elapsed == 30
        assert result.state == states.PENDING
        assert result.get() == 2
        assert sim.elapsed == 100


def test_get_in_a_queue_nobody_consumes_says_which_worker_to_add() -> None:
    """An idle simulation with the message in an unconsumed queue names the fix."""
    app, t = make_app()
    with simq.Simulation(app) as sim:
        result = t["add"].apply_async((1, 1), queue="nobody")
        with pytest.raises(
            SimulationIdle,
            match=(
                rf"^task {result.id} can never become ready: the simulation is idle and it is "
                r"PENDING; its message waits in queue 'nobody', which no worker consumes: "
                r"call sim\.add_worker\(queues=\['nobody'\]\)$"
            ),
        ):
            result.get()
        sim.add_worker(queues=["nobody"])
        assert result.get() == 2


def test_get_without_workers_says_to_add_one() -> None:
    """With workers=0 the idle error says to pass workers=1 or add a worker."""
    app, t = make_app()
    with simq.Simulation(app, workers=0):
        result = t["add"].delay(1, 1)
        with pytest.raises(
            SimulationIdle,
            match=(
                rf"^task {result.id} can never become ready: the simulation is idle and it is "
                r"PENDING; its message waits in queue 'celery' and the simulation has no "
                r"workers: pass workers=1 or call sim\.add_worker\(\)$"
            ),
        ):
            result.get()


def test_get_of_an_id_never_sent_says_so() -> None:
    """Waiting for an id no message carries explains that nothing was published."""
    app, _ = make_app()
    with (
        simq.Simulation(app),
        pytest.raises(
            SimulationIdle,
            match=(
                r"^task ghost can never become ready: the simulation is idle and it is "
                r"PENDING; no message for this task id was ever published in this simulation$"
            ),
        ),
    ):
        app.AsyncResult("ghost").get()


def test_get_inside_a_task_raises_runtime_error() -> None:
    """result.get() inside a running task raises Celery's RuntimeError (§2.3)."""
    app, t = make_app()

    @app.task(shared=False, name="proj.waits")
    def waits() -> str:
        try:
            t["add"].delay(1, 1).get()
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    with simq.Simulation(app):
        message = waits.delay().get()
    assert message == celery.result.E_WOULDBLOCK
    assert message.startswith("Never call result.get() within a task!\n")


# -- caching (§2.3) --------------------------------------------------------------------


def test_ready_state_is_cached_per_instance() -> None:
    """An instance that saw FAILURE keeps it; a fresh one sees the later SUCCESS (exp6)."""
    app, t = make_app()
    with simq.Simulation(app) as sim:
        first = t["flip"].delay()
        with pytest.raises(KeyError):
            first.get()
        sim.run()
        fresh = app.AsyncResult(first.id)
        assert (first.state, first.failed()) == (states.FAILURE, True)
        assert (fresh.state, fresh.get()) == (states.SUCCESS, "second")
        writes = [e["state"] for e in sim.history.where(kind="state", task_id=first.id)]
        assert writes == [states.FAILURE, states.SUCCESS]


def test_unready_states_are_not_cached() -> None:
    """An instance that read PENDING reads the later SUCCESS."""
    app, t = make_app()
    with simq.Simulation(app) as sim:
        result = t["add"].apply_async((1, 2), countdown=5)
        assert result.state == states.PENDING
        sim.run()
        assert result.state == states.SUCCESS


# -- control ---------------------------------------------------------------------------


def test_forget_removes_the_result() -> None:
    """forget() removes the stored result: the id reads PENDING again (§2.2)."""
    app, t = make_app()
    with simq.Simulation(app) as sim:
        result = t["add"].delay(1, 2)
        result.get()
        result.forget()
        assert result.state == states.PENDING
        assert app.AsyncResult(result.id).state == states.PENDING
        assert sim.history.where(kind="forgotten", task_id=result.id)


def test_revoke_before_start_gives_revoked() -> None:
    """A task revoked before it starts is REVOKED('revoked') and never runs (§2.1)."""
    app, t = make_app()
    with simq.Simulation(app) as sim:
        result = t["add"].apply_async((1, 2), countdown=10)
        result.revoke()
        with pytest.raises(TaskRevokedError, match=r"^revoked$"):
            result.get()
        sim.run()
        assert result.state == states.REVOKED
        assert result.ready() and not result.failed() and not result.successful()
        assert isinstance(result.get(propagate=False), TaskRevokedError)
        revoked = sim.history.where(kind="revoked", task_id=result.id)
        assert [e["reason"] for e in revoked] == ["revoked"]
        assert not sim.history.where(kind="started", task_id=result.id)
        assert sim.history.where(kind="revoke", task_id=result.id).first()["terminate"] is False


def test_ignored_result_returns_none_without_waiting() -> None:
    """A call with ignore_result=True has ignored set and get() returns None at once."""
    app, t = make_app()
    with simq.Simulation(app) as sim:
        result = t["add"].apply_async((1, 2), ignore_result=True, countdown=60)
        assert result.ignored is True
        assert result.get() is None
        assert sim.elapsed == 0
    app2, t2 = make_app()
    with simq.Simulation(app2):
        assert t2["add"].delay(1, 2).ignored is False
