"""Checkers of delivery and ack, G1 G2 G5 G6 (CELERY_SEMANTICS.md §3.2), on doctored histories."""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import pytest
from checker_support import Story, edited, exc, kinds, only

import simq
from simq.checkers import CheckConfig, check_g1, check_g2, check_g5, check_g6, config_from
from simq.history import Event, History

AMQP = CheckConfig()
LATE = CheckConfig(acks_late={"*": True})


def early_run() -> Story:
    s = Story().online("w1").publish("m1", "t1").deliver("m1")
    return s.run_ok("m1")


def late_run() -> Story:
    s = Story().online("w1").publish("m1", "t1").deliver("m1")
    return s.run_ok("m1", late=True)


# -- G1 ------------------------------------------------------------------------------


def test_g1_passes_an_ack_at_start() -> None:
    """An early-ack task acked right after it starts keeps G1 (§3.2 G1)."""
    assert check_g1(early_run().history, AMQP) == []


def test_g1_fails_a_started_task_that_is_never_acked() -> None:
    """A started early-ack task whose attempt ended without an ack breaks G1 (§3.2 G1)."""
    history = edited(early_run().history, drop=lambda e: e.kind == "acked")
    v = only(check_g1(history, AMQP), "G1")
    assert v.message == (
        "shop.add[t1] message m1 started on w1 at 2030-01-01T00:00:00.000Z "
        "and was never acked; early ack happens when the task starts"
    )
    assert kinds(v) == ["delivered", "started", "succeeded"]


def test_g1_fails_an_ack_at_receipt() -> None:
    """Acking a message before it starts, off the revoke path, breaks G1 (§3.2 G1)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").ack("m1").at(1)
    s.start("m1").state("t1", "SUCCESS", 1).succeeded("m1")
    v = only(check_g1(s.history, AMQP), "G1")
    assert "was acked by w1 at 2030-01-01T00:00:00.000Z before it started" in v.message
    assert kinds(v) == ["delivered", "acked"]


def test_g1_passes_an_ack_at_receipt_of_a_revoked_task() -> None:
    """A revoked task is acked without starting: the revoke path keeps G1 (§3.2 G1)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1")
    s.outcome("revoked", "m1", reason="revoked", expired=False, terminated=False).ack("m1")
    assert check_g1(s.history, AMQP) == []


def test_g1_fails_a_reject_after_start() -> None:
    """An early-ack task rejected instead of acked at start breaks G1: reject is a no-op then."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1")
    s.outcome("declined", "m1", requeue=True).reject("m1", requeue=True)
    v = only(check_g1(s.history, AMQP), "G1")
    assert v.message.endswith(
        "after it started; an early-ack task is acked when it starts, "
        "so a later reject is a no-op (§3.1)"
    )


def test_g1_fails_a_second_settle_of_one_delivery() -> None:
    """A reject after the ack at start settles a delivery twice, which breaks G1 (§3.2 G1)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1")
    s.outcome("declined", "m1", requeue=True).reject("m1", requeue=True)
    v = only(check_g1(s.history, AMQP), "G1")
    assert v.message == (
        "shop.add[t1] message m1 was rejected by w1 at "
        "2030-01-01T00:00:00.000Z but had no unsettled delivery there "
        "(already acked or rejected, or never delivered)"
    )


