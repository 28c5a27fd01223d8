"""Whatever a task or its hooks raise, nothing escapes into the test and no slot is wedged.

Celery's reference behaviour, checked on a real ``celery worker -P prefork -c 1`` on
Redis (Celery 5.7, billiard 4.3):

* a BaseException escaping the tracer in the child (the task body, or a hook the tracer
  runs) is reported as the job's failure and the child lives on (billiard's workloop),
  except SystemExit and KeyboardInterrupt, which end the child (tests/faults/test_child.py);
* an Exception in a hook the worker's parent runs is logged by billiard's
  ``safe_apply_callback`` and the worker goes on;
* a BaseException in such a hook (``on_failure`` at a hard time limit, ``on_retry`` when
  a lost task is retried) propagates up the worker: SystemExit and KeyboardInterrupt end
  it with a warm shutdown ("worker: Warm shutdown (MainProcess)"), any other ends the
  process with a traceback (exit code 1). Later tasks wait for another worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import celery
import greenlet
import pytest
from celery import states

import simq

#: On the polling transport Celery 5.7 sends an ack at once (Consumer.call_soon_ack).
POLLING_ACKS_AT_ONCE = pytest.mark.celery_version(
    min="5.7", why="Celery 5.5 queues acks for synloop's next turn (Consumer.call_soon)"
)


class Fatal(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """The worker logs each of these errors, as Celery's does; the tests read the history."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _busy_slots(sim: simq.Simulation) -> list[Any]:
    return [slot for worker in sim.workers.values() for slot in worker.slots if slot.job]


@pytest.mark.celery_version(
    min="5.7",
    why="5.5's result backend cannot encode a BaseException that is not an Exception (kombu json EncodeError inside Request.on_failure): the task stays PENDING",
)
@pytest.mark.parametrize("exc", [GeneratorExit("g"), greenlet.GreenletExit("g"), Fatal("g")])
def test_a_base_exception_in_the_body_fails_the_task_and_the_child_goes_on(
    exc: BaseException,
) -> None:
    """FAILURE(exc) is stored, no child is lost, the slot is free and the next task runs."""
    app = celery.Celery("escapes", set_as_current=False)

    @app.task(shared=False)
    def escape() -> None:
        raise exc

    @app.task(shared=False)
    def ok() -> int:
        return 7

    with simq.Simulation(app) as sim:
        r = escape.delay()
        sim.run()
        assert r.state == states.FAILURE
        stored = sim.history.where(kind="state", task_id=r.id).last()["result"]
        assert (stored["exc_type"], stored["exc_message"]) == (type(exc).__name__, ["g"])
        assert sim.history.where(task_id=r.id).kinds()[-2:] == ["failed", "state"]
        assert not sim.history.where(kind="child-lost")
        assert _busy_slots(sim) == []
        assert ok.delay().get() == 7
        assert sim.check() == []


@pytest.mark.filterwarnings("ignore:Exception raised outside body:RuntimeWarning")
@pytest.mark.parametrize("hook", ["on_failure", "on_retry", "after_return", "on_success"])
def test_an_exception_in_a_hook_the_tracer_runs_is_logged_and_the_worker_goes_on(
    hook: str,
) -> None:
    """Celery's tracer handles a raising hook; the outcome is stored as Celery stores it."""
    app = celery.Celery("escapes", set_as_current=False)

    class Base(app.Task):  # type: ignore[name-defined,misc]
        pass

    def raising(self: Any, *args: Any) -> None:
        raise ValueError("hook")

    setattr(Base, hook, raising)

    @app.task(shared=False, base=Base, bind=True, max_retries=1)
    def act(self: Any) -> str:
        if hook == "on_retry" and not self.request.retries:
            raise self.retry(countdown=1)
        if hook in ("on_failure", "after_return"):
            raise KeyError("body")
        return "done"

    @app.task(shared=False)
    def ok() -> int:
        return 7

    expected = {
        "on_failure": states.FAILURE,  # the hook's error replaces the body's
        "on_retry": states.SUCCESS,  # the retry was sent before the hook raised, and ran
        "after_return": states.FAILURE,
        "on_success": states.SUCCESS,  # stored before the hook ran
    }[hook]
    with simq.Simulation(app) as sim:
        r = act.delay()
        sim.run()
        assert r.state == expected
        assert not sim.history.where(kind="child-lost")
        assert _busy_slots(sim) == []
        assert ok.delay().get() == 7
        assert sim.check() == []


