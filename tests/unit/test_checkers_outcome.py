"""Checkers of how attempts end: G3, G8-G12 (CELERY_SEMANTICS.md §3.2), on doctored histories."""

from __future__ import annotations

import time
from typing import Any

import attrs
import celery
import pytest
from celery.exceptions import Ignore
from checker_support import Story, edited, exc, only

import simq
from simq.checkers import (
    CheckConfig,
    check_g3,
    check_g8,
    check_g9,
    check_g10,
    check_g11,
    check_g12,
    config_from,
    run_all,
)

AMQP = CheckConfig()
DONE = CheckConfig(complete=True)
LATE = CheckConfig(acks_late={"*": True})
LOST = exc("WorkerLostError", "Worker exited prematurely: signal 9 (SIGKILL).")


# -- G3 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "conf",
    [
        {},
        {"task_acks_late": True},
        {"task_acks_late": True, "task_reject_on_worker_lost": True},
        {"task_retry_on_worker_lost": True},
        {"task_acks_late": True, "task_acks_on_failure": False},
    ],
    ids=["default", "late", "late-rowl", "rtwl", "late-no-aof"],
)
def test_g3_passes_real_child_deaths(conf: dict[str, Any]) -> None:
    """A real simq run whose child is killed keeps G3 under every setting (§3.2 G3)."""
    app = simq.App("shop", **conf)

    @app.task(name="shop.slow", max_retries=1, default_retry_delay=1)
    def slow():
        time.sleep(5)

    with simq.Simulation(app, seed=0) as sim:
        r = slow.delay()
        sim.kill_child(r.id, at=1)
        sim.run(until=sim.now.replace(minute=5))
        assert sim.history.where(kind="child-lost")
        assert check_g3(sim.history, config_from(sim)) == []
        # Celery's parent acks or rejects first and stores FAILURE after (request.py
        # on_failure): no other guarantee objects either.
        assert run_all(sim.history, config_from(sim)) == []


@pytest.mark.parametrize("transport", ["amqp", "polling"])
def test_g3_charges_a_lost_childs_failure_to_its_worker(transport: str) -> None:
    """Celery's parent asks for the ack of a lost child's message, then stores FAILURE
    (request.py on_failure); the ack brings in a message revoked at receipt. On an event
    loop the ack goes out after the callback, so the revoked message comes after the
    FAILURE; on the polling transport it is fetched at the next poll. Either way the
    FAILURE is the worker's write, which G3 finds (§3.2 G3)."""
    app = celery.Celery("shop")
    app.conf.task_acks_late = True

    @app.task(name="shop.slow", shared=False)
    def slow() -> None:
        time.sleep(5)

    @app.task(name="shop.ret", shared=False)
    def ret(x: int) -> int:
        return x

    with simq.Simulation(app, seed=0, prefetch_multiplier=1, transport=transport) as sim:
        lost, revoked = slow.delay(), ret.delay(1)
        sim.revoke(revoked.id)
        sim.kill_child(lost.id, at=1)
        sim.run()
        kinds = [(e.kind, e.task_id) for e in sim.history if e.kind in ("revoked", "state")]
        assert kinds.index(("state", lost.id)) < kinds.index(("revoked", revoked.id))
        failure = sim.history.where(kind="state", task_id=lost.id).last()
        assert (failure["state"], failure.worker) == ("FAILURE", "worker-1")
        assert check_g3(sim.history, config_from(sim)) == []


def died(late: bool = False) -> Story:
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1")
    if not late:
        s.ack("m1")
    return (
        s.at(1)
        .event("child-killed", "t1", "m1", "w1", exitcode=-9)
        .outcome("child-lost", "m1", exitcode=-9)
    )


def test_g3_requires_worker_lost_failure_and_no_rerun() -> None:
    """By default a lost child stores FAILURE(WorkerLostError) and is not redelivered (§3.2 G3)."""
    v = only(check_g3(died().history, AMQP), "G3")
    assert v.message == (
        "shop.add[t1] message m1: the child died at 2030-01-01T00:00:01.000Z; "
        "FAILURE(WorkerLostError) is stored, and it was not"
    )
    s = died().state("t1", "FAILURE", LOST)
    assert check_g3(s.history, AMQP) == []
    s.at(2).deliver("m1", redelivered=True).start("m1")
    assert "a lost child is not redelivered" in only(check_g3(s.history, AMQP), "G3").message


