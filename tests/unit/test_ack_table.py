"""The ack decision table of CELERY_SEMANTICS.md §3.1, row by row, on a simulated worker."""

from __future__ import annotations

import time
from typing import Any

import celery
import pytest
from celery import states
from celery.exceptions import Ignore, NotRegistered, Reject, TaskRevokedError, WorkerLostError

import simq
from simq.exceptions import SimulationIdle

#: On the polling transport Celery 5.7 sends an ack at once (Consumer.call_soon_ack).
POLLING_ACKS_AT_ONCE = pytest.mark.celery_version(
    min="5.7", why="Celery 5.5 queues acks for synloop's next turn (Consumer.call_soon)"
)

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)
#: Celery's revoke command stores REVOKED itself from 5.6.2 (worker/control.py _revoke
#: calls backend.mark_as_revoked); 5.5's only adds the id to the worker's revoked set.
REVOKE_MARKS_REVOKED = (celery.VERSION.major, celery.VERSION.minor, celery.VERSION.micro) >= (
    5,
    6,
    2,
)

#: Celery 5.5's Request.on_failure has no SystemExit/KeyboardInterrupt branch (5.7 has,
#: worker/request.py): billiard 4.3 reports the job's own SystemExit as its result, so 5.5
#: treats it as a plain failure and stores FAILURE(SystemExit), which the json result
#: serializer cannot encode (backends/base.py encode_result prepares only Exception).
SYSTEM_EXIT_IS_A_LOST_CHILD = pytest.mark.celery_version(
    min="5.7",
    why="5.5's Request.on_failure does not turn the job's own SystemExit into WorkerLostError",
)


@pytest.fixture
def app() -> simq.App:
    return simq.App("shop")


def trail(sim: simq.Simulation, task_id: str) -> list[Any]:
    """The task's events after publication: kinds, with the stored state for ``state``."""
    out: list[Any] = []
    for event in sim.history.where(task_id=task_id):
        if event.kind == "published":
            continue
        if event.kind == "state":
            out.append(("state", event["state"]))
        elif event.kind == "rejected":
            out.append(("rejected", event["requeue"]))
        else:
            out.append(event.kind)
    return out


# -- returned normally ---------------------------------------------------------------


def test_success_early_ack_is_at_start(app, simulation):
    """Without acks_late the message is acked right after the start, before SUCCESS (§3.1, G1)."""

    @app.task
    def ok():
        return 1

    sim = simulation(app)
    r = ok.delay()
    assert r.get() == 1
    assert trail(sim, r.id) == [
        "delivered",
        "started",
        "acked",
        ("state", states.SUCCESS),
        "succeeded",
    ]


def test_success_late_ack_follows_the_stored_result(app, simulation):
    """With acks_late the ack comes after SUCCESS is stored (§3.1, G2)."""

    @app.task(acks_late=True)
    def ok():
        return 1

    sim = simulation(app)
    r = ok.delay()
    assert r.get() == 1
    assert trail(sim, r.id) == [
        "delivered",
        "started",
        ("state", states.SUCCESS),
        "succeeded",
        "acked",
    ]


def test_task_acks_late_setting_makes_acks_late(simulation):
    """The task_acks_late setting fills an unset acks_late attribute (§1.2)."""
    app = simq.App("shop", task_acks_late=True)

    @app.task
    def ok():
        return 1

    sim = simulation(app)
    r = ok.delay()
    r.get()
    assert trail(sim, r.id)[-1] == "acked"


# -- raised an exception -------------------------------------------------------------


def test_failure_early_ack_is_at_start(app, simulation):
    """Without acks_late a failing task was acked at start; FAILURE is stored after (§3.1)."""

    @app.task
    def bad():
        raise ValueError("bad")

    sim = simulation(app)
    r = bad.delay()
    with pytest.raises(ValueError, match=r"^bad$"):
        r.get()
    assert trail(sim, r.id) == [
        "delivered",
        "started",
        "acked",
        ("state", states.FAILURE),
        "failed",
    ]


def test_failure_late_ack_with_acks_on_failure(app, simulation):
    """With acks_late and acks_on_failure (default True) a failure is acked after FAILURE (§3.1)."""

    @app.task(acks_late=True)
    def bad():
        raise ValueError("bad")

    sim = simulation(app)
    r = bad.delay()
    with pytest.raises(ValueError):
        r.get()
    assert trail(sim, r.id) == [
        "delivered",
        "started",
        ("state", states.FAILURE),
        "failed",
        "acked",
    ]


