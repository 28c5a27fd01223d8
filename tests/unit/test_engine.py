"""Tests for simq.engine: the event loop, the seeded random streams and the fibers."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from simq.engine.fibers import SUSPENDED, Fiber, current_fiber
from simq.engine.loop import Loop
from simq.engine.rng import Streams
from simq.exceptions import SimqError

# -- Loop ---------------------------------------------------------------------------------


def drain(loop: Loop) -> None:
    while loop.step():
        pass


def test_loop_runs_timers_in_time_order() -> None:
    """Timers run in order of their time, whatever order they were scheduled in."""
    loop, ran = Loop(100.0), []
    for when in (105.0, 101.0, 103.0, 102.0):
        loop.call_at(when, ran.append, when)
    drain(loop)
    assert ran == [101.0, 102.0, 103.0, 105.0]
    assert loop.now == 105.0


def test_loop_breaks_ties_first_in_first_out() -> None:
    """Timers due at the same time run in the order they were scheduled."""
    loop, ran = Loop(0.0), []
    for label in "abcdefgh":
        loop.call_at(5.0, ran.append, label)
    loop.call_at(1.0, ran.append, "first")
    drain(loop)
    assert ran == ["first", *"abcdefgh"]


def test_call_soon_runs_after_what_is_already_due_now() -> None:
    """A timer scheduled now from inside a callback runs after the timers already due."""
    loop, ran = Loop(0.0), []

    def first() -> None:
        ran.append("first")
        loop.call_soon(ran.append, "soon")

    loop.call_at(0.0, first)
    loop.call_at(0.0, ran.append, "second")
    loop.call_later(0.0, ran.append, "third")
    drain(loop)
    assert ran == ["first", "second", "third", "soon"]


def test_call_later_is_relative_and_never_in_the_past() -> None:
    """call_later adds to now; a negative delay or a past time runs at now, not before."""
    loop, ran = Loop(10.0), []
    loop.call_later(2.5, lambda: ran.append(loop.now))
    loop.call_later(-3.0, lambda: ran.append(loop.now))
    loop.call_at(4.0, lambda: ran.append(loop.now))
    drain(loop)
    assert ran == [10.0, 10.0, 12.5]


def test_cancelled_timers_are_skipped() -> None:
    """A cancelled timer never runs and is not counted or reported as next."""
    loop, ran = Loop(0.0), []
    early = loop.call_at(1.0, ran.append, "early")
    loop.call_at(2.0, ran.append, "kept")
    late = loop.call_at(3.0, ran.append, "late")
    assert len(loop) == 3
    early.cancel()
    late.cancel()
    assert early.cancelled and late.cancelled
    assert len(loop) == 1
    assert loop.next_time() == 2.0
    drain(loop)
    assert ran == ["kept"]
    assert loop.now == 2.0


def test_a_timer_cancelled_by_an_earlier_one_does_not_run() -> None:
    """A callback can cancel a timer due at the same time, and it is skipped."""
    loop, ran = Loop(0.0), []
    victim = loop.call_at(1.0, ran.append, "victim")
    loop.call_at(1.0, ran.append, "other")
    loop.call_at(0.5, victim.cancel)
    drain(loop)
    assert ran == ["other"]


def test_step_on_an_empty_loop_returns_false() -> None:
    """step() returns False and leaves the clock alone when nothing is scheduled."""
    loop = Loop(7.0)
    assert loop.step() is False
    assert loop.next_time() is None
    assert loop.now == 7.0
    loop.call_at(8.0, lambda: None).cancel()
    assert loop.step() is False
    assert loop.now == 7.0


def test_advance_to_moves_the_clock_and_notifies() -> None:
    """advance_to moves the clock forward and calls on_advance only when it moved."""
    loop, seen = Loop(1.0), []
    loop.on_advance = lambda: seen.append(loop.now)
    loop.advance_to(1.0)
    loop.advance_to(4.0)
    loop.call_at(6.0, lambda: None)
    loop.step()
    assert seen == [4.0, 6.0]


def test_advance_to_backwards_raises() -> None:
    """Moving the clock backwards raises SimqError naming both times."""
    loop = Loop(10.0)
    with pytest.raises(SimqError, match=r"^time can't go backwards: now=10\.0, asked for 9\.5$"):
        loop.advance_to(9.5)
    assert loop.now == 10.0


# -- Streams ------------------------------------------------------------------------------


def draws(rng: random.Random, n: int = 5) -> list[int]:
    return [rng.getrandbits(64) for _ in range(n)]


def test_same_seed_and_name_give_the_same_sequence() -> None:
    """Two Streams with one seed draw identical sequences from a stream of one name."""
    assert draws(Streams(42).stream("jitter")) == draws(Streams(42).stream("jitter"))
    assert Streams(42).stream("jitter") is not Streams(42).stream("jitter")


def test_a_stream_is_created_once_per_name() -> None:
    """stream(name) returns the same generator each time, continuing its sequence."""
    streams = Streams(1)
    assert streams.stream("a") is streams.stream("a")
    reference = draws(Streams(1).stream("a"), 4)
    assert draws(streams.stream("a"), 2) + draws(streams.stream("a"), 2) == reference


def test_different_seeds_or_names_give_different_sequences() -> None:
    """Another seed or another name gives another sequence."""
    base = draws(Streams(42).stream("jitter"))
    assert draws(Streams(43).stream("jitter")) != base
    assert draws(Streams(42).stream("task_ids")) != base


def test_streams_are_independent() -> None:
    """Drawing from one stream never changes what another draws."""
    quiet = Streams(9)
    busy = Streams(9)
    draws(busy.stream("other"), 100)
    assert draws(busy.stream("mine")) == draws(quiet.stream("mine"))


def test_adding_a_stream_does_not_change_existing_ones() -> None:
    """A stream created first or after others, or never, draws the same sequence."""
    alone = Streams(5)
    expected = draws(alone.stream("retry_jitter"))
    crowded = Streams(5)
    for name in ("faults", "task_ids", "network", "zzz"):
        crowded.stream(name).random()
    assert draws(crowded.stream("retry_jitter")) == expected


def test_uuid_is_version_4_and_deterministic() -> None:
    """Streams.uuid gives RFC 4122 version-4 UUID strings, the same for the same seed."""
    ids = [Streams(3).uuid() for _ in range(2)]
    assert ids[0] == ids[1]
    one = Streams(3)
    many = [one.uuid() for _ in range(50)]
    assert len(set(many)) == 50
    for text in many:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    assert Streams(3).uuid("task_ids") == many[0]
    assert Streams(3).uuid("other") != many[0]


def test_streams_leave_global_random_alone() -> None:
    """Creating and drawing from streams does not touch the global random module."""
    state = random.getstate()
    streams = Streams(11)
    draws(streams.stream("x"), 1000)
    streams.uuid()
    assert random.getstate() == state


# -- Fibers -------------------------------------------------------------------------------


def test_a_job_that_does_not_suspend_returns_its_result() -> None:
    """run(job) returns the job's result and leaves the fiber idle."""
    fiber = Fiber("f")
    assert fiber.run(lambda: 41 + 1) == 42
    assert not fiber.busy
    assert not fiber.suspended