def test_g3_acks_late_follows_acks_on_failure() -> None:
    """With acks_late a lost child is acked, or rejected without requeue when AoF is off."""
    s = died(late=True).state("t1", "FAILURE", LOST).ack("m1")
    assert check_g3(s.history, LATE) == []
    config = CheckConfig(acks_late={"*": True}, acks_on_failure={"*": False})
    assert (
        "rejected without requeue, but it was acked"
        in only(check_g3(s.history, config), "G3").message
    )


def test_g3_reject_on_worker_lost_requeues_without_state() -> None:
    """acks_late + reject_on_worker_lost rejects with requeue, stores nothing and re-runs."""
    config = CheckConfig(acks_late={"*": True}, reject_on_worker_lost={"*": True}, complete=True)
    bad = died(late=True).state("t1", "FAILURE", LOST).ack("m1")
    found = check_g3(bad.history, config)
    assert [v.message.split("; ")[1][:24] for v in found] == [
        "with acks_late and rejec",
        "a requeued attempt store",
    ]
    good = died(late=True).reject("m1", requeue=True)
    assert "never ran again" in only(check_g3(good.history, config), "G3").message
    good.at(2).deliver("m1", redelivered=True).run_ok("m1", late=True)
    assert check_g3(good.history, config) == []


def test_g3_retry_on_worker_lost_publishes_a_retry() -> None:
    """retry_on_worker_lost with retries left publishes retries+1 and stores RETRY (§3.2 G3)."""
    config = CheckConfig(retry_on_worker_lost={"*": True})
    s = died().state("t1", "FAILURE", LOST)
    found = check_g3(s.history, config)
    assert [v.message.split("; ")[1][:30] for v in found] == [
        "retry_on_worker_lost with retr",
        "retry_on_worker_lost stores RE",
        "retry_on_worker_lost retries, ",
    ]
    ok = died().publish("m2", "t1", retries=1, eta=181).state("t1", "RETRY", LOST)
    assert check_g3(ok.history, config) == []
    assert (
        "FAILURE(WorkerLostError) is stored"
        in only(
            check_g3(
                ok.history, CheckConfig(retry_on_worker_lost={"*": True}, max_retries={"*": 0})
            ),
            "G3",
        ).message
    )


def test_g3_keeps_a_success_stored_before_the_child_died() -> None:
    """A child dying after SUCCESS was stored changes nothing (§3.1)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1")
    s.state("t1", "SUCCESS", 1).outcome("child-lost", "m1", exitcode=1)
    assert check_g3(s.history, AMQP) == []
    s.state("t1", "FAILURE", LOST)
    assert "SUCCESS was already stored" in only(check_g3(s.history, AMQP), "G3").message


def test_g3_fails_a_killed_child_whose_task_succeeds() -> None:
    """A killed child ends its attempt as child-lost, not as a success (§3.2 G3)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1")
    s.event("child-killed", "t1", "m1", "w1", exitcode=-9).state("t1", "SUCCESS", 1)
    s.succeeded("m1")
    v = only(check_g3(s.history, AMQP), "G3")
    assert v.message.endswith("yet the attempt ended with succeeded at 2030-01-01T00:00:00.000Z")


# -- G8 ------------------------------------------------------------------------------


def ended(kind: str, late: bool = False, **details: Any) -> Story:
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1")
    if not late:
        s.ack("m1")
    return s.outcome(kind, "m1", **details)


def test_g8_ignore_stores_nothing_and_acks() -> None:
    """Ignore stores no state and the acks_late message is acked (§3.2 G8)."""
    assert check_g8(ended("ignored").history, AMQP) == []
    v = only(check_g8(ended("ignored").state("t1", "SUCCESS", None).history, AMQP), "G8")
    assert v.message.endswith("yet SUCCESS was stored at 2030-01-01T00:00:00.000Z")
    late = ended("ignored", late=True).reject("m1")
    assert (
        "the message is acked, but it was rejected (requeue=False)"
        in only(check_g8(late.history, LATE), "G8").message
    )


def test_g8_reject_without_requeue_stores_failure() -> None:
    """Reject(requeue=False) stores FAILURE(Reject) and rejects the acks_late message (5.7)."""
    s = ended("declined", late=True, requeue=False).ack("m1")
    found = check_g8(s.history, LATE)
    assert [v.message.split(": ")[1][:16] for v in found] == [
        "FAILURE(Reject) ",
        "the message is r",
    ]
    ok = ended("declined", late=True, requeue=False).state("t1", "FAILURE", exc("Reject"))
    assert check_g8(ok.reject("m1").history, LATE) == []


