"""Attempt identity and per-message options: what the history records, what checkers read.

Every delivery is an attempt whose id every event of it carries; checkers match events
to deliveries by it, read per-call options (``ignore_result``, time limits) from the
``published`` event, and see an early-acked task lost in a crash recorded on the task
(issue 8, item 9).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery.worker.request import Request as CeleryRequest
from checker_support import Story, only

import simq
from simq.checkers import CheckConfig, check_g1, check_g4
from simq.exceptions import UnknownTarget


def export_app(**conf: Any) -> tuple[simq.App, Any]:
    """An app whose acks_late task runs 20 s when first delivered, 1 s when redelivered."""
    app = simq.App("shop", broker_transport_options={"visibility_timeout": 5}, **conf)

    @app.task(shared=False, bind=True, name="shop.export", acks_late=True, time_limit=8)
    def export(self):
        time.sleep(1 if self.request.delivery_info["redelivered"] else 20)
        return "done"

    return app, export


# -- per-call options ----------------------------------------------------------------


def test_published_records_the_calls_own_ignore_result_and_time_limits(simulation):
    """``published`` carries the message's ignore_result and timelimit headers."""
    app = simq.App("shop")

    @app.task(shared=False, name="shop.t", time_limit=5)
    def t():
        return 1

    sim = simulation(app)
    t.apply_async(ignore_result=True, time_limit=60, soft_time_limit=30)
    t.apply_async()
    sim.run()
    pubs = sim.history.where(kind="published")
    assert [(e["ignore_result"], e["timelimit"]) for e in pubs] == [
        (True, [60, 30]),
        (False, [5, None]),
    ]


#: Whether Celery's worker honours a call's ignore_result when it stores errors.
PER_CALL_IGNORE = "_ignore_result" in CeleryRequest.store_errors.fget.__code__.co_names


def test_a_killed_child_of_a_call_that_ignores_its_result_needs_no_failure(simulation):
    """apply_async(ignore_result=True): no FAILURE(WorkerLostError) is due, none flagged."""
    app = simq.App("shop")

    @app.task(shared=False, name="shop.sleepy")
    def sleepy():
        time.sleep(10)
        return 1

    sim = simulation(app)
    r = sleepy.apply_async(ignore_result=True)
    sim.kill_child(r.id, at=2)
    sim.run()
    stored = [e["state"] for e in sim.history.where(kind="state", task_id=r.id)]
    # Celery 5.5's Request.store_errors reads only the task's ignore_result, not the
    # call's: it stores FAILURE anyway; later Celery honours the call's option.
    assert stored == ([] if PER_CALL_IGNORE else ["FAILURE"])
    assert sim.check() == []


def test_a_calls_own_time_limit_is_the_one_checked(simulation):
    """A call's time_limit=100 lets a task with time_limit=5 run 10 s unflagged."""
    app = simq.App("shop")

    @app.task(shared=False, name="shop.sleepy", time_limit=5)
    def sleepy():
        time.sleep(10)
        return 1

    sim = simulation(app)
    r = sleepy.apply_async(time_limit=100)
    sim.run()
    assert r.get() == 1
    assert sim.check() == []


# -- attempt ids ---------------------------------------------------------------------


def test_every_event_of_a_delivery_names_its_attempt(simulation):
    """Deliveries, their steps, acks, restores and state writes all carry the attempt."""
    app, export = export_app()
    sim = simulation(app, transport="redis", concurrency=2)
    r = export.delay()
    sim.run()
    mine = [e for e in sim.history.where(task_id=r.id) if e.kind != "published"]
    assert [(e.kind, e.details.get("attempt")) for e in mine] == [
        ("delivered", "m1.1"),
        ("started", "m1.1"),
        ("requeued", "m1.1"),  # the visibility timeout copies the running delivery
        ("delivered", "m1.2"),
        ("started", "m1.2"),
        ("state", "m1.2"),
        ("succeeded", "m1.2"),
        ("acked", "m1.2"),
        ("time-limit", "m1.1"),
        ("failed", "m1.1"),
        ("state-discarded", "m1.1"),
        ("state-discarded", "m1.1"),
        ("acked", "m1.1"),  # sent after the callbacks, on Celery's event loop
    ]