@pytest.mark.parametrize(
    "flag",
    [
        pytest.param(
            "acks_on_failure",
            marks=pytest.mark.celery_version(
                min="5.7",
                why="5.5 has only acks_on_failure_or_timeout; Task.acks_on_failure is new in 5.7",
            ),
        ),
        "acks_on_failure_or_timeout",
    ],
)
def test_failure_late_reject_without_acks_on_failure(app, simulation, flag):
    """With acks_late and acks_on_failure off a failure is rejected, not requeued (§3.1)."""

    @app.task(acks_late=True, **{flag: False})
    def bad():
        raise ValueError("bad")

    sim = simulation(app)
    r = bad.delay()
    with pytest.raises(ValueError):
        r.get()
    assert trail(sim, r.id) == [
        "delivered",
        "started",
        ("state", states.FAILURE),
        "failed",
        ("rejected", False),
    ]
    assert len(sim.history.where(kind="delivered")) == 1


# -- raised Retry --------------------------------------------------------------------


def test_retry_early_ack_is_at_start(app, simulation):
    """Without acks_late a retrying attempt was acked at start, before RETRY (§3.1)."""

    @app.task(bind=True, max_retries=1)
    def flaky(self):
        if self.request.retries == 0:
            raise self.retry(countdown=1)
        return "ok"

    sim = simulation(app)
    r = flaky.delay()
    r.get()
    first = sim.history.where(kind="published")[0].message_id
    kinds = sim.history.where(message_id=first).kinds()
    assert kinds == ["published", "delivered", "started", "acked", "retried"]


def test_retry_late_ack_follows_the_retry_state(app, simulation):
    """With acks_late a retrying attempt is acked after RETRY is stored (§3.1, G13)."""

    @app.task(bind=True, max_retries=1, acks_late=True)
    def flaky(self):
        if self.request.retries == 0:
            raise self.retry(countdown=1)
        return "ok"

    sim = simulation(app)
    r = flaky.delay()
    r.get()
    assert trail(sim, r.id)[:6] == [
        "delivered",
        "started",
        ("state", states.RETRY),
        "retried",
        "acked",
        "delivered",
    ]
    first = sim.history.where(kind="published")[0].message_id
    assert sim.history.where(message_id=first).kinds()[-1] == "acked"


# -- raised Reject -------------------------------------------------------------------


@pytest.mark.celery_version(
    min="5.7",
    why="5.5's Request.on_failure stores nothing for Reject(requeue=False) (#4222 is new in 5.7)",
)
@pytest.mark.parametrize("acks_late", [False, True])
def test_reject_without_requeue_stores_failure(app, simulation, acks_late):
    """Reject(requeue=False) stores FAILURE(Reject) with or without acks_late (§3.1, G8, #4222)."""

    @app.task(acks_late=acks_late)
    def refuse():
        raise Reject("nope", requeue=False)

    sim = simulation(app)
    r = refuse.delay()
    with pytest.raises(Reject):
        r.get()
    meta = sim.history.where(kind="state", task_id=r.id).last()
    assert meta["state"] == states.FAILURE
    assert meta["result"]["exc_type"] == "Reject"
    assert meta["result"]["exc_message"] == ["nope", False]
    assert len(sim.history.where(kind="started")) == 1


def test_reject_without_requeue_is_a_broker_reject_only_with_acks_late(app, simulation):
    """With acks_late Reject(requeue=False) rejects the message; nothing is acked (§3.1)."""

    @app.task(acks_late=True)
    def refuse():
        raise Reject("nope", requeue=False)

    sim = simulation(app)
    r = refuse.delay()
    if CELERY_VERSION >= (5, 7):
        with pytest.raises(Reject):
            r.get()
        stored = [("state", states.FAILURE)]
    else:
        # 5.5 rejects without storing FAILURE: the task stays PENDING.
        with pytest.raises(SimulationIdle, match="PENDING"):
            r.get()
        stored = []
    assert trail(sim, r.id) == [
        "delivered",
        "started",
        "declined",
        *stored,
        ("rejected", False),
    ]


def test_reject_without_acks_late_was_already_acked(app, simulation):
    """Without acks_late the message was acked at start, so Reject rejects nothing (§3.1)."""

    @app.task
    def refuse():
        raise Reject("nope", requeue=False)

    sim = simulation(app)
    r = refuse.delay()
    if CELERY_VERSION >= (5, 7):
        with pytest.raises(Reject):
            r.get()
        stored = [("state", states.FAILURE)]
    else:
        # 5.5 stores no FAILURE for Reject(requeue=False): the task stays PENDING.
        with pytest.raises(SimulationIdle, match="PENDING"):
            r.get()
        stored = []
    assert trail(sim, r.id) == ["delivered", "started", "acked", "declined", *stored]