def test_g8_reject_with_requeue_needs_acks_late() -> None:
    """Reject(requeue=True) requeues an acks_late message; early-acked it never runs again."""
    late = ended("declined", late=True, requeue=True).reject("m1", requeue=True)
    config = CheckConfig(acks_late={"*": True}, complete=True)
    assert (
        "never delivered again although the run drained"
        in only(check_g8(late.history, config), "G8").message
    )
    late.deliver("m1", redelivered=True).run_ok("m1", late=True)
    assert check_g8(late.history, config) == []
    early = ended("declined", requeue=True).deliver("m1", redelivered=True).start("m1")
    assert "without acks_late (a no-op" in only(check_g8(early.history, AMQP), "G8").message


def test_g8_fails_a_requeued_reject_that_stores_a_state() -> None:
    """Reject(requeue=True) stores no terminal result (§3.2 G8)."""
    s = ended("declined", late=True, requeue=True).state("t1", "FAILURE", exc("Reject"))
    s.reject("m1", requeue=True)
    assert "no state is stored, yet FAILURE" in only(check_g8(s.history, LATE), "G8").message


@pytest.mark.celery_version(
    min="5.6.2",
    why="5.5's revoke command does not store REVOKED (worker/control.py _revoke has no "
    "mark_as_revoked)",
)
def test_g8_passes_a_real_ignore_revoked_afterwards() -> None:
    """A revoke after the task ignored itself stores REVOKED, its state being still
    PENDING (celery/worker/control.py _revoke): the command's write, not the attempt's."""
    app = celery.Celery("shop")

    @app.task(name="shop.skip", shared=False)
    def skip() -> None:
        raise Ignore()

    with simq.Simulation(app, seed=0) as sim:
        result = skip.delay()
        sim.run()
        assert result.state == "PENDING"
        sim.revoke(result.id)
        sim.run()
        assert result.state == "REVOKED"
        assert [e.worker for e in sim.history.where(kind="state")] == [None]
        assert check_g8(sim.history, config_from(sim)) == []


# -- G9 ------------------------------------------------------------------------------

REVOKED_EXPIRED = exc("TaskRevokedError", "expired")


def expired_story(deliver_at: float = 10) -> Story:
    s = Story().online("w1").publish("m1", "t1", expires=5).at(deliver_at).deliver("m1")
    return s


def test_g9_passes_an_expired_task_revoked_at_receipt() -> None:
    """An expired message is revoked with reason expired, stored REVOKED and acked (§3.2 G9)."""
    s = expired_story().outcome("revoked", "m1", reason="expired", expired=True, terminated=False)
    s.state("t1", "REVOKED", REVOKED_EXPIRED).ack("m1")
    assert check_g9(s.history, DONE) == []


def test_g9_fails_an_expired_task_that_runs() -> None:
    """An expired message never starts (§3.2 G9)."""
    s = expired_story().run_ok("m1")
    v = only(check_g9(s.history, AMQP), "G9")
    assert v.message == (
        "shop.add[t1] message m1 started on w1 at 2030-01-01T00:00:10.000Z "
        "although it expired at 2030-01-01T00:00:05+00:00; an expired task is "
        "revoked, not run"
    )


def test_g9_on_the_synchronous_loop_judges_when_the_pool_got_the_task() -> None:
    """Celery's synchronous loop hands a task to the prefork pool when it is received,
    checking expiry only then: a task received before its expiry may start after it
    (seen on filesystem://). One received after its expiry must still not start."""
    sync = CheckConfig(transport="memory", sync_loop=True)
    s = Story().online("w1").publish("m1", "t1", expires=5).at(4).deliver("m1").at(6)
    s.run_ok("m1")
    assert check_g9(s.history, sync) == []
    assert "although it expired" in only(check_g9(s.history, AMQP), "G9").message
    late = Story().online("w1").publish("m1", "t1", expires=5).at(6).deliver("m1").run_ok("m1")
    assert "although it expired" in only(check_g9(late.history, sync), "G9").message