def test_a_visibility_timeout_copy_beside_the_first_attempt_is_judged_on_its_own(simulation):
    """The copy ends first; the first attempt's time limit is not charged to the copy."""
    app, export = export_app()
    sim = simulation(app, transport="redis", concurrency=2)
    export.delay()
    sim.run()
    assert sim.check() == []
    [limit] = sim.history.where(kind="time-limit")
    assert (limit["attempt"], limit.time - sim.started_at) == ("m1.1", 8.0)


def test_a_redelivery_beside_a_running_attempt_after_a_lost_connection_is_told_apart(
    simulation,
):
    """amqp hands the running acks_late task back to its worker; each attempt keeps its
    own outcome and time limit."""
    app, export = export_app()
    sim = simulation(app, transport="amqp", concurrency=2)
    export.delay()
    sim.lose_connection("worker-1", at=1, reconnect_after=1)
    sim.run()
    assert sim.check() == []
    ends = sim.history.where(kind=["succeeded", "time-limit", "ack-failed", "acked"])
    assert [(e.kind, e["attempt"], e.time - sim.started_at) for e in ends] == [
        ("succeeded", "m1.2", 3.0),
        ("acked", "m1.2", 3.0),
        ("time-limit", "m1.1", 8.0),
        ("ack-failed", "m1.1", 8.0),
    ]


def test_a_copy_run_before_its_holder_crashed_is_the_run_again(simulation):
    """A visibility-timeout copy that ran before the holder crashed is its rerun (G2)."""
    app, export = export_app()
    sim = simulation(app, transport="redis", workers=2)
    r = export.delay()
    sim.crash_worker("worker-1", at=6)
    sim.run()
    assert sim.check() == []
    starts = sim.history.where(kind="started", task_id=r.id)
    assert [(e.worker, e["attempt"]) for e in starts] == [
        ("worker-1", "m1.1"),
        ("worker-2", "m1.2"),
    ]


def test_a_crashed_copys_restore_is_told_from_the_redelivery_of_another_attempt(simulation):
    """G4 times the crashed holder's own restore, not another attempt's redelivery."""
    app = simq.App("shop", broker_transport_options={"visibility_timeout": 10})

    @app.task(shared=False, bind=True, name="shop.export", acks_late=True)
    def export(self):
        time.sleep(1 if self.request.delivery_info["redelivered"] else 40)

    sim = simulation(app, transport="redis", workers=2)
    export.delay()
    sim.crash_worker("worker-2", at=10.5, restart_after=3)  # holding the copy m1.2
    sim.shutdown_worker("worker-1", at=12, warm=False)  # m1.1 goes back at once
    sim.run()
    assert sim.check() == []
    back = sim.history.where(kind="requeued")
    assert [(e["attempt"], e["reason"], e.time - sim.started_at) for e in back] == [
        ("m1.1", "visibility-timeout", 10.0),
        ("m1.1", "shutdown", 12.0),
        ("m1.2", "visibility-timeout", 20.0),
    ]


def test_a_reused_attempt_id_falls_back_to_matching_by_order():
    """Two deliveries under one id are matched by order, and a rerun is still caught."""
    s = Story().online("w1").publish("m1", "t1")
    s.event("delivered", "t1", "m1", "w1", queue="celery", redelivered=False, attempt="a")
    s.event("started", "t1", "m1", "w1", task="shop.add", retries=0, attempt="a")
    s.event("acked", "t1", "m1", "w1", attempt="a")
    s.at(1).event("delivered", "t1", "m1", "w1", queue="celery", redelivered=True, attempt="a")
    s.event("started", "t1", "m1", "w1", task="shop.add", retries=0, attempt="a")
    found = check_g1(s.history, CheckConfig())
    assert any(v.message.endswith("an early-acked task is never re-executed") for v in found)


# -- kill_child(attempt=) --------------------------------------------------------------


def test_kill_child_kills_the_attempt_named(simulation):
    """attempt= picks the copy's child; the first attempt runs on."""
    app, export = export_app()
    sim = simulation(app, transport="redis", concurrency=2)
    r = export.delay()
    sim.kill_child(r.id, at=5.5, attempt="m1.2")
    sim.run()
    [lost] = sim.history.where(kind="child-lost")
    assert lost["attempt"] == "m1.2"
    assert sim.history.where(kind="child-killed").first()["attempt"] == "m1.2"
    assert sim.history.where(kind="time-limit").first()["attempt"] == "m1.1"
    assert sim.check() == []