def test_a_suspended_job_resumes_with_a_value() -> None:
    """suspend() returns SUSPENDED to the engine; resume(v) makes suspend() return v."""
    fiber = Fiber("f")
    log: list[Any] = []

    def job() -> str:
        log.append("start")
        log.append(fiber.suspend())
        log.append(fiber.suspend())
        return "end"

    assert fiber.run(job) is SUSPENDED
    assert fiber.busy and fiber.suspended
    assert log == ["start"]
    assert fiber.resume("one") is SUSPENDED
    assert fiber.resume("two") == "end"
    assert log == ["start", "one", "two"]
    assert not fiber.busy


def test_throw_raises_at_the_suspension_point() -> None:
    """throw(exc) raises exc where the job suspended; the job may handle it and return."""
    fiber = Fiber("f")

    def job() -> str:
        try:
            fiber.suspend()
        except KeyError as exc:
            return f"caught {exc.args[0]}"
        return "not thrown"

    assert fiber.run(job) is SUSPENDED
    assert fiber.throw(KeyError("limit")) == "caught limit"
    assert not fiber.busy


def test_an_exception_escaping_a_job_reaches_the_engine() -> None:
    """An exception the job does not handle propagates out of throw()."""
    fiber = Fiber("f")
    assert fiber.run(fiber.suspend) is SUSPENDED
    with pytest.raises(ValueError, match=r"^boom$"):
        fiber.throw(ValueError("boom"))


def test_a_fiber_runs_jobs_one_after_another() -> None:
    """After a job ends, the same fiber runs the next one."""
    fiber = Fiber("f")
    assert fiber.run(lambda: 1) == 1
    assert fiber.run(fiber.suspend) is SUSPENDED
    assert fiber.resume(2) == 2
    assert fiber.run(lambda: 3) == 3


def test_current_fiber_is_the_running_one() -> None:
    """current_fiber() is the fiber running the caller, and None outside any fiber."""
    outer, other = Fiber("outer", owner="slot-1"), Fiber("other")
    assert current_fiber() is None
    assert outer.run(current_fiber) is outer
    assert other.run(lambda: current_fiber().name) == "other"  # type: ignore[union-attr]
    assert outer.owner == "slot-1"
    assert current_fiber() is None


def test_interleaved_fibers_keep_their_own_state() -> None:
    """Two suspended fibers resume independently, each where it stopped."""
    a, b = Fiber("a"), Fiber("b")

    def counter(fiber: Fiber) -> int:
        total = 0
        while (step := fiber.suspend()) is not None:
            total += step
        return total

    assert a.run(lambda: counter(a)) is SUSPENDED
    assert b.run(lambda: counter(b)) is SUSPENDED
    a.resume(1)
    b.resume(10)
    a.resume(2)
    assert b.resume(None) == 10
    assert a.resume(None) == 3


def test_abandon_drops_a_suspended_job_without_running_it() -> None:
    """An abandoned job runs no more code, not even finally blocks; the fiber starts afresh."""
    fiber = Fiber("f")
    log: list[str] = []

    def job() -> None:
        try:
            fiber.suspend()
            log.append("resumed")
        finally:
            log.append("finally")

    assert fiber.run(job) is SUSPENDED
    fiber.abandon()
    assert not fiber.busy
    assert fiber.run(lambda: "fresh") == "fresh"
    assert log == []


def test_fiber_repr_names_it_and_its_state() -> None:
    """A fiber's repr shows its name and whether it is busy."""
    fiber = Fiber("worker-1/child-1")
    assert repr(fiber) == "<Fiber worker-1/child-1 idle>"
    fiber.run(fiber.suspend)
    assert repr(fiber) == "<Fiber worker-1/child-1 busy>"
    fiber.resume()
    assert repr(SUSPENDED) == "SUSPENDED"