def test_g9_fails_an_expiry_path_that_stores_or_acks_wrongly() -> None:
    """Revoking as expired stores REVOKED and acks; a reject or a missing state breaks G9."""
    s = (
        expired_story()
        .outcome("revoked", "m1", reason="expired", expired=False, terminated=False)
        .reject("m1")
    )
    found = check_g9(s.history, AMQP)
    assert [v.guarantee for v in found] == ["G9"] * 3
    assert found[0].message.endswith("with expired=False")
    assert found[1].message.endswith("without storing REVOKED(TaskRevokedError)")
    assert "the message is acked, but it was rejected (requeue=False)" in found[2].message


def test_g9_accepts_an_ack_a_crash_cut_off() -> None:
    """Celery sends a revoke's ack through the consumer's call_soon: a worker crash before
    it went out leaves the message to the broker (G4's to judge); without one, the missing
    ack breaks G9."""
    s = expired_story().outcome("revoked", "m1", reason="expired", expired=True, terminated=False)
    s.state("t1", "REVOKED", REVOKED_EXPIRED)
    unacked = s.history
    s.at(11).fault("worker-crashed").event("lost", "t1", "m1", None, reason="expired")
    assert check_g9(s.history, DONE) == []
    v = only(check_g9(unacked, DONE), "G9")
    assert "the message is acked, but it was never acked or rejected" in v.message


def test_g9_fails_a_task_revoked_as_expired_too_soon() -> None:
    """Nothing is revoked as expired before its expiry (§3.2 G9)."""
    s = expired_story(deliver_at=2).outcome(
        "revoked", "m1", reason="expired", expired=True, terminated=False
    )
    s.state("t1", "REVOKED", REVOKED_EXPIRED).ack("m1")
    v = only(check_g9(s.history, AMQP), "G9")
    assert v.message.endswith("its expiry is 2030-01-01T00:00:05+00:00")


def test_g9_fails_an_expired_delivery_never_revoked_in_a_drained_run() -> None:
    """A message received after its expiry is revoked before the run drains (§3.2 G9)."""
    v = only(check_g9(expired_story().history, DONE), "G9")
    assert v.message.endswith("after it expired, and was never revoked")


# -- G10 -----------------------------------------------------------------------------

REVOKED = exc("TaskRevokedError", "revoked")


def revoked_story(workers: list[str] | None = None) -> Story:
    s = Story().online("w1").publish("m1", "t1", eta=30).deliver("m1").at(5)
    return s.event(
        "revoke", "t1", terminate=False, signal=None, workers=["w1"] if workers is None else workers
    )


def test_g10_passes_a_revoked_task_discarded_at_start() -> None:
    """A revoked task is discarded: REVOKED stored, acked, never started (§3.2 G10)."""
    s = (
        revoked_story()
        .at(30)
        .outcome("revoked", "m1", reason="revoked", expired=False, terminated=False)
    )
    s.state("t1", "REVOKED", REVOKED).ack("m1")
    assert check_g10(s.history, AMQP) == []


def test_g10_fails_a_revoked_task_that_starts() -> None:
    """After a revoke reached a worker, that worker never starts the task (§3.2 G10)."""
    s = revoked_story().at(30).run_ok("m1")
    v = only(check_g10(s.history, AMQP), "G10")
    assert v.message == (
        "shop.add[t1] message m1 started on w1 at 2030-01-01T00:00:30.000Z "
        "although its revoke reached w1 at 2030-01-01T00:00:05.000Z"
    )
    assert check_g10(revoked_story(workers=[]).at(30).run_ok("m1").history, AMQP) == []


def test_g10_on_the_synchronous_loop_the_revoke_is_read_a_turn_late() -> None:
    """Recorded on filesystem:// (Celery's synchronous loop): an ETA task revoked at
    +0.35 s started at +1.64 s, before the worker's poll reached its broadcast queue. A
    start a turn after the revoke is Celery's behaviour there; a start much later is not."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / "g10_filesystem_revoke_read_late.jsonl"
    history = simq.History.from_jsonl(path.read_text())
    polling = CheckConfig(transport="memory", slack=0.25, transport_slack=2.0, complete=True)
    assert check_g10(history, attrs.evolve(polling, sync_loop=True)) == []
    assert any("although its revoke reached" in v.message for v in check_g10(history, polling))
    late = revoked_story().at(30).run_ok("m1")  # revoked at +5 s, started at +30 s
    assert check_g10(late.history, attrs.evolve(polling, sync_loop=True))


def test_g10_fails_a_discard_nobody_asked_for() -> None:
    """A worker revokes only what a revoke named (§3.2 G10)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1")
    s.outcome("revoked", "m1", reason="revoked", expired=False, terminated=False)
    s.state("t1", "REVOKED", REVOKED).ack("m1")
    assert "no revoke for task t1 was sent" in only(check_g10(s.history, AMQP), "G10").message


