"""Checkers of whole-worker faults: G4, G7, G17 (CELERY_SEMANTICS.md §3.2), on doctored histories.

Each guarantee is also checked on a real simq run with the fault injected, which must pass.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest
from checker_support import Story, edited, exc, kinds, only

import simq
from simq.checkers import CheckConfig, check_g4, check_g7, check_g17, config_from

DONE = CheckConfig(complete=True)
LATE_DONE = CheckConfig(acks_late={"*": True}, complete=True)


def fault_run(fault: str, transport: str = "amqp", **conf: Any) -> simq.Simulation:
    """Early and late tasks on two workers, with ``fault`` at t=1 on worker-1."""
    app = simq.App("shop", **conf)

    @app.task(name="shop.slow")
    def slow():
        time.sleep(5)
        return 1

    @app.task(name="shop.lslow", acks_late=True)
    def lslow():
        time.sleep(5)
        return 2

    with simq.Simulation(app, seed=0, workers=2, concurrency=2, transport=transport) as sim:
        for _ in range(3):
            slow.delay()
            lslow.delay()
        slow.apply_async(countdown=3)
        if fault == "crash":
            sim.crash_worker("worker-1", at=1, restart_after=2)
        elif fault == "connection":
            sim.lose_connection("worker-1", at=1, reconnect_after=2)
        else:
            sim.shutdown_worker("worker-1", at=1, warm=fault == "warm")
        sim.run()
    kind = {"crash": "worker-crashed", "connection": "connection-lost"}.get(fault, "shutdown")
    assert kind in sim.history.kinds()
    return sim


@pytest.mark.parametrize(
    ("fault", "transport", "conf"),
    [
        ("crash", "amqp", {}),
        ("crash", "redis", {"broker_transport_options": {"visibility_timeout": 8}}),
        ("connection", "amqp", {}),
        ("connection", "amqp", {"worker_cancel_long_running_tasks_on_connection_loss": True}),
        ("connection", "sqs", {"broker_transport_options": {"visibility_timeout": 8}}),
        ("shutdown-warm", "amqp", {}),
        ("shutdown-cold", "amqp", {}),
        ("shutdown-cold", "redis", {}),
    ],
)
def test_fault_checkers_pass_real_fault_runs(
    fault: str, transport: str, conf: dict[str, Any]
) -> None:
    """G4, G7 and G17 find nothing in real simq runs with the fault injected (§3.2)."""
    sim = fault_run(fault.replace("shutdown-", ""), transport, **conf)
    config = config_from(sim)
    assert config.complete
    for check in (check_g4, check_g7, check_g17):
        assert check(sim.history, config) == []


# -- G4 ------------------------------------------------------------------------------


def crashed(late: bool = True) -> Story:
    s = Story().online("w1").online("w2").publish("m1", "t1").deliver("m1").start("m1")
    if not late:
        s.ack("m1")
    return s.at(1).fault("worker-crashed", restart_after=None)


def test_g4_fails_an_unacked_message_that_never_returns() -> None:
    """An unacked message of a crashed worker goes back to the queue in a drained run (§3.2 G4)."""
    v = only(check_g4(crashed().history, LATE_DONE), "G4")
    assert v.message == (
        "shop.add[t1] message m1 was unacked on w1 at the worker-crashed at "
        "2030-01-01T00:00:01.000Z and never went back to the queue although "
        "the run drained"
    )
    assert kinds(v) == ["delivered", "started", "worker-crashed"]
    assert check_g4(crashed().history, CheckConfig(acks_late={"*": True})) == []
    assert check_g4(crashed().requeued("m1").history, LATE_DONE) == []


def test_g4_fails_a_redelivery_before_the_visibility_timeout() -> None:
    """On redis a crashed worker's message returns only after the visibility timeout (§3.2 G4)."""
    s = crashed().at(2).requeued("m1", None, reason="visibility-timeout")
    s.deliver("m1", "w2", redelivered=True).run_ok("m1", "w2", late=True)
    config = CheckConfig(transport="redis", visibility_timeout=10, acks_late={"*": True})
    v = only(check_g4(s.history, config), "G4")
    assert "sooner than the visibility timeout (10.0 s)" in v.message


def test_g4_fails_an_early_acked_task_that_runs_again() -> None:
    """An early-acked task running on a crashed worker is lost, never re-run (§3.2 G4)."""
    s = crashed(late=False).at(2).deliver("m1", "w2", redelivered=True).run_ok("m1", "w2")
    found = [v for v in check_g4(s.history, DONE)]
    assert "yet started again on w2 at 2030-01-01T00:00:02.000Z" in only(found, "G4").message


