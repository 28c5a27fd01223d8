"""The simulated result backend as tasks see it: states, stickiness, encoding (§2)."""

from __future__ import annotations

import time

import celery
import pytest
from celery import states
from kombu.exceptions import EncodeError

import simq
from simq.exceptions import SimulationIdle

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)


@pytest.fixture
def app() -> celery.Celery:
    return simq.App("shop")


def writes(sim: simq.Simulation, task_id: str, kind: str = "state") -> list[tuple[str, object]]:
    """The ``(state, result)`` of each backend write (or discarded write) for ``task_id``."""
    return [(e["state"], e["result"]) for e in sim.history.where(kind=kind, task_id=task_id)]


# -- SUCCESS is final ----------------------------------------------------------------


def test_a_write_after_success_is_discarded(app, simulation):
    """A later run of a succeeded task id cannot replace SUCCESS; its write is discarded (G15)."""

    @app.task(shared=False, bind=True)
    def once(self, fail):
        if fail:
            raise ValueError("second run")
        return "first run"

    sim = simulation(app)
    r = once.apply_async((False,), task_id="order-1")
    assert r.get() == "first run"
    once.apply_async((True,), task_id="order-1")
    sim.run()
    assert writes(sim, "order-1") == [(states.SUCCESS, "first run")]
    discarded = writes(sim, "order-1", "state-discarded")
    assert [state for state, _ in discarded] == [states.FAILURE]
    assert app.AsyncResult("order-1").get() == "first run"


def test_update_state_after_success_is_discarded(app, simulation):
    """update_state() on a succeeded task leaves it SUCCESS (§1.10)."""

    @app.task(shared=False)
    def done():
        return 1

    sim = simulation(app)
    r = done.delay()
    r.get()
    done.update_state(task_id=r.id, state="PROGRESS", meta={"late": True})
    assert writes(sim, r.id, "state-discarded") == [("PROGRESS", {"late": True})]
    assert app.AsyncResult(r.id).state == states.SUCCESS


def test_failure_can_be_replaced_by_success(app, simulation):
    """Only SUCCESS is sticky: a later run of a failed task id overwrites FAILURE (§2.2)."""

    @app.task(shared=False)
    def flip(fail):
        if fail:
            raise ValueError("first run")
        return "second run"

    sim = simulation(app)
    first = flip.apply_async((True,), task_id="t")
    with pytest.raises(ValueError):
        first.get()
    flip.apply_async((False,), task_id="t")
    sim.run()
    assert [state for state, _ in writes(sim, "t")] == [states.FAILURE, states.SUCCESS]
    assert first.state == states.FAILURE  # this instance cached the first ready state
    assert app.AsyncResult("t").get() == "second run"


# -- track_started -------------------------------------------------------------------


def test_track_started_stores_started_with_pid_and_hostname(app, simulation):
    """track_started stores STARTED {'pid', 'hostname'} before the body runs (§2.1)."""

    @app.task(shared=False, track_started=True)
    def slow():
        time.sleep(5)
        return "done"

    sim = simulation(app)
    r = slow.delay()
    sim.advance(1)
    assert r.state == states.STARTED
    assert set(r.info) == {"pid", "hostname"}
    assert r.info["hostname"] == "worker-1"
    assert r.get() == "done"
    assert [state for state, _ in writes(sim, r.id)] == [states.STARTED, states.SUCCESS]


def test_task_track_started_setting(simulation):
    """The task_track_started setting turns STARTED on for tasks that do not say (§1.2)."""
    app = simq.App("shop", task_track_started=True)

    @app.task(shared=False)
    def quick():
        return 1

    sim = simulation(app)
    r = quick.delay()
    r.get()
    assert [state for state, _ in writes(sim, r.id)] == [states.STARTED, states.SUCCESS]


def test_without_track_started_the_state_stays_pending_while_running(app, simulation):
    """By default a running task still reads PENDING (§2.1)."""

    @app.task(shared=False)
    def slow():
        time.sleep(5)

    sim = simulation(app)
    r = slow.delay()
    sim.advance(1)
    assert sim.history.where(kind="started", task_id=r.id)
    assert r.state == states.PENDING


# -- ignore_result -------------------------------------------------------------------


@pytest.mark.parametrize("fails", [False, True])
def test_ignore_result_stores_no_state(app, simulation, fails):
    """With ignore_result no state is written for success or failure, STARTED included (§1.2)."""

    @app.task(shared=False, ignore_result=True, track_started=True)
    def fire_and_forget():
        if fails:
            raise ValueError("unseen")
        return "unseen"

    sim = simulation(app)
    r = fire_and_forget.delay()
    assert r.get() is None
    sim.run()
    assert not sim.history.where(kind="state")
    assert len(sim.history.where(kind="started")) == 1
    assert app.AsyncResult(r.id).state == states.PENDING


def test_per_call_ignore_result(app, simulation):
    """apply_async(ignore_result=True) ignores the result of that call only (§1.5)."""

    @app.task(shared=False)
    def quick(x):
        return x

    sim = simulation(app)
    ignored = quick.apply_async((1,), ignore_result=True)
    kept = quick.apply_async((2,))
    assert kept.get() == 2
    assert ignored.get() is None
    assert not writes(sim, ignored.id)
    assert writes(sim, kept.id) == [(states.SUCCESS, 2)]