def expired_then_retried(restart: bool) -> Story:
    """t1 expires on w1 (m1); its retry message m2 then reaches w1 again."""
    s = Story().online("w1").publish("m1", "t1", expires=5).at(6).deliver("m1")
    s.outcome("revoked", "m1", reason="expired", expired=True, terminated=False)
    s.state("t1", "REVOKED", REVOKED).ack("m1")
    if restart:
        s.fault("worker-crashed", restart_after=1.0).online("w1")
    s.at(8).publish("m2", "t1", retries=1).deliver("m2")
    s.outcome("revoked", "m2", reason="revoked", expired=False, terminated=False)
    return s.state("t1", "REVOKED", REVOKED).ack("m2")


def test_g10_passes_a_revoke_that_follows_an_expiry_on_the_same_worker() -> None:
    """Celery's Request.maybe_expire puts an expired id in the worker's revoked set, so a
    later message of that task on that worker is revoked without a revoke command
    (until the worker restarts) (§3.2 G10)."""
    assert check_g10(expired_then_retried(restart=False).history, AMQP) == []
    v = only(check_g10(expired_then_retried(restart=True).history, AMQP), "G10")
    assert "no revoke for task t1 was sent" in v.message


def running_revoke(terminate: bool) -> Story:
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1").at(2)
    return s.event("revoke", "t1", terminate=terminate, signal=None, workers=["w1"])


def test_g10_terminate_kills_the_running_attempt() -> None:
    """revoke(terminate=True) ends the run as terminated with REVOKED stored (§3.2 G10)."""
    s = running_revoke(True).state("t1", "SUCCESS", 1).succeeded("m1")
    assert "yet it ended with succeeded" in only(check_g10(s.history, AMQP), "G10").message
    s = running_revoke(True).outcome(
        "revoked", "m1", reason="terminated", expired=False, terminated=True
    )
    assert "without storing REVOKED" in only(check_g10(s.history, AMQP), "G10").message
    assert check_g10(s.state("t1", "REVOKED", REVOKED).history, AMQP) == []


def test_g10_revoke_without_terminate_lets_the_run_finish() -> None:
    """A revoke without terminate never kills a running task (§3.2 G10)."""
    assert check_g10(running_revoke(False).run_ok("m1").history, AMQP) == []
    s = running_revoke(False).outcome("revoked", "m1", reason="terminated", terminated=True)
    assert "a running task is left to finish" in only(check_g10(s.history, AMQP), "G10").message


def test_g10_immediate_revoked_never_overwrites_a_ready_state() -> None:
    """5.6+ marks REVOKED at once only over PENDING, RECEIVED, RETRY or REJECTED (§2.2)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").run_ok("m1").at(3)
    s.event("revoke", "t1", terminate=False, signal=None, workers=[])
    s.state("t1", "REVOKED", REVOKED, worker=None)
    v = only(check_g10(s.history, AMQP), "G10")
    assert v.message.endswith(
        "stored REVOKED over SUCCESS; it only replaces PENDING, RECEIVED, RETRY or REJECTED"
    )


# -- G11 / G12 -----------------------------------------------------------------------


def limited(which: str, fired_at: float, limit: float = 2) -> Story:
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1")
    return s.at(fired_at).event("time-limit", "t1", "m1", "w1", which=which, limit=limit)


def test_g11_passes_a_caught_soft_limit() -> None:
    """A soft limit raised and caught lets the task succeed (§3.2 G11)."""
    s = limited("soft", 2).state("t1", "SUCCESS", "caught").succeeded("m1")
    assert check_g11(s.history, CheckConfig(soft_time_limit={"*": 2})) == []


def test_g11_fails_a_soft_limit_fired_too_soon() -> None:
    """The soft limit fires no sooner than its limit after the start (§3.2 G11)."""
    s = limited("soft", 1).state("t1", "SUCCESS", "caught").succeeded("m1")
    assert "only 1 s after it started" in only(check_g11(s.history, AMQP), "G11").message


def test_g11_fails_a_soft_limit_failure_without_its_signal_or_state() -> None:
    """An uncaught SoftTimeLimitExceeded follows the limit and is stored as FAILURE."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1").at(2)
    s.failed("m1", "SoftTimeLimitExceeded")
    found = check_g11(s.history, AMQP)
    assert [v.guarantee for v in found] == ["G11", "G11"]
    assert "but no soft time limit fired" in found[0].message
    assert "without storing FAILURE(SoftTimeLimitExceeded)" in found[1].message