def test_g4_fails_a_dead_worker_that_reports_an_outcome() -> None:
    """A crashed worker stores nothing and reports nothing until it is back (§3.2 G4)."""
    s = crashed(late=False).at(3).state("t1", "SUCCESS", 1).succeeded("m1")
    found = check_g4(s.history, DONE)
    assert [v.guarantee for v in found] == ["G4"] * 4
    assert "reported succeeded at 2030-01-01T00:00:03.000Z although w1" in found[0].message
    assert "SUCCESS was stored at 2030-01-01T00:00:03.000Z by the attempt" in found[1].message
    assert found[2].message.startswith(
        "w1 crashed at 2030-01-01T00:00:01.000Z and was not back online, yet recorded state"
    )


def test_g4_fails_a_real_crash_run_with_the_requeue_removed() -> None:
    """A real crash edited so an unacked message never returns breaks G4 (§3.2 G4)."""
    sim = fault_run("crash")
    config = config_from(sim)
    requeued = sim.history.where(kind="requeued").first()
    history = edited(
        sim.history,
        drop=lambda e: (
            e.message_id == requeued.message_id
            and (e.time >= requeued.time and e.kind != "published")
        ),
    )
    found = [v for v in check_g4(history, config) if "never went back to the queue" in v.message]
    assert f"message {requeued.message_id} was unacked on worker-1" in only(found, "G4").message


# -- G7 ------------------------------------------------------------------------------


def disconnected(started: bool = True) -> Story:
    s = Story().online("w1").publish("m1", "t1").deliver("m1")
    if started:
        s.start("m1")
    return s.at(1).fault("connection-lost").requeued("m1", reason="connection-lost")


def test_g7_fails_a_start_from_a_dead_channel() -> None:
    """A reserved message of a closed channel never starts from that delivery (§3.2 G7)."""
    s = disconnected(started=False).at(2).fault("connection-restored").start("m1")
    v = only(check_g7(s.history, CheckConfig()), "G7")
    assert "from a delivery made before the connection was lost" in v.message


def test_g7_fails_an_ack_through_a_dead_channel() -> None:
    """An ack of a delivery whose channel closed cannot land: ack-failed, never acked (§3.2 G7)."""
    s = disconnected().at(2).state("t1", "SUCCESS", 1).succeeded("m1").ack("m1")
    v = only(check_g7(s.history, LATE_DONE), "G7")
    assert "a delivery tag dies with its channel, the ack must fail" in v.message
    ok = disconnected().at(2).state("t1", "SUCCESS", 1).succeeded("m1")
    assert check_g7(ok.event("ack-failed", "t1", "m1", "w1").history, LATE_DONE) == []


def test_g7_fails_a_delivery_while_disconnected() -> None:
    """A disconnected worker is sent nothing until it reconnects (§3.2 G7)."""
    s = disconnected(started=False).publish("m2", "t2").deliver("m2")
    v = [v for v in check_g7(s.history, CheckConfig()) if "while disconnected" in v.message]
    assert only(v, "G7").message.startswith("w1 was sent message m2 of task t2")