def _limited(app: celery.Celery, raised: BaseException) -> Any:
    class Base(app.Task):  # type: ignore[name-defined,misc]
        def on_failure(self, *args: Any) -> None:
            raise raised

    @app.task(shared=False, base=Base, time_limit=2, name="escapes.slow")
    def slow() -> None:
        time.sleep(10)

    return slow


@pytest.mark.celery_version(
    min="5.7",
    why="5.5's worker parent runs no task hook at a hard time limit",
)
@pytest.mark.parametrize(
    ("raised", "kind", "details"),
    [
        (Fatal("hook"), "worker-crashed", {"restart_after": None}),
        (SystemExit(2), "shutdown", {"warm": True}),
        (KeyboardInterrupt(), "shutdown", {"warm": True}),
    ],
)
def test_a_base_exception_in_a_hook_the_parent_runs_takes_the_worker_down(
    raised: BaseException, kind: str, details: dict[str, Any]
) -> None:
    """on_failure raising at a hard time limit (run by the worker's parent) ends that
    worker, as it ends a real one; the run goes on and another worker takes new tasks."""
    app = celery.Celery("escapes", set_as_current=False)
    slow = _limited(app, raised)

    @app.task(shared=False)
    def ok() -> int:
        return 7

    with simq.Simulation(app, workers=2) as sim:
        r = slow.delay()
        sim.advance(3)
        assert r.state == states.FAILURE
        down = sim.history.where(kind=kind)
        assert [(e.worker, e.details) for e in down] == [("worker-1", details)]
        assert sim.history.where(worker="worker-1").kinds()[-1] == "worker-offline"
        assert ok.delay().get() == 7
        assert sim.history.where(kind="succeeded").last().worker == "worker-2"
        assert sim.check() == []


@pytest.mark.celery_version(
    min="5.7",
    why="Task.retry_on_worker_lost is new in 5.7 (app/task.py)",
)
@pytest.mark.parametrize("transport", ["amqp", pytest.param("polling", marks=POLLING_ACKS_AT_ONCE)])
def test_a_base_exception_in_on_retry_of_a_lost_task_takes_the_worker_down(transport: str) -> None:
    """retry_on_worker_lost: the parent stores RETRY, publishes the retry and asks for the
    ack, then on_retry raises; the worker exits and the retry runs on another worker. On
    an event loop the ack was still queued (Consumer.call_soon_ack: hub.call_soon) when
    the process ended, so the message comes back and runs again; on the polling
    transport (Celery 5.7's synchronous loop) the ack had gone out at once."""
    app = celery.Celery("escapes", set_as_current=False)

    class Base(app.Task):  # type: ignore[name-defined,misc]
        def on_retry(self, *args: Any) -> None:
            raise Fatal("hook")

    @app.task(shared=False, base=Base, acks_late=True, retry_on_worker_lost=True)
    def slow() -> str:
        time.sleep(5)
        return "slow"

    with simq.Simulation(app, workers=2, transport=transport) as sim:
        r = slow.delay()
        sim.kill_child(r.id, at=1)
        sim.run()
        assert r.get() == "slow"
        assert sim.history.where(kind="worker-crashed").first().worker == "worker-1"
        assert sim.history.where(kind="succeeded").last().worker == "worker-2"
        first = sim.history.where(message_id="m1")
        if transport == "polling":
            assert first.where(kind="acked").first().worker == "worker-1"
            assert len(first.where(kind="started")) == 1
        else:
            assert not first.where(kind="acked", worker="worker-1")
            assert [e.worker for e in first.where(kind="started")] == ["worker-1", "worker-2"]
        assert sim.check() == []