def test_reject_requeue_without_acks_late_leaves_the_task_pending(app, simulation):
    """Reject(requeue=True) without acks_late runs once and stays PENDING (§3.1, G8)."""
    runs = []

    @app.task
    def refuse():
        runs.append(1)
        raise Reject("again", requeue=True)

    sim = simulation(app)
    r = refuse.delay()
    with pytest.raises(SimulationIdle, match=rf"^task {r.id} can never become ready: .*PENDING"):
        r.get()
    assert runs == [1]
    assert r.state == states.PENDING
    assert not sim.history.where(kind="state")
    assert not sim.history.where(kind="rejected")
    assert sim.history.where(kind="declined").first()["requeue"] is True


def test_reject_requeue_with_acks_late_redelivers_until_accepted(app, simulation):
    """With acks_late, Reject(requeue=True) redelivers, flagged, until it succeeds (G8)."""
    seen = []

    @app.task(bind=True, acks_late=True)
    def picky(self):
        seen.append(self.request.delivery_info["redelivered"])
        if len(seen) < 3:
            raise Reject("again", requeue=True)
        return "accepted"

    sim = simulation(app)
    r = picky.delay()
    assert r.get() == "accepted"
    assert seen == [False, True, True]
    assert [e["redelivered"] for e in sim.history.where(kind="delivered")] == [False, True, True]
    assert [e["requeue"] for e in sim.history.where(kind="rejected")] == [True, True]
    assert [e["state"] for e in sim.history.where(kind="state")] == [states.SUCCESS]
    assert {e.message_id for e in sim.history.where(kind="started")} == {
        sim.history.where(kind="published").first().message_id
    }


# -- raised Ignore -------------------------------------------------------------------


@pytest.mark.parametrize("acks_late", [False, True])
def test_ignore_acks_and_stores_nothing(app, simulation, acks_late):
    """Ignore acks the message and writes no state after the attempt: PENDING (§3.1, G8)."""

    @app.task(acks_late=acks_late)
    def skip():
        raise Ignore()

    sim = simulation(app)
    r = skip.delay()
    with pytest.raises(SimulationIdle):
        r.get()
    kinds = trail(sim, r.id)
    assert sorted(kinds) == sorted(["delivered", "started", "acked", "ignored"])
    assert kinds.index("started") < kinds.index("acked")
    assert r.state == states.PENDING


def test_ignore_keeps_the_last_state_written(app, simulation):
    """A state stored before Ignore stays: nothing is written after the attempt (G8)."""

    @app.task(bind=True)
    def skip(self):
        self.update_state(state="PROGRESS", meta={"done": 1})
        raise Ignore()

    sim = simulation(app)
    r = skip.delay()
    sim.run()
    assert [e["state"] for e in sim.history.where(kind="state")] == ["PROGRESS"]
    assert r.state == "PROGRESS"


# -- unknown task name ---------------------------------------------------------------


def test_unknown_task_name_is_rejected_and_fails(app, simulation):
    """A message for an unregistered name is rejected, then FAILURE(NotRegistered) is
    stored (§1.3; consumer.py on_unknown_task: reject_log_error, then mark_as_failure)."""
    sim = simulation(app)
    r = app.send_task("nope")
    with pytest.raises(NotRegistered):
        r.get()
    assert trail(sim, r.id) == [
        "delivered",
        "unregistered",
        ("rejected", False),
        ("state", states.FAILURE),
    ]
    assert sim.history.where(kind="unregistered").first()["task"] == "nope"
    assert sim.history.where(kind="state").first()["result"]["exc_type"] == "NotRegistered"
    assert not sim.history.where(kind="started")


# -- revoked or expired at receipt ---------------------------------------------------


def blocked_worker(
    app: simq.App, simulation: Any, transport: str = "amqp"
) -> tuple[simq.Simulation, Any, Any]:
    """A c=1, multiplier=1 worker busy for 10 s with one more message reserved behind it."""

    @app.task
    def slow():
        time.sleep(10)

    @app.task
    def quick():
        return "quick"

    sim = simulation(app, prefetch_multiplier=1, transport=transport)
    slow.delay()
    quick.delay()
    return sim, slow, quick