def test_g7_fails_a_message_that_never_returns() -> None:
    """Every message unacked at the loss goes back to the queue in a drained run (§3.2 G7)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").at(1).fault("connection-lost")
    v = only(check_g7(s.history, DONE), "G7")
    assert "at the connection-lost at 2030-01-01T00:00:01.000Z and never went back" in v.message


@pytest.mark.parametrize(
    ("setting", "cancel", "retry", "problem"),
    [
        (False, False, False, None),
        (False, True, False, "keep running unless"),
        (True, True, True, None),
        (True, False, False, "kept running"),
        (True, True, False, "without storing RETRY"),
    ],
)
def test_g7_judges_cancelling_running_acks_late_tasks(
    setting: bool, cancel: bool, retry: bool, problem: str | None
) -> None:
    """Running acks_late tasks are cancelled with RETRY only with the setting (§3.2 G7)."""
    s = disconnected()
    if cancel:
        s.event("cancelled", "t1", "m1", "w1", reason="connection-lost")
    if retry:
        s.state("t1", "RETRY", None)
    if not cancel:
        s.at(3).state("t1", "SUCCESS", 1).succeeded("m1").event("ack-failed", "t1", "m1", "w1")
    config = CheckConfig(
        acks_late={"*": True}, cancel_long_running_tasks_on_connection_loss=setting
    )
    found = check_g7(s.history, config)
    assert found == [] if problem is None else problem in only(found, "G7").message


# -- G17 -----------------------------------------------------------------------------


def stopping(warm: bool, late: bool = False) -> Story:
    s = Story().online("w1").publish("m1", "t1").publish("m2", "t2").deliver("m1")
    s.deliver("m2").start("m1")
    if not late:
        s.ack("m1")
    return s.at(1).fault("shutdown", warm=warm).requeued("m2", reason="shutdown")


def test_g17_passes_a_warm_shutdown_that_lets_the_task_finish() -> None:
    """A warm shutdown finishes the running task, returns the rest, then goes offline."""
    s = stopping(warm=True).at(4).state("t1", "SUCCESS", 1).succeeded("m1")
    s.fault("worker-offline", reason="shutdown")
    assert check_g17(s.history, DONE) == []


def test_g17_fails_a_start_after_the_shutdown_began() -> None:
    """A worker shutting down starts nothing more (§3.2 G17)."""
    s = stopping(warm=True).start("m2")
    found = [v for v in check_g17(s.history, CheckConfig()) if "after the warm" in v.message]
    assert "started on w1 at 2030-01-01T00:00:01.000Z after the warm shutdown" in (
        only(found, "G17").message
    )


def test_g17_on_the_synchronous_loop_lets_a_warm_shutdown_run_what_was_reserved() -> None:
    """On Celery's synchronous consumer loop (a polling transport: filesystem://, SQLAlchemy)
    the prefork pool was handed every reserved task at once, and a warm shutdown runs them
    all: a message delivered before it may start after it began. Nothing else may."""
    sync = CheckConfig(sync_loop=True)
    s = Story().online("w1").publish("m1", "t1").publish("m2", "t2").deliver("m1")
    s.deliver("m2").start("m1").ack("m1").at(1).fault("shutdown", warm=True).start("m2")
    s.ack("m2").at(4).state("t1", "SUCCESS", 1).succeeded("m1").state("t2", "SUCCESS", 2)
    s.succeeded("m2").fault("worker-offline", reason="shutdown")
    assert check_g17(s.history, sync) == []
    started_late = [v for v in check_g17(s.history, CheckConfig()) if "after the warm" in v.message]
    assert len(started_late) == 1
    # The poll in flight at the SIGTERM and the one more turn synloop runs may each
    # fetch a message, and the pool runs them; a third one, or one fetched later, no.
    polling = CheckConfig(sync_loop=True, transport_slack=2.0)
    late = Story().online("w1")
    for n in range(1, 5):
        late.publish(f"m{n}", f"t{n}")
    late.deliver("m1").start("m1").ack("m1").at(1).fault("shutdown", warm=True)
    for n, at in ((2, 1.4), (3, 2.9), (4, 3.0)):
        late.at(at).deliver(f"m{n}").start(f"m{n}").ack(f"m{n}")
    found = [v for v in check_g17(late.history, polling) if "after the warm" in v.message]
    assert [v.message.split(" message ")[1][:2] for v in found] == ["m4"]
    slow = Story().online("w1").publish("m1", "t1").publish("m2", "t2").deliver("m1")
    slow.start("m1").ack("m1").at(1).fault("shutdown", warm=True).at(7.5).deliver("m2")
    slow.start("m2")
    assert [v for v in check_g17(slow.history, polling) if "after the warm" in v.message]
    # A cold shutdown starts nothing more, on either loop.
    cold = Story().online("w1").publish("m1", "t1").publish("m2", "t2").deliver("m1")
    cold.deliver("m2").start("m1").ack("m1").at(1).fault("shutdown", warm=False).at(1.5)
    cold.start("m2")
    assert [v for v in check_g17(cold.history, sync) if "after the cold" in v.message]


@pytest.mark.parametrize(
    ("recording", "late", "started"),
    [
        ("g17_sqla_fetch_after_warm_shutdown", True, "2026-12-04T17:35:10.790Z"),
        ("g17_sqla_two_fetches_after_warm_shutdown", False, "2026-12-04T17:41:22.572Z"),
        # A cold one: a task the pool already held started 3 ms after the signal.
        ("g17_sqla_start_just_after_cold_shutdown", False, "2026-12-04T17:56:05.688Z"),
    ],
)
def test_g17_recorded_on_sqla_fetches_after_the_warm_shutdown_then_their_start(
    recording: str, late: bool, started: str
) -> None:
    """Recorded on kombu's SQLAlchemy transport (Celery's synchronous loop): after
    worker-1's warm shutdown began, its poll in flight and synloop's one more turn each
    fetched a message (0.16 s after it; 0.45 s and 1.46 s after it), and the pool ran
    them. Celery's behaviour there; on the event loop it would break G17."""
    from pathlib import Path

    from simq.history import History

    path = Path(__file__).parent / "data" / f"{recording}.jsonl"
    history = History.from_jsonl(path.read_text())
    config = CheckConfig(
        transport="memory", acks_late={"*": late}, slack=0.25, transport_slack=2.0, complete=True
    )
    assert check_g17(history, attrs.evolve(config, sync_loop=True)) == []
    found = [v.message for v in check_g17(history, config)]
    assert any(f"started on worker-1 at {started} after the" in m for m in found)