@pytest.mark.parametrize(
    ("which", "setting", "guarantee", "check"),
    [
        ("soft", "soft_time_limit", "G11", check_g11),
        ("hard", "time_limit", "G12", check_g12),
    ],
)
def test_time_limit_checkers_fail_an_overrun_without_the_limit(
    which: str, setting: str, guarantee: str, check: Any
) -> None:
    """An attempt running past its configured limit without it firing breaks G11/G12."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1").at(9)
    s.state("t1", "SUCCESS", 1).succeeded("m1")
    config = CheckConfig(**{setting: {"shop.add": 4}})
    v = only(check(s.history, config), guarantee)
    assert v.message.endswith(f"past its {which} time limit of 4 s, and the limit never fired")
    assert check(s.history, CheckConfig(**{setting: {"shop.add": 4}}, slack=5)) == []


def test_g12_passes_a_hard_limit_with_its_failure() -> None:
    """A hard limit fails the attempt with FAILURE(TimeLimitExceeded) (§3.2 G12)."""
    s = limited("hard", 2).failed("m1", "TimeLimitExceeded")
    s.state("t1", "FAILURE", exc("TimeLimitExceeded", 2))
    assert check_g12(s.history, AMQP) == []


@pytest.mark.parametrize("sync_loop", [False, True])
def test_an_acks_late_hard_limit_may_ack_before_its_failure_is_stored(sync_loop: bool) -> None:
    """Recorded on real workers (acks_late, a 0.5 s hard limit): on Redis FAILURE was
    stored, then the ack came 0.1 s later; on filesystem:// (Celery's synchronous loop)
    the ack came first, FAILURE 1 ms later (the parent's on_failure decides, then
    on_timeout stores). Neither order breaks G2 or G12, with no slack."""
    from simq.checkers import check_g2

    late = CheckConfig(acks_late={"*": True}, time_limit={"*": 2}, sync_loop=sync_loop)
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").at(2)
    s.event("time-limit", "t1", "m1", "w1", which="hard", limit=2).failed("m1", "TimeLimitExceeded")
    if sync_loop:
        s.ack("m1").state("t1", "FAILURE", exc("TimeLimitExceeded", 2))
    else:
        s.state("t1", "FAILURE", exc("TimeLimitExceeded", 2)).at(2.1).ack("m1")
    assert check_g2(s.history, late) == [] and check_g12(s.history, late) == []


def test_g3_a_child_killed_past_its_due_hard_limit_may_end_with_the_limit() -> None:
    """Recorded on filesystem:// (limits checked once a second): the child running a task
    with a 1 s hard limit was killed 0.24 s after the limit was due; billiard reported
    the time limit (FAILURE(TimeLimitExceeded)), not a lost child. G12 judges that; G3
    still fails a kill before the limit was due that ends any other way."""
    from pathlib import Path

    from simq.checkers import check_g3

    path = Path(__file__).parent / "data" / "g3_filesystem_kill_past_hard_limit.jsonl"
    history = simq.History.from_jsonl(path.read_text())
    config = CheckConfig(
        transport="memory", acks_late={"*": True}, time_limit={"*": 1.0}, slack=0.25,
        transport_slack=2.0, sync_loop=True, complete=True,
    )  # fmt: skip
    assert check_g3(history, config) == [] and check_g12(history, config) == []
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1").at(0.5)
    s.event("child-killed", "t1", "m1", "w1", exitcode=-9).at(2)
    s.event("time-limit", "t1", "m1", "w1", which="hard", limit=2).failed("m1", "TimeLimitExceeded")
    s.state("t1", "FAILURE", exc("TimeLimitExceeded", 2))
    v = only(check_g3(s.history, CheckConfig(complete=True)), "G3")
    assert (
        "its child was killed at" in v.message and "yet the attempt ended with failed" in v.message
    )


def test_g12_a_hard_limit_during_a_cold_shutdown_stores_nothing() -> None:
    """Recorded on sqla+sqlite: an early-ack task cancelled by a cold shutdown at +1.15 s
    had its 0.5 s hard limit reported at +1.96 s, and Celery stored no FAILURE
    (Request.on_timeout skips it while the worker terminates). Outside a cold shutdown
    the FAILURE is still required."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / "g12_sqla_hard_limit_in_cold_shutdown.jsonl"
    history = simq.History.from_jsonl(path.read_text())
    config = CheckConfig(
        transport="memory", time_limit={"*": 0.5}, slack=0.25, transport_slack=2.0,
        sync_loop=True, complete=True,
    )  # fmt: skip
    assert check_g12(history, config) == []

    def story(warm: bool | None) -> Story:
        s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1")
        if warm is not None:
            s.at(1).fault("shutdown", warm=warm)
        s.at(2).event("time-limit", "t1", "m1", "w1", which="hard", limit=2)
        return s.failed("m1", "TimeLimitExceeded")

    assert check_g12(story(False).history, AMQP) == []
    for warm in (None, True):
        v = only(check_g12(story(warm).history, AMQP), "G12")
        assert v.message.endswith("FAILURE(TimeLimitExceeded) is stored, and it was not")