def test_g1_fails_an_ack_after_the_attempt_ended() -> None:
    """An early-ack task acked only after it succeeded acks late, breaking G1 (§3.2 G1)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").at(2)
    s.state("t1", "SUCCESS", 1).succeeded("m1").ack("m1")
    v = only(check_g1(s.history, AMQP), "G1")
    assert "after its attempt ended with succeeded at 2030-01-01T00:00:02.000Z" in v.message


def test_g1_lets_celery_5_5_ack_at_the_synchronous_loop_s_next_turn() -> None:
    """Celery 5.5 without an event loop queues the early ack for synloop's next turn, up
    to one drain (2 s) after the start, by then the task may have ended (measured on
    filesystem://: 0.1 s tasks acked 2.0 s after their start); later still is G1's."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").at(0.1)
    s.state("t1", "SUCCESS", 1).succeeded("m1").at(2).ack("m1")
    turn = CheckConfig(transport="polling", acks_wait_for_turn=True)
    assert check_g1(s.history, turn) == []
    assert "after its attempt ended" in only(check_g1(s.history, AMQP), "G1").message
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").at(0.1)
    s.state("t1", "SUCCESS", 1).succeeded("m1").at(2.5).ack("m1")
    assert "after its attempt ended" in only(check_g1(s.history, turn), "G1").message


def test_g1_fails_a_redelivery_nothing_returned() -> None:
    """A second delivery without a reject, requeue or lost holder breaks G1 (§3.2 G1)."""
    s = early_run().at(5).deliver("m1", redelivered=True).run_ok("m1")
    found = check_g1(s.history, AMQP)
    assert [v.guarantee for v in found] == ["G1", "G1"]
    assert "had gone back to the queue only 0 time(s)" in found[0].message
    assert "started again on w1 at 2030-01-01T00:00:05.000Z" in found[1].message


def test_g1_fails_an_unflagged_redelivery_on_amqp_only() -> None:
    """A requeued message delivered again must be flagged redelivered on amqp, not on sqs."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").at(1)
    s.fault("connection-lost").requeued("m1", reason="connection-lost")
    s.fault("connection-restored").at(2).deliver("m1").run_ok("m1")
    v = only(check_g1(s.history, AMQP), "G1")
    assert v.message.endswith(
        "without the redelivered flag (amqp sets it on every message that returns to the queue)"
    )
    assert check_g1(s.history, CheckConfig(transport="sqs")) == []


def test_g1_tolerates_a_visibility_copy_starting_again_on_redis() -> None:
    """A visibility-timeout copy may run after the original was acked on redis (§3.2 G1, G6)."""
    s = Story().online("w1").online("w2").publish("m1", "t1", eta=100).deliver("m1").at(50)
    s.requeued("m1", reason="visibility-timeout", copy=True)
    s.deliver("m1", "w2", redelivered=True, copy=True).at(100).run_ok("m1").run_ok("m1", "w2")
    assert check_g1(s.history, CheckConfig(transport="redis", visibility_timeout=50)) == []


def test_g1_tolerates_an_unrecorded_visibility_copy_on_a_real_redis() -> None:
    """A real Redis restores a message inside a worker's poll, unseen by any recorder: the
    copy arrives ``redelivered`` while the first delivery has been unacked past the
    visibility timeout. Seen in CI: an early-ack task with a 1.5 s countdown on a 1 s
    timeout, both copies on the one worker, started twice (kombu #337)."""
    s = Story().online("w1").publish("m1", "t1", eta=1.5).deliver("m1").at(1.48)
    s.deliver("m1", redelivered=True).at(1.5).run_ok("m1").run_ok("m1")
    assert check_g1(s.history, CheckConfig(transport="redis", visibility_timeout=1.0)) == []
    # Either copy may start first: recorded on a real Redis in CI, the restored copy
    # (attempt .2) started, then the original (attempt .1).
    recorded = History.from_jsonl(
        (Path(__file__).parent / "data" / "g1_redis_copy_started_first.jsonl").read_text()
    )
    redis = CheckConfig(transport="redis", visibility_timeout=1.0, slack=2.0)
    assert check_g1(recorded, redis) == []
    longer = CheckConfig(transport="redis", visibility_timeout=3600, slack=2.0)
    assert any("started again" in v.message for v in check_g1(recorded, longer))
    # Before the timeout it is no copy: the second start is a violation.
    s = Story().online("w1").publish("m1", "t1", eta=1.5).deliver("m1").at(0.5)
    s.deliver("m1", redelivered=True).at(1.5).run_ok("m1").run_ok("m1")
    found = check_g1(s.history, CheckConfig(transport="redis", visibility_timeout=1.0))
    assert any("started again" in v.message for v in found), found


def test_a_redelivery_without_its_flag_after_a_silent_return_is_reported() -> None:
    """Recorded on real Redis with the double-delivery mutant (every task message handed
    to the worker twice): the second copy came unflagged once the first had been unacked
    past the 1 s visibility timeout, a return no event shows. The checker used to crash
    (IndexError) looking for that return's event; it reports the delivery instead."""
    from simq.checkers import check_g2

    recorded = History.from_jsonl(
        (
            Path(__file__).parent / "data" / "g2_redis_double_delivery_silent_return.jsonl"
        ).read_text()
    )
    config = CheckConfig(
        transport="redis", visibility_timeout=1.0, acks_late={"*": True}, slack=0.25,
        transport_slack=2.0, complete=True,
    )  # fmt: skip
    found = [v for v in check_g2(recorded, config) if "without the redelivered flag" in v.message]
    assert len(found) == 1 and found[0].events[-1].kind == "delivered"


def test_g1_fails_a_start_without_a_delivery() -> None:
    """A start that no delivery explains breaks G1's delivery rules (§3.2 G1)."""
    s = Story().online("w1").publish("m1", "t1").start("m1")
    v = only(check_g1(s.history, AMQP), "G1")
    assert "without a delivery of that message to that worker" in v.message


def test_g1_fails_a_real_run_with_its_ack_moved_after_the_outcome() -> None:
    """A real run edited to ack after the task succeeded breaks G1 (§3.2 G1)."""
    app = simq.App("shop")

    @app.task(name="shop.add")
    def add(x, y):
        return x + y

    with simq.Simulation(app, seed=1) as sim:
        add.delay(1, 2).get()
        config = config_from(sim)
    history = sim.history
    assert check_g1(history, config) == []
    ack = next(e for e in history if e.kind == "acked")
    moved = History([e for e in history if e is not ack] + [ack])
    assert "after its attempt ended with succeeded" in only(check_g1(moved, config), "G1").message


# -- G2 ------------------------------------------------------------------------------


def test_g2_passes_an_ack_after_success() -> None:
    """An acks_late task acked after SUCCESS is stored keeps G2 (§3.2 G2)."""
    assert check_g2(late_run().history, LATE) == []


def test_g2_fails_an_ack_while_running() -> None:
    """An acks_late task acked before its attempt ended breaks G2 (§3.2 G2)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1").at(1)
    s.state("t1", "SUCCESS", 1).succeeded("m1")
    v = only(check_g2(s.history, LATE), "G2")
    assert "was acked at 2030-01-01T00:00:00.000Z while its attempt" in v.message


def test_g2_fails_a_state_stored_after_the_ack() -> None:
    """A backend write after the late ack breaks G2: the ack follows the stored state."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").succeeded("m1")
    s.ack("m1").state("t1", "SUCCESS", 1)
    v = only(check_g2(s.history, LATE), "G2")
    assert "SUCCESS was stored at 2030-01-01T00:00:00.000Z, after the message was acked" in (
        v.message
    )


@pytest.mark.parametrize(
    ("aof", "settle", "ok"),
    [
        (True, "ack", True),
        (True, "reject", False),
        (False, "reject", True),
        (False, "ack", False),
    ],
)
def test_g2_judges_a_failure_by_acks_on_failure(aof: bool, settle: str, ok: bool) -> None:
    """A failed acks_late task is acked, or rejected without requeue when AoF is off (§3.1)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1")
    s.state("t1", "FAILURE", None).failed("m1")
    s.ack("m1") if settle == "ack" else s.reject("m1", requeue=False)
    config = CheckConfig(acks_late={"*": True}, acks_on_failure={"*": aof})
    found = check_g2(s.history, config)
    assert found == [] if ok else "(acks_on_failure=" in only(found, "G2").message


def test_g2_fails_a_success_that_is_rejected() -> None:
    """A succeeded acks_late task is acked, never rejected (§3.1)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1")
    s.state("t1", "SUCCESS", 1).succeeded("m1").reject("m1", requeue=True)
    v = [v for v in check_g2(s.history, LATE) if "ended with succeeded" in v.message]
    assert "rejected(requeue=True)" in only(v, "G2").message


def test_g2_fails_a_drained_run_that_never_acks() -> None:
    """An acks_late attempt left unacked in a drained run breaks G2; a cut run does not."""
    history = edited(late_run().history, drop=lambda e: e.kind == "acked")
    v = only(check_g2(history, CheckConfig(acks_late={"*": True}, complete=True)), "G2")
    assert "never acked or rejected although the run drained" in v.message
    assert check_g2(history, LATE) == []


def test_g2_requires_a_rerun_after_a_crash_mid_task() -> None:
    """An acks_late task running when its worker crashed runs again (§3.2 G2)."""
    s = Story().online("w1").online("w2").publish("m1", "t1").deliver("m1").start("m1").at(1)
    s.fault("worker-crashed").requeued("m1", reason="worker-crashed")
    config = CheckConfig(acks_late={"*": True}, complete=True)
    v = only(check_g2(s.history, config), "G2")
    assert "when the worker crashed at 2030-01-01T00:00:01.000Z, and never ran again" in v.message
    s.deliver("m1", "w2", redelivered=True).run_ok("m1", "w2", late=True)
    assert check_g2(s.history, config) == []


def test_g2_expects_no_rerun_of_a_message_lost_with_its_worker() -> None:
    """On a transport that holds unacked messages in the worker (kombu's virtual
    transports: the G4 deviation), a killed worker's acks_late task is lost, not run
    again: G2 leaves the loss to L2 and the transport's declared deviation."""
    s = Story().online("w1").online("w2").publish("m1", "t1")
    s.event("delivered", "t1", "m1", "w1", queue="celery", redelivered=False, attempt="a1")
    s.event("started", "t1", "m1", "w1", task="shop.add", retries=0, attempt="a1").at(1)
    s.fault("worker-crashed").event("lost", "t1", "m1", "w1", reason="worker-crashed", attempt="a1")
    config = CheckConfig(acks_late={"*": True}, complete=True)
    assert check_g2(s.history, config) == []
    unrecorded = edited(s.history, drop=lambda e: e.kind == "lost")
    assert "never ran again" in only(check_g2(unrecorded, config), "G2").message


def test_g2_fails_a_real_run_with_ack_and_state_swapped() -> None:
    """A real acks_late run edited to ack before SUCCESS is stored breaks G2 (§3.2 G2)."""
    app = simq.App("shop")

    @app.task(name="shop.slow", acks_late=True)
    def slow():
        time.sleep(1)
        return 1

    with simq.Simulation(app, seed=2) as sim:
        slow.delay().get()
        config = config_from(sim)
    events = list(sim.history)
    assert check_g2(sim.history, config) == []
    ack = next(i for i, e in enumerate(events) if e.kind == "acked")
    events.insert(ack - 2, events.pop(ack))  # before state SUCCESS and succeeded
    assert only(check_g2(History(events), config), "G2").message.endswith(
        "with acks_late the ack comes after the attempt ends"
    )


# -- G5 ------------------------------------------------------------------------------


def held(window_multiplier: int = 1, concurrency: int = 1) -> Story:
    s = Story().online("w1", concurrency=concurrency, prefetch_multiplier=window_multiplier)
    return s.publish("m1", "t1").publish("m2", "t2").deliver("m1")


def test_g5_fails_a_delivery_beyond_the_window() -> None:
    """A worker with window 1 holding an unacked message is sent no other (§3.2 G5)."""
    s = held().deliver("m2")
    v = only(check_g5(s.history, AMQP), "G5")
    assert v.message == (
        "w1 was sent shop.add[t2] message m2 at 2030-01-01T00:00:00.000Z "
        "while it held 1 unacked non-ETA message(s) (m1); its prefetch "
        "window is 1"
    )
    assert kinds(v) == ["delivered", "delivered"]


def test_g5_passes_a_delivery_after_the_ack() -> None:
    """Once the held message is acked at start, the window has room again (§3.2 G5)."""
    s = held().start("m1").ack("m1").deliver("m2")
    assert check_g5(s.history, AMQP) == []


def test_g5_does_not_count_eta_messages() -> None:
    """A message waiting for its ETA sits outside the prefetch window (§3.2 G5)."""
    s = Story().online("w1", prefetch_multiplier=1).publish("m1", "t1", eta=60)
    s.publish("m2", "t2").deliver("m1").deliver("m2")
    assert check_g5(s.history, AMQP) == []


def test_g5_does_not_count_an_eta_message_revoked_when_its_eta_fires() -> None:
    """An ETA message revoked when its ETA fires never joins the window: Celery acks it and
    lowers the prefetch count on the consumer's next turn (§3.2 G5); one that runs counts."""
    s = Story().online("w1", prefetch_multiplier=1).publish("m1", "t1", eta=1)
    s.publish("m2", "t2", eta=3).deliver("m1")
    s.at(2).event("revoked", "t1", "m1", "w1", reason="revoked", expired=False, terminated=False)
    s.state("t1", "REVOKED", exc("TaskRevokedError", "revoked"))
    s.deliver("m2").ack("m1")
    assert check_g5(s.history, AMQP) == []
    s = Story().online("w1", prefetch_multiplier=1).publish("m1", "t1", eta=1)
    s.publish("m2", "t2", eta=3).deliver("m1").at(2).deliver("m2").start("m1").ack("m1")
    v = only(check_g5(s.history, AMQP), "G5")
    assert "while it held 1 unacked non-ETA message(s) (m1)" in v.message


def test_g5_lets_an_eta_message_widen_the_window_until_the_consumer_s_next_turn() -> None:
    """A message with an ETA header raises the prefetch count when received and lowers it
    when its timer fires, on the consumer's next turn (strategy.py increment_eventually,
    apply_eta_task decrement_eventually): a real worker's turn comes within the
    recording slack. Seen on RabbitMQ, window 1: a retry with a 0.1 s countdown, then the
    next message 0.1 s after that ETA, before the retry started."""
    s = Story().online("w1", prefetch_multiplier=1).publish("m1", "t1", eta=0.1)
    s.publish("m2", "t2").deliver("m1").at(0.2).deliver("m2").at(0.3).start("m1").ack("m1")
    assert check_g5(s.history, CheckConfig(slack=1.0)) == []
    v = only(check_g5(s.history, AMQP), "G5")  # no slack: the ETA passed, m1 counts
    assert "while it held 1 unacked non-ETA message(s) (m1)" in v.message
    # The recorded case: the ETA message started, the next came 5 ms later.
    s = Story().online("w1", prefetch_multiplier=1).publish("m1", "t1", eta=0.1)
    s.publish("m2", "t2").deliver("m1").at(0.2).start("m1").at(0.205).deliver("m2")
    assert check_g5(s.history, CheckConfig(slack=1.0)) == []
    # Beyond the slack, the window holds again.
    s.at(1.5).publish("m3", "t3").deliver("m3")
    v = only(check_g5(s.history, CheckConfig(slack=1.0)), "G5")
    assert "was sent" in v.message and "m3" in v.message


def test_g5_on_the_synchronous_loop_lets_one_message_in_before_the_turn_ends() -> None:
    """Celery's synloop hands the channel a lowered prefetch count only as its next turn
    begins, and a turn ends when it fetches a message or 2 s after it began; the count
    drops when the ETA task reaches a child. After it started, the first message fetched
    within the turn may exceed the window, the one after may not (§3.2 G5;
    celery/worker/loops.py synloop)."""
    sync = CheckConfig(transport="polling", sync_loop=True, complete=False)
    s = Story().online("w1", prefetch_multiplier=1).publish("m1", "t1", eta=1)
    s.publish("m2", "t2").publish("m3", "t3").publish("m4", "t4")
    s.deliver("m1").deliver("m2").start("m2")
    # The ETA passed at 1; m2 ends at 1.8, m1 starts; m3 is fetched at 2 (the stale turn).
    s.at(1.8).ack("m2").start("m1").at(2).deliver("m3")
    assert check_g5(s.history, sync) == []
    v = only(check_g5(s.history, attrs.evolve(sync, sync_loop=False)), "G5")
    assert "was sent shop.add[t3] message m3" in v.message
    # The turn ended with m3: m4 at 2.5, while m1 and m3 are unacked, is one too many.
    s.at(2.5).deliver("m4")
    v = only(check_g5(s.history, sync), "G5")
    assert "was sent shop.add[t4] message m4" in v.message
    assert "while it held 2 unacked non-ETA message(s) (m3, m1)" in v.message


@pytest.mark.parametrize(
    ("recording", "excess_after", "on_an_event_loop"),
    [
        # The ETA task waited 1.5 s for the busy child, started, and the next message
        # came 1 ms later (within the slack of the start: an event loop's next turn).
        ("g5_filesystem_eta_task_started_then_one_more_fetched", 1.50, False),
        # The same with the busy task running 7 s, a revoke at 1.26 s on the way: 6 s
        # after the ETA, which an event loop would have lowered the count for.
        ("g5_filesystem_eta_hold_until_its_start", 7.0, True),
    ],
)
def test_g5_recorded_on_filesystem_an_eta_task_widens_the_window_until_its_start(
    recording: str, excess_after: float, on_an_event_loop: bool
) -> None:
    """Recorded on kombu's filesystem:// (Celery 5.7.0, window 1, acks_late): a countdown
    task's timer fired while the only child was busy; the timer thread waited for the
    child (billiard's putlocks) and lowered the prefetch count after it handed the task
    over, and synloop gave the channel that count only at its next turn, after one more
    message was fetched, while the ETA task ran unacked. Celery's behaviour on the
    synchronous loop, which G5 accepts there; on an event loop it is a window excess."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / f"{recording}.jsonl"
    history = simq.History.from_jsonl(path.read_text())
    start = history.first().time
    fetched = [e.time - start for e in history.where(kind="delivered")]
    assert fetched[2] > excess_after  # the third fetch, after the ETA task started
    sync = CheckConfig(transport="polling", slack=0.25, transport_slack=2.0, sync_loop=True)
    assert check_g5(history, sync) == []
    loop = attrs.evolve(sync, sync_loop=False, transport="amqp", transport_slack=None)
    if on_an_event_loop:
        v = only(check_g5(history, loop), "G5")
        assert "while it held 1 unacked non-ETA message(s)" in v.message
    else:
        assert check_g5(history, loop) == []


def test_g5_fails_beyond_the_eta_task_limit() -> None:
    """With worker_eta_task_limit, ETA-held messages are bounded too (§3.2 G5)."""
    s = Story().online("w1").publish("m1", "t1", eta=60).publish("m2", "t2", eta=60)
    s.deliver("m1").deliver("m2")
    assert check_g5(s.history, AMQP) == []
    v = only(check_g5(s.history, CheckConfig(eta_task_limit=1)), "G5")
    assert v.message.endswith("worker_eta_task_limit is 1")


def test_g5_takes_the_window_from_the_config_first() -> None:
    """config.prefetch overrides the worker-online numbers; 0 means unlimited (§3.2 G5)."""
    s = held(window_multiplier=1).deliver("m2")
    assert check_g5(s.history, CheckConfig(prefetch={"w1": 2})) == []
    assert check_g5(s.history, CheckConfig(prefetch={"*": 0})) == []
    assert check_g5(held(window_multiplier=0).deliver("m2").history, AMQP) == []


def test_g5_starts_a_fresh_window_after_a_connection_loss() -> None:
    """Deliveries on a closed channel no longer count against the window (§3.2 G5, G7)."""
    s = held().at(1).fault("connection-lost").requeued("m1", reason="connection-lost")
    s.fault("connection-restored").deliver("m2")
    assert check_g5(s.history, AMQP) == []


def test_g5_fails_a_real_run_with_an_ack_removed() -> None:
    """A real prefetch-1 run edited to drop an ack overfills the window (§3.2 G5)."""
    app = simq.App("shop")

    @app.task(name="shop.work")
    def work(x):
        time.sleep(1)
        return x

    with simq.Simulation(app, seed=0, prefetch_multiplier=1) as sim:
        for x in range(3):
            work.delay(x)
        sim.run()
        config = config_from(sim)
    assert check_g5(sim.history, config) == []
    history = edited(sim.history, drop=lambda e: e.kind == "acked" and e.message_id == "m1")
    assert "its prefetch window is 1" in check_g5(history, config)[0].message


# -- G6 ------------------------------------------------------------------------------

REDIS = CheckConfig(transport="redis", visibility_timeout=10)


def copied(after: float) -> Story:
    s = Story().online("w1").online("w2").publish("m1", "t1", eta=30).deliver("m1").at(after)
    s.requeued("m1", reason="visibility-timeout", copy=True)
    return s.deliver("m1", "w2", redelivered=True, copy=True)


def test_g6_passes_a_restore_at_the_visibility_timeout() -> None:
    """On redis an ETA message unacked for the visibility timeout is restored (§3.2 G6)."""
    s = copied(after=10).at(30).run_ok("m1").run_ok("m1", "w2")
    assert check_g6(s.history, REDIS) == []


def test_g6_fails_any_visibility_restore_on_amqp() -> None:
    """amqp has no visibility timeout: neither a restore nor a copy may happen (§3.2 G6)."""
    found = check_g6(copied(after=10).history, AMQP)
    assert [v.guarantee for v in found] == ["G6", "G6"]
    assert found[0].message.endswith("amqp has no visibility timeout")
    assert found[1].message.endswith("amqp never duplicates a delivery")


def test_g6_fails_a_restore_before_the_visibility_timeout() -> None:
    """A restore sooner than the visibility timeout after the delivery breaks G6."""
    v = only(check_g6(copied(after=4).history, REDIS), "G6")
    assert "4 s after its delivery to w1; the visibility timeout is 10 s" in v.message


def test_g6_fails_a_restore_of_an_acked_message() -> None:
    """Only unacked messages are restored (§3.2 G6)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").at(2).ack("m1")
    s.at(20).requeued("m1", reason="visibility-timeout")
    v = only(check_g6(s.history, REDIS), "G6")
    assert "although it was acked at 2030-01-01T00:00:02.000Z" in v.message


def test_g6_fails_a_drained_run_where_a_long_unacked_message_never_returns() -> None:
    """In a drained redis run, a delivery unacked past the timeout must be restored (§3.2 G6)."""
    s = Story().online("w1").publish("m1", "t1", eta=30).deliver("m1").at(30)
    s.run_ok("m1")
    config = CheckConfig(transport="redis", visibility_timeout=10, complete=True)
    v = only(check_g6(s.history, config), "G6")
    assert "longer than the visibility timeout (10 s), and was never restored" in v.message
    assert check_g6(s.history, REDIS) == []


def test_g6_fails_a_real_redis_run_with_its_restore_removed() -> None:
    """A real redis duplicate edited to hide the restore breaks G6 (§3.2 G6)."""
    app = simq.App("shop", broker_transport_options={"visibility_timeout": 5})

    @app.task(name="shop.later")
    def later():
        return 1

    with simq.Simulation(app, seed=0, transport="redis") as sim:
        later.apply_async(countdown=8)
        sim.run()
        config = config_from(sim)
    assert check_g6(sim.history, config) == []

    def drop(e: Event) -> bool:
        return e.kind == "requeued" or (e.kind == "delivered" and e.details.get("copy"))

    v = check_g6(edited(sim.history, drop=drop), config)
    assert "was never restored" in v[0].message


def test_g6_fails_a_restore_after_a_wiping_broker_restart() -> None:
    """A broker restart that lost every message also lost its unacked records (§3.2 G6)."""
    s = copied(after=10).at(12).fault("broker-restarted", None, lost=1)
    s.event("lost", "t1", "m1", None, reason="broker-restart").at(20)
    s.requeued("m1", "w2", reason="visibility-timeout", copy=True)
    v = only(check_g6(s.history, REDIS), "G6")
    assert v.message.endswith(
        "although the broker restart at 2030-01-01T00:00:12.000Z lost "
        "its messages, unacked ones included"
    )


def test_g6_passes_a_real_redis_restart_that_loses_a_visibility_copy() -> None:
    """A real Redis restart loses the original and its visibility copy; neither returns."""
    app = simq.App("shop", broker_transport_options={"visibility_timeout": 5})

    @app.task(name="shop.later")
    def later():
        return 1

    with simq.Simulation(app, seed=0, workers=2, transport="redis") as sim:
        later.apply_async(countdown=30)
        sim.restart_broker(at=7)
        sim.run()
        config = config_from(sim)
    assert len(sim.history.where(kind="lost")) == 2
    assert sim.history.where(kind="requeued").kinds() == ["requeued"]  # the copy, at 5 s
    assert check_g6(sim.history, config) == []


def test_g6_does_not_guess_between_copies_held_side_by_side() -> None:
    """Copies of one message held by one worker are indistinguishable: no timing verdict."""
    s = copied(after=10)
    s.at(10).deliver("m1", "w2", redelivered=True, copy=True).at(30)
    s.run_ok("m1").run_ok("m1", "w2").at(40).run_ok("m1", "w2")
    config = CheckConfig(transport="redis", visibility_timeout=10, complete=True)
    assert check_g6(s.history, config) == []


def test_g6_passes_a_real_redis_restore_fetched_after_the_original_was_acked() -> None:
    """A restored copy waits in the queue: its redelivery may follow the original's ack.

    Recorded on real Celery and Redis (visibility timeout 8 s, CI of 2026-12-04; 25 of
    the run's 26 events, as CI printed them): an ETA message held 10 s behind a busy
    pool was restored at 8 s inside Redis, the original was acked at 10.14 s and the
    restored copy, flagged redelivered, was fetched 2 ms later.
    """
    recorded = History.from_jsonl(
        (
            Path(__file__).parent / "data" / "g6_redis_restored_copy_fetched_after_ack.jsonl"
        ).read_text()
    )
    config = CheckConfig(transport="redis", visibility_timeout=8, complete=True)
    assert check_g6(recorded, config) == []

    def hide_the_copy(e: Event) -> bool:
        return e.kind == "delivered" and bool(e.details.get("redelivered"))

    v = only(check_g6(edited(recorded, drop=hide_the_copy), config), "G6")
    assert "longer than the visibility timeout (8 s), and was never restored" in v.message