def test_g17_fails_a_warm_shutdown_that_cuts_a_task_short() -> None:
    """A warm shutdown neither cancels a running task nor goes offline before it ends."""
    s = stopping(warm=True).event("cancelled", "t1", "m1", "w1", reason="shutdown")
    s.fault("worker-offline", reason="shutdown")
    found = check_g17(s.history, CheckConfig())
    assert [v.guarantee for v in found] == ["G17", "G17"]
    assert "a warm shutdown lets running tasks finish" in found[0].message
    assert "the worker went offline before it finished" in found[1].message


def test_g17_fails_a_prefetched_message_that_never_returns() -> None:
    """Prefetched messages go back to the queue at shutdown (§3.2 G17)."""
    s = stopping(warm=True).at(4).state("t1", "SUCCESS", 1).succeeded("m1")
    history = edited(s.history, drop=lambda e: e.kind == "requeued")
    v = only(check_g17(history, DONE), "G17")
    assert "shop.add[t2] message m2 was unacked on w1 at the shutdown" in v.message


def test_g17_accepts_the_ack_of_a_revoked_message_sent_during_the_shutdown() -> None:
    """A message revoked (expired) before the shutdown is acked by Celery itself, maybe
    only as the shutdown begins (a prefork hub sends it through call_soon); unacked, it
    must go back (§3.2 G17)."""
    s = Story().online("w1").publish("m1", "t1", eta=1, expires=0.5).deliver("m1")
    s.at(1).event("revoked", "t1", "m1", "w1", reason="expired", expired=True)
    s.state("t1", "REVOKED", exc("TaskRevokedError", "expired"))
    s.at(2).fault("shutdown", warm=False)
    unacked = s.history
    s.ack("m1").fault("worker-offline", reason="shutdown")
    assert check_g17(s.history, DONE) == []
    v = only(check_g17(unacked, DONE), "G17")
    assert "shop.add[t1] message m1 was unacked on w1 at the shutdown" in v.message


def test_g17_accepts_a_revoked_eta_message_acked_when_its_eta_fires_during_the_shutdown() -> None:
    """The consumer's timer still runs while a worker shuts down: an ETA request whose
    task was revoked is skipped and acked when its ETA fires, after a cold shutdown
    began (seen on RabbitMQ: shutdown at 0.54 s, the ack at 1.05 s, offline at 1.56 s)."""
    s = Story().online("w1").publish("m1", "t1", eta=2).deliver("m1")
    s.at(0.3).fault("revoke", None, terminate=False, signal=None, workers=["w1"])
    s.at(0.5).fault("shutdown", warm=False)
    unacked = s.history
    s.at(2).event("revoked", "t1", "m1", "w1", reason="revoked", expired=False, terminated=False)
    s.state("t1", "REVOKED", exc("TaskRevokedError", "revoked")).ack("m1")
    s.at(2.5).fault("worker-offline", reason="shutdown")
    assert check_g17(s.history, DONE) == []
    v = only(check_g17(unacked, DONE), "G17")
    assert "shop.add[t1] message m1 was unacked on w1 at the shutdown" in v.message


def test_g17_requires_a_cold_shutdown_to_cancel_early_tasks_with_retry() -> None:
    """Cold shutdown cancels an early-acked task with RETRY and never re-runs it (§3.2 G17)."""
    s = stopping(warm=False)
    assert "was not cancelled" in only(check_g17(s.history, DONE), "G17").message
    s.event("cancelled", "t1", "m1", "w1", reason="shutdown")
    assert "without storing RETRY" in only(check_g17(s.history, DONE), "G17").message
    s.state("t1", "RETRY", None).fault("worker-offline", reason="shutdown")
    assert check_g17(s.history, DONE) == []
    s.at(3).deliver("m1", "w2", redelivered=True).start("m1", "w2")
    assert "yet ran again on w2" in only(check_g17(s.history, DONE), "G17").message