def test_g12_fails_a_task_that_succeeds_after_its_hard_limit() -> None:
    """The hard limit kills the child: the attempt cannot succeed afterwards (§3.2 G12)."""
    s = limited("hard", 2).state("t1", "SUCCESS", 1).succeeded("m1")
    found = check_g12(s.history, AMQP)
    assert [v.guarantee for v in found] == ["G12", "G12"]
    assert "yet the attempt ended with succeeded" in found[0].message
    assert "FAILURE(TimeLimitExceeded) is stored, and it was not" in found[1].message


@pytest.mark.parametrize(
    ("aot", "requeue", "problem"),
    [
        (True, None, None),
        (True, True, "is acked, but it was rejected (requeue=True)"),
        (False, True, "never ran again"),
        (False, None, "rejected with requeue, but it was acked"),
    ],
)
def test_g12_acks_late_follows_acks_on_timeout(
    aot: bool, requeue: bool | None, problem: str | None
) -> None:
    """acks_late acks a timed-out task, or rejects it with requeue when AoT is off (§3.1)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").at(2)
    s.event("time-limit", "t1", "m1", "w1", which="hard", limit=2).failed("m1", "TimeLimitExceeded")
    s.state("t1", "FAILURE", exc("TimeLimitExceeded", 2))
    s.ack("m1") if requeue is None else s.reject("m1", requeue=True)
    config = CheckConfig(acks_late={"*": True}, acks_on_timeout={"*": aot}, complete=True)
    found = check_g12(s.history, config)
    assert found == [] if problem is None else problem in only(found, "G12").message


def test_g12_fails_a_real_timeout_with_its_failure_removed() -> None:
    """A real hard timeout edited to drop the stored FAILURE breaks G12 (§3.2 G12)."""
    app = simq.App("shop")

    @app.task(name="shop.stuck", time_limit=3)
    def stuck():
        time.sleep(10)

    with simq.Simulation(app, seed=0) as sim:
        stuck.delay()
        sim.run()
        config = config_from(sim)
    assert check_g12(sim.history, config) == []
    history = edited(sim.history, drop=lambda e: e.kind == "state")
    assert (
        "FAILURE(TimeLimitExceeded) is stored, and it was not"
        in only(check_g12(history, config), "G12").message
    )


def test_g10_blames_a_termination_on_the_revoke_that_asked_for_it() -> None:
    """A revoke without terminate, then one with it: the second kills the run (§3.2 G10)."""
    s = running_revoke(False).at(4)
    s.event("revoke", "t1", terminate=True, signal=None, workers=["w1"])
    s.outcome("revoked", "m1", reason="terminated", terminated=True)
    s.state("t1", "REVOKED", REVOKED)
    assert check_g10(s.history, AMQP) == []


def test_g3_lets_the_broker_redeliver_when_the_ack_could_not_land() -> None:
    """A child lost after its channel closed was never acked: the broker may run it again."""
    s = died(late=True).state("t1", "FAILURE", LOST).event("ack-failed", "t1", "m1", "w1")
    s.at(5).requeued("m1", None, reason="visibility-timeout")
    s.deliver("m1", redelivered=True).run_ok("m1", late=True)
    assert check_g3(s.history, CheckConfig(transport="sqs", acks_late={"*": True})) == []
