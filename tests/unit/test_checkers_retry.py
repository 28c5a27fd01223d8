"""Checkers of retries, timing and results: G13-G16, G18 (CELERY_SEMANTICS.md §3.2)."""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest
from checker_support import Story, edited, exc, only

import simq
from simq.checkers import (
    CheckConfig,
    check_g13,
    check_g14,
    check_g15,
    check_g16,
    check_g18,
    config_from,
)
from simq.history import Event

AMQP = CheckConfig()


def retry_run() -> simq.Simulation:
    app = simq.App("shop")

    @app.task(name="shop.flaky", bind=True, max_retries=3, default_retry_delay=2)
    def flaky(self):
        if self.request.retries < 2:
            raise self.retry(exc=ValueError("later"))
        return "ok"

    with simq.Simulation(app, seed=0) as sim:
        flaky.delay()
        sim.run()
    return sim


# -- G13 -----------------------------------------------------------------------------


def retried(publish: bool = True, store: bool = True) -> Story:
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1")
    if publish:
        s.publish("m2", "t1", retries=1, eta=180)
    if store:
        s.state("t1", "RETRY", exc("ValueError", "later"))
    return s.outcome("retried", "m1", exception=exc("ValueError", "later"), when=180)


def test_g13_passes_a_real_retry_run() -> None:
    """A real task retried twice publishes each retry before storing RETRY (§3.2 G13)."""
    sim = retry_run()
    assert len(sim.history.where(kind="retried")) == 2
    assert check_g13(sim.history, config_from(sim)) == []


def test_g13_fails_a_retry_without_its_message() -> None:
    """A retried attempt must have published the retries+1 message (§3.2 G13)."""
    v = only(check_g13(retried(publish=False).history, AMQP), "G13")
    assert v.message == (
        "shop.add[t1] message m1 (retries=0) ended with retried at "
        "2030-01-01T00:00:00.000Z but no message with retries=1 was published "
        "during the attempt; retry() publishes the next message before "
        "raising Retry"
    )


def test_g13_fails_retry_stored_before_the_message() -> None:
    """RETRY is stored only after the retry message is published (§3.2 G13)."""
    s = Story().online("w1").publish("m1", "t1").deliver("m1").start("m1").ack("m1")
    s.state("t1", "RETRY", None).publish("m2", "t1", retries=1)
    s.outcome("retried", "m1", exception=None, when=None)
    v = only(check_g13(s.history, AMQP), "G13")
    assert "before the retry message m2 was published" in v.message


def test_g13_requires_retry_stored_unless_results_are_ignored() -> None:
    """RETRY is stored unless the task ignores results without storing errors (§4.3)."""
    history = retried(store=False).history
    assert "without storing RETRY" in only(check_g13(history, AMQP), "G13").message
    assert check_g13(history, CheckConfig(ignore_result={"shop.add": True})) == []


def test_g13_fails_a_real_run_with_a_retry_message_removed() -> None:
    """A real retry edited to hide the retry publication breaks G13 (§3.2 G13)."""
    sim = retry_run()
    history = edited(sim.history, drop=lambda e: e.kind == "published" and e.message_id == "m2")
    v = only(check_g13(history, config_from(sim)), "G13")
    assert "(retries=0) ended with retried" in v.message


# -- G14 -----------------------------------------------------------------------------

DEDUP = CheckConfig(acks_late={"*": True}, deduplicate_successful_tasks=True)


def duplicate(end: str) -> Story:
    s = Story().online("w1").online("w2").publish("m1", "t1", eta=30).deliver("m1").at(10)
    s.requeued("m1", reason="visibility-timeout", copy=True)
    s.deliver("m1", "w2", redelivered=True, copy=True).at(30).run_ok("m1", late=True)
    s.start("m1", "w2")
    if end == "skip":
        s.outcome("succeeded", "m1", "w2", deduplicated=True)
    elif end == "rerun":
        s.event("state-discarded", "t1", None, "w2", state="SUCCESS", result=1)
        s.succeeded("m1", "w2")
    else:
        s.state("t1", "FAILURE", exc("KeyError"), worker="w2").failed("m1", worker="w2")
    return s.ack("m1", "w2")


def test_g14_passes_a_real_deduplicated_duplicate() -> None:
    """A real redis duplicate of a succeeded acks_late task is skipped (§3.2 G14)."""
    app = simq.App(
        "shop",
        worker_deduplicate_successful_tasks=True,
        broker_transport_options={"visibility_timeout": 5},
    )

    @app.task(name="shop.later", acks_late=True)
    def later():
        return 1

    with simq.Simulation(app, seed=0, workers=2, transport="redis") as sim:
        later.apply_async(countdown=12)
        sim.run()
        assert sim.history.where(kind="succeeded", deduplicated=True)
        assert check_g14(sim.history, config_from(sim)) == []


def test_g14_fails_a_redelivered_success_that_runs_again() -> None:
    """With deduplication a redelivered task that already succeeded does not run (§3.2 G14)."""
    assert check_g14(duplicate("skip").history, DEDUP) == []
    v = only(check_g14(duplicate("rerun").history, DEDUP), "G14")
    assert v.message.endswith(
        "it wrote SUCCESS at 2030-01-01T00:00:30.000Z; a deduplicated task is skipped"
    )
    found = check_g14(duplicate("fail").history, DEDUP)
    assert [v.guarantee for v in found] == ["G14", "G14"]
    assert "yet it ran and ended with failed" in found[1].message
    assert (
        check_g14(
            duplicate("rerun").history, attrs.evolve(DEDUP, deduplicate_successful_tasks=False)
        )
        == []
    )


# -- G15 -----------------------------------------------------------------------------