def test_store_errors_even_if_ignored_stores_failure(app, simulation):
    """store_errors_even_if_ignored writes FAILURE although the result is ignored (§1.2)."""

    @app.task(shared=False, ignore_result=True, store_errors_even_if_ignored=True)
    def fragile(fail):
        if fail:
            raise ValueError("kept")
        return "dropped"

    sim = simulation(app)
    ok = fragile.delay(False)
    bad = fragile.delay(True)
    sim.run()
    assert not writes(sim, ok.id)
    assert [state for state, _ in writes(sim, bad.id)] == [states.FAILURE]
    with pytest.raises(ValueError, match=r"^kept$"):
        app.AsyncResult(bad.id).get()


def test_ignored_retry_stores_no_retry_state(app, simulation):
    """RETRY is not written when the result is ignored (§4.3)."""

    @app.task(shared=False, bind=True, ignore_result=True, max_retries=1)
    def flaky(self):
        if self.request.retries == 0:
            raise self.retry(countdown=1)

    sim = simulation(app)
    flaky.delay()
    sim.run()
    assert len(sim.history.where(kind="started")) == 2
    assert not sim.history.where(kind="state")


# -- encoding ------------------------------------------------------------------------


def test_results_are_stored_encoded(app, simulation):
    """A tuple return value comes back as a list, as from a JSON backend (§2.1)."""

    @app.task(shared=False)
    def pair():
        return (1, ("a", 2.5))

    sim = simulation(app)
    r = pair.delay()
    assert r.get() == [1, ["a", 2.5]]
    assert writes(sim, r.id) == [(states.SUCCESS, [1, ["a", 2.5]])]


def test_unserializable_result_fails_with_encode_error(app, simulation):
    """A return value the serializer cannot encode makes the task FAILURE(EncodeError).

    kombu wraps the TypeError (``EncodeError(TypeError(...))``, kombu/serialization.py
    ``_reraise_errors``); Celery stores ``exc.args`` with ``ensure_serializable``, which
    keeps the repr of the inner TypeError (celery/backends/base.py ``prepare_exception``).
    """

    @app.task(shared=False)
    def weird():
        return {1, 2}

    sim = simulation(app)
    r = weird.delay()
    with pytest.raises(
        EncodeError, match=r"^TypeError\('Object of type set is not JSON serializable'\)$"
    ):
        r.get()
    assert [state for state, _ in writes(sim, r.id)] == [states.FAILURE]
    assert sim.history.where(kind="failed", task_id=r.id).first()["exception"]["exc_type"] == (
        "EncodeError"
    )


def test_exception_is_rebuilt_from_its_stored_form(app, simulation):
    """A stored exception is rebuilt with its type and arguments (§2.3)."""

    @app.task(shared=False)
    def bad():
        raise KeyError("missing", 3)

    sim = simulation(app)
    r = bad.delay()
    with pytest.raises(KeyError) as info:
        r.get()
    assert info.value.args == ("missing", 3)
    stored = writes(sim, r.id)[0][1]
    assert stored == {
        "exc_type": "KeyError",
        "exc_module": "builtins",
        "exc_message": ["missing", 3],
    }
    assert r.failed() and r.ready() and not r.successful()


# -- custom states, done time, forget ------------------------------------------------


def test_custom_state_precedes_success(app, simulation):
    """update_state('PROGRESS') shows while the task runs; SUCCESS replaces it (§1.10)."""

    @app.task(shared=False, bind=True)
    def work(self):
        self.update_state(state="PROGRESS", meta={"done": 50})
        time.sleep(5)
        return "all"

    sim = simulation(app)
    r = work.delay()
    sim.advance(1)
    assert (r.state, r.info) == ("PROGRESS", {"done": 50})
    assert r.get() == "all"
    assert writes(sim, r.id) == [("PROGRESS", {"done": 50}), (states.SUCCESS, "all")]


def test_date_done_is_the_virtual_completion_time(app, simulation):
    """A ready result's date_done is the virtual time it was stored (§2.3)."""

    @app.task(shared=False)
    def slow():
        time.sleep(30)

    sim = simulation(app)
    r = slow.delay()
    r.get()
    assert r.date_done == sim.now
    assert sim.elapsed == 30.0


def test_forget_removes_the_result(app, simulation):
    """forget() drops the stored result, so the id reads PENDING again (§2.3)."""

    @app.task(shared=False)
    def quick():
        return 1

    sim = simulation(app)
    r = quick.delay()
    r.get()
    r.forget()
    assert sim.history.last().kind == "forgotten"
    fresh = app.AsyncResult(r.id)
    assert fresh.state == states.PENDING
    if CELERY_VERSION >= (5, 7):  # AsyncResult.exists() is new in 5.7 (result.py)
        assert not fresh.exists()
    with pytest.raises(SimulationIdle):
        fresh.get()