def test_kill_child_without_an_attempt_kills_the_first_child_running_the_task(simulation):
    """The default is unchanged: the first child found running the task dies."""
    app, export = export_app()
    sim = simulation(app, transport="redis", concurrency=2)
    r = export.delay()
    sim.kill_child(r.id, at=5.5)
    sim.run()
    assert sim.history.where(kind="child-lost").first()["attempt"] == "m1.1"


def test_kill_child_names_the_running_attempts_when_the_one_asked_for_is_not(simulation):
    """An attempt no child runs is UnknownTarget, listing the task's running attempts."""
    app, export = export_app()
    sim = simulation(app, transport="redis", concurrency=2)
    r = export.delay()
    sim.advance(5.5)
    with pytest.raises(
        UnknownTarget,
        match=rf"^no child is running attempt 'm1\.3' of task '{r.id}'; its running "
        r"attempts: m1\.1, m1\.2$",
    ):
        sim.kill_child(r.id, attempt="m1.3")


def test_kill_child_rejects_an_attempt_that_is_not_a_string(simulation):
    """attempt= takes the id events carry, a string."""
    app, export = export_app()
    sim = simulation(app)
    r = export.delay()
    with pytest.raises(ValueError, match=r"kill_child\(\): attempt must be an attempt id"):
        sim.kill_child(r.id, attempt=2)


# -- an early-acked task lost in a crash ---------------------------------------------


def test_an_early_acked_task_lost_in_a_crash_is_recorded_lost(simulation):
    """The crash records lost [worker-crashed] on the running early-acked task only."""
    app = simq.App("shop")

    @app.task(shared=False, name="shop.early")
    def early():
        time.sleep(10)

    @app.task(shared=False, name="shop.late", acks_late=True)
    def late():
        time.sleep(10)

    sim = simulation(app, concurrency=2)
    a, b = early.delay(), late.delay()
    sim.crash_worker("worker-1", at=3, restart_after=1)
    sim.run()
    lost = sim.history.where(kind="lost")
    assert [(e.task_id, e["reason"], e["attempt"], e.time - sim.started_at) for e in lost] == [
        (a.id, "worker-crashed", "m1.1", 3.0)
    ]
    assert len(sim.history.where(kind="started", task_id=b.id)) == 2
    assert sim.check() == []


def crashed(lost_for: str | None) -> Story:
    """An early-acked m1 and an unacked m2 on w1 when it crashes; ``lost`` for one of them."""
    s = Story().online("w1").publish("m1", "t1").publish("m2", "t2")
    for m in ("m1", "m2"):
        s.event("delivered", s.tasks[m][0], m, "w1", queue="celery", redelivered=False,
                attempt=f"{m}.1")  # fmt: skip
    s.event("started", "t1", "m1", "w1", task="shop.add", retries=0, attempt="m1.1")
    s.event("acked", "t1", "m1", "w1", attempt="m1.1")
    s.at(2).fault("worker-crashed", restart_after=None)
    if lost_for is not None:
        tid = s.tasks[lost_for][0]
        s.event("lost", tid, lost_for, "w1", reason="worker-crashed", attempt=f"{lost_for}.1")
    return s.requeued("m2").fault("worker-offline", reason="crashed")


def test_g4_passes_a_crash_that_records_the_early_acked_task_lost():
    """The loss on the task itself is what G4 wants."""
    assert check_g4(crashed("m1").history, CheckConfig()) == []


def test_g4_fails_a_crash_that_does_not_record_the_loss():
    """With attempt ids, an early-acked task running at the crash must be recorded lost."""
    found = check_g4(crashed(None).history, CheckConfig())
    assert "its loss was not recorded" in only(found, "G4").message


def test_g4_fails_a_loss_recorded_for_an_unacked_message():
    """An unacked message goes back to the queue: it is not lost with the worker."""
    found = check_g4(crashed("m2").history, CheckConfig())
    messages = [v.message for v in found if v.guarantee == "G4"]
    assert any("it was not an attempt acked at start and running on w1" in m for m in messages)
    assert any("its loss was not recorded" in m for m in messages)