def test_g15_fails_a_write_over_success() -> None:
    """In a key-value backend nothing replaces SUCCESS (§3.2 G15)."""
    s = Story().state("t1", "SUCCESS", 1).at(5).state("t1", "FAILURE", exc("KeyError"))
    v = only(check_g15(s.history, AMQP), "G15")
    assert v.message == (
        "task t1: FAILURE was stored at 2030-01-01T00:00:05.000Z over the "
        "SUCCESS stored at 2030-01-01T00:00:00.000Z; in a key-value backend "
        "SUCCESS is final"
    )
    assert check_g15(s.history, CheckConfig(kv_backend=False)) == []


def test_g15_passes_a_discarded_write_and_a_forgotten_result() -> None:
    """A write after SUCCESS is discarded; after forget() the task may be stored anew."""
    s = (
        Story()
        .state("t1", "SUCCESS", 1)
        .event("state-discarded", "t1", None, "w1", state="FAILURE", result=None)
    )
    s.event("forgotten", "t1").state("t1", "STARTED", None).state("t1", "SUCCESS", 2)
    assert check_g15(s.history, AMQP) == []


def test_g15_fails_a_write_discarded_without_success() -> None:
    """Only writes after SUCCESS are discarded (§3.2 G15)."""
    s = (
        Story()
        .state("t1", "RETRY", None)
        .event("state-discarded", "t1", None, "w1", state="SUCCESS", result=1)
    )
    v = only(check_g15(s.history, AMQP), "G15")
    assert "although the stored state was RETRY" in v.message


# -- G16 -----------------------------------------------------------------------------


def test_g16_fails_a_start_before_the_eta() -> None:
    """A task never starts before its ETA (§3.2 G16); slack allows for clock skew."""
    s = Story().online("w1").publish("m1", "t1", eta=10).deliver("m1").at(9).run_ok("m1")
    v = only(check_g16(s.history, AMQP), "G16")
    assert v.message == (
        "shop.add[t1] message m1 started on w1 at 2030-01-01T00:00:09.000Z, "
        "before its ETA 2030-01-01T00:00:10+00:00"
    )
    assert check_g16(s.history, CheckConfig(slack=1)) == []


def rated(*starts: float) -> Story:
    s = Story().online("w1", concurrency=4)
    for n in range(len(starts)):
        s.publish(f"m{n}", f"t{n}").deliver(f"m{n}")
    for n, at in enumerate(starts):
        s.at(at).run_ok(f"m{n}")
    return s


@pytest.mark.parametrize(
    ("starts", "ok"),
    [
        ((0, 1, 2), True),
        ((0, 10, 10, 10), True),
        ((0, 0.5), False),
        ((0, 1, 1.5), False),
    ],
)
def test_g16_spaces_starts_by_the_rate_limit(starts: tuple[float, ...], ok: bool) -> None:
    """A 1/s limit spaces token grants; a backlog may start together later (§3.2 G16, §6)."""
    found = check_g16(rated(*starts).history, CheckConfig(rate_limit={"shop.add": "1/s"}))
    assert (
        found == []
        if ok
        else "sooner than its rate limit (1/s) allows" in (only(found, "G16").message)
    )


def test_g16_starts_a_fresh_bucket_after_reconnecting() -> None:
    """A reconnected worker's token bucket starts full again (§3.2 G7)."""
    s = rated(0).fault("connection-restored").publish("m9", "t9").deliver("m9").run_ok("m9")
    assert check_g16(s.history, CheckConfig(rate_limit={"*": "1/m"})) == []


def test_g16_passes_a_real_rate_limited_run() -> None:
    """A real rate-limited, countdown-delayed run keeps G16 (§3.2 G16)."""
    app = simq.App("shop")

    @app.task(name="shop.ping", rate_limit="30/m")
    def ping(x: Any) -> Any:
        return x

    @app.task(name="shop.slow")
    def slow():
        time.sleep(1)

    with simq.Simulation(app, seed=0, concurrency=2) as sim:
        for x in range(4):
            ping.apply_async((x,), countdown=x % 2)
            slow.apply_async(countdown=3)
        sim.run()
        assert check_g16(sim.history, config_from(sim)) == []


# -- G18 -----------------------------------------------------------------------------


def test_g18_passes_a_real_retry_run() -> None:
    """Each retry of a real task carries the attempt's retries + 1 (§3.2 G18)."""
    sim = retry_run()
    assert [e["retries"] for e in sim.history.where(kind="published")] == [0, 1, 2]
    assert check_g18(sim.history, config_from(sim)) == []


def test_g18_fails_a_retry_that_skips_a_number() -> None:
    """A retry publishes exactly retries + 1 (§3.2 G18)."""
    sim = retry_run()

    def bump(e: Event) -> Event:
        if e.kind == "published" and e.message_id == "m2":
            return attrs.evolve(e, details={**e.details, "retries": 2})
        return e

    found = check_g18(edited(sim.history, change=bump), config_from(sim))
    assert [v.guarantee for v in found] == ["G18", "G18"]
    assert (
        "started at 2030-01-01T00:00:02.000Z with retries=1 but its message was published "
        "with retries=2" in found[0].message
    )
    assert (
        "was published at 2030-01-01T00:00:00.000Z with retries=2 while attempt(s) with "
        "retries=0 ran" in found[1].message
    )


def test_g18_fails_a_redelivery_with_another_retries_value() -> None:
    """A redelivered message starts with the retries it was published with (§3.2 G18)."""
    s = Story().online("w1").publish("m1", "t1", retries=1).deliver("m1")
    assert check_g18(s.run_ok("m1", retries=1).history, AMQP) == []
    s = Story().online("w1").publish("m1", "t1", retries=1).deliver("m1")
    s.run_ok("m1", retries=0)
    assert "a redelivery keeps the retries value" in only(check_g18(s.history, AMQP), "G18").message