def test_revoked_at_receipt_is_revoked_and_acked_without_start(app, simulation):
    """A message revoked before receipt is REVOKED and acked, never started (§3.1, G10)."""
    sim, _, quick = blocked_worker(app, simulation)
    r = quick.delay()
    assert not sim.history.where(kind="delivered", task_id=r.id)
    r.revoke()
    # 5.6.2+: the revoke itself marks a task that is not running REVOKED at once.
    marked = [("state", states.REVOKED)] if REVOKE_MARKS_REVOKED else []
    assert trail(sim, r.id) == ["revoke", *marked]
    with pytest.raises(TaskRevokedError, match=r"^revoked$"):
        r.get()
    sim.run()
    assert trail(sim, r.id)[1 + len(marked) :] == [
        "delivered",
        "revoked",
        ("state", states.REVOKED),
        "acked",
    ]
    assert sim.history.where(kind="revoked", task_id=r.id).first()["reason"] == "revoked"
    assert not sim.history.where(kind="started", task_id=r.id)


def test_expired_at_receipt_is_revoked_and_acked_without_start(app, simulation):
    """A message received after its expiry is REVOKED 'expired', acked, not started (G9).

    On Redis, which ignores the message TTL: RabbitMQ would drop it in the queue.
    """
    sim, _, quick = blocked_worker(app, simulation, transport="redis")
    r = quick.apply_async(expires=5)
    with pytest.raises(TaskRevokedError, match=r"^expired$"):
        r.get()
    assert trail(sim, r.id) == ["delivered", "revoked", ("state", states.REVOKED), "acked"]
    revoked = sim.history.where(kind="revoked", task_id=r.id).first()
    assert (revoked["reason"], revoked["expired"]) == ("expired", True)
    assert revoked.time - sim.started_at == 10.0
    assert r.ready() and not r.failed()


# -- the child process dies ----------------------------------------------------------


def test_system_exit_in_the_body_is_a_lost_child(app, simulation):
    """SystemExit(3) in a task is a lost child: FAILURE(WorkerLostError); the test lives (G3)."""

    @app.task
    def die():
        raise SystemExit(3)

    sim = simulation(app)
    r = die.delay()
    if CELERY_VERSION >= (5, 7):
        with pytest.raises(WorkerLostError, match=r"^Worker exited prematurely: exitcode 3\.$"):
            r.get()
        stored = [("state", states.FAILURE)]
    else:
        # 5.5 tries to store FAILURE(SystemExit(3)), which json cannot encode: the
        # handler's error is logged and the task stays PENDING; the child is still lost.
        with pytest.raises(SimulationIdle, match="PENDING"):
            r.get()
        stored = []
    assert trail(sim, r.id) == ["delivered", "started", "acked", "child-lost", *stored]
    assert sim.history.where(kind="child-lost").first()["exitcode"] == 3


@SYSTEM_EXIT_IS_A_LOST_CHILD
@pytest.mark.parametrize("transport", ["amqp", pytest.param("polling", marks=POLLING_ACKS_AT_ONCE)])
def test_lost_child_is_acked_even_with_acks_late(app, simulation, transport):
    """With acks_late alone a lost child is acked and FAILURE stored; no re-run (G3,
    exp4). Request.on_failure asks for the ack before mark_as_failure (request.py:766-790):
    sent after the callback on an event loop, at once on the polling transport."""
    runs = []

    @app.task(acks_late=True)
    def die():
        runs.append(1)
        raise SystemExit(3)

    sim = simulation(app, transport=transport)
    r = die.delay()
    with pytest.raises(WorkerLostError):
        r.get()
    assert runs == [1]
    ends = ["acked", ("state", states.FAILURE)]
    assert trail(sim, r.id)[2:] == ["child-lost", *(ends if transport == "polling" else ends[::-1])]


@SYSTEM_EXIT_IS_A_LOST_CHILD
def test_lost_child_with_reject_on_worker_lost_is_requeued(app, simulation):
    """With acks_late and reject_on_worker_lost a lost child is requeued and runs again (G3)."""
    runs = []

    @app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
    def die_once(self):
        runs.append(self.request.retries)
        if len(runs) == 1:
            raise SystemExit(3)
        return "second life"

    sim = simulation(app)
    r = die_once.delay()
    assert r.get() == "second life"
    assert runs == [0, 0]
    assert trail(sim, r.id) == [
        "delivered",
        "started",
        "child-lost",
        ("rejected", True),
        "delivered",
        "started",
        ("state", states.SUCCESS),
        "succeeded",
        "acked",
    ]


@SYSTEM_EXIT_IS_A_LOST_CHILD
def test_reject_on_worker_lost_needs_acks_late(app, simulation):
    """Without acks_late, reject_on_worker_lost has no effect: FAILURE(WorkerLostError) (§3.1)."""

    @app.task(reject_on_worker_lost=True)
    def die():
        raise SystemExit(3)

    sim = simulation(app)
    with pytest.raises(WorkerLostError):
        die.delay().get()
    assert len(sim.history.where(kind="started")) == 1