def test_g17_requires_a_cold_shutdown_to_requeue_acks_late_tasks_without_retry() -> None:
    """Cold shutdown cancels an unacked acks_late task without RETRY and requeues it."""
    s = stopping(warm=False, late=True).event("cancelled", "t1", "m1", "w1", reason="shutdown")
    found = check_g17(s.history, LATE_DONE)
    assert "never went back to the queue" in only(found, "G17").message
    s.requeued("m1", reason="shutdown").state("t1", "RETRY", None)
    found = check_g17(s.history, LATE_DONE)
    assert "only early-acked tasks are cancelled with RETRY" in only(found, "G17").message


@pytest.mark.parametrize(
    ("recording", "sync_loop"),
    [
        ("g17_filesystem_hard_limit_acks_in_cold_shutdown", True),
        ("g17_redis_hard_limit_acks_in_cold_shutdown", False),
    ],
)
def test_g17_recorded_a_hard_limit_that_acks_a_cancelled_task_in_a_cold_shutdown(
    recording: str, sync_loop: bool
) -> None:
    """Recorded with Celery 5.7.0: an acks_late task with a 0.5 s hard limit, cancelled by
    a cold shutdown 0.2 s after it started; the pool had not yet seen the terminated
    child when the limit fired (0.69 s after the shutdown on filesystem://, 0.50 s on
    Redis), and Celery acked the message and stored nothing. It never runs again:
    Celery's behaviour, which G17 accepts. The same history without the time limit is a
    message that never went back."""
    from pathlib import Path

    from simq.history import History

    path = Path(__file__).parent / "data" / f"{recording}.jsonl"
    history = History.from_jsonl(path.read_text())
    assert [e.kind for e in history.where(kind=["time-limit", "acked", "state"])] == [
        "time-limit",
        "acked",
    ]
    config = CheckConfig(
        transport="memory" if sync_loop else "redis", acks_late={"*": True}, slack=0.25,
        transport_slack=2.0 if sync_loop else 0.25, sync_loop=sync_loop, complete=True,
    )  # fmt: skip
    assert check_g17(history, config) == []
    no_limit = edited(history, drop=lambda e: e.kind in ("time-limit", "failed"))
    assert "never went back to the queue" in only(check_g17(no_limit, config), "G17").message


def test_g17_hands_a_warm_shutdown_over_to_a_later_connection_loss() -> None:
    """A cancel by a connection loss during a warm shutdown is G7's to judge, not G17's."""
    s = stopping(warm=True, late=True).at(3).fault("connection-lost")
    s.event("cancelled", "t1", "m1", "w1", reason="connection-lost").state("t1", "RETRY", None)
    s.requeued("m1", reason="connection-lost").fault("worker-offline", reason="shutdown")
    config = CheckConfig(
        acks_late={"*": True}, cancel_long_running_tasks_on_connection_loss=True, complete=True
    )
    assert check_g17(s.history, config) == []
    assert check_g7(s.history, config) == []


def test_g7_leaves_a_cancel_after_reconnecting_to_its_own_cause() -> None:
    """A cold shutdown's cancel after the worker reconnected is not the connection loss's."""
    s = disconnected().at(2).fault("connection-restored").at(3).fault("shutdown", warm=False)
    s.event("cancelled", "t1", "m1", "w1", reason="shutdown")
    assert check_g7(s.history, CheckConfig(acks_late={"*": True})) == []


def test_a_warm_shutdown_ends_when_its_last_task_is_cancelled() -> None:
    """A warm shutdown whose running task a connection loss cancels goes offline (§3.2 G17)."""
    app = simq.App(
        "shop", task_acks_late=True, worker_cancel_long_running_tasks_on_connection_loss=True
    )

    @app.task(name="shop.slow")
    def slow():
        time.sleep(20)

    with simq.Simulation(app, seed=0, transport="redis") as sim:
        slow.delay()
        sim.shutdown_worker("worker-1", at=1, warm=True)
        sim.restart_broker(at=3)
        sim.run()
        assert sim.history.where(kind="worker-offline", reason="shutdown")
        assert sim.check() == []
