"""A closed simulation is freed with everything it ran; killed children run nothing more."""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import celery
import greenlet
import pytest

import simq
from simq.engine.fibers import SUSPENDED, Fiber, bury

#: A task argument big enough that keeping one per simulation shows at once.
BLOB = "x" * 100_000


class Tracked:
    """An object a task holds while it runs, to see when it is freed."""


@pytest.fixture(autouse=True)
def _no_log_records() -> Iterator[None]:
    """Keep Celery's error logs out of pytest's capture: the records it keeps for the
    report hold tracebacks into the run, which would keep it alive until the test ends."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _app() -> tuple[celery.Celery, dict[str, Any]]:
    app = celery.Celery("leaks", set_as_current=False)
    seen: dict[str, Any] = {"log": [], "refs": []}

    @app.task(name="leaks.nap", shared=False)
    def nap(blob: str, seconds: float) -> int:
        held = Tracked()
        seen["refs"].append(weakref.ref(held))
        try:
            time.sleep(seconds)
        finally:
            seen["log"].append("finally")
        return len(blob)

    @app.task(name="leaks.limited", shared=False, soft_time_limit=1, time_limit=2)
    def limited(blob: str) -> None:
        try:
            time.sleep(10)
        finally:
            time.sleep(10)  # the soft limit lands here; the hard one kills the child

    @app.task(name="leaks.leave", shared=False)
    def leave() -> None:
        os._exit(3)

    return app, seen


def _plain(sim: simq.Simulation, app: celery.Celery) -> None:
    app.tasks["leaks.nap"].delay(BLOB, 1).get()


def _killed(sim: simq.Simulation, app: celery.Celery) -> None:
    r = app.tasks["leaks.nap"].delay(BLOB, 5)
    sim.kill_child(r.id, at=1)
    sim.run()


def _time_limit(sim: simq.Simulation, app: celery.Celery) -> None:
    app.tasks["leaks.limited"].delay(BLOB)
    sim.run()


def _suspended_at_close(sim: simq.Simulation, app: celery.Celery) -> None:
    app.tasks["leaks.nap"].delay(BLOB, 5)
    sim.advance(1)


def _crash_and_restart(sim: simq.Simulation, app: celery.Celery) -> None:
    app.tasks["leaks.nap"].delay(BLOB, 5)
    app.tasks["leaks.nap"].delay(BLOB, 1)
    sim.crash_worker("worker-1", at=1, restart_after=1)
    sim.run()


def _os_exit(sim: simq.Simulation, app: celery.Celery) -> None:
    app.tasks["leaks.leave"].delay()
    sim.run()


def _terminated(sim: simq.Simulation, app: celery.Celery) -> None:
    r = app.tasks["leaks.nap"].delay(BLOB, 5)
    sim.revoke(r.id, terminate=True, at=1)
    sim.run()


SCENARIOS: dict[str, Callable[[simq.Simulation, celery.Celery], None]] = {
    "plain": _plain,
    "killed": _killed,
    "time-limit": _time_limit,
    "suspended-at-close": _suspended_at_close,
    "crash-and-restart": _crash_and_restart,
    "os-exit": _os_exit,
    "terminated": _terminated,
}


def _one(app: celery.Celery, scenario: str, seed: int = 0) -> weakref.ref[simq.Simulation]:
    with simq.Simulation(app, seed=seed) as sim:
        SCENARIOS[scenario](sim, app)
    return weakref.ref(sim)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_closed_simulation_is_freed_once_dropped(scenario: str) -> None:
    """Nothing outside a closed simulation refers to it: dropped, it is collected."""
    app, seen = _app()
    ref = _one(app, scenario)
    gc.collect()
    assert ref() is None
    assert all(r() is None for r in seen["refs"])  # what its tasks held went with it


def test_memory_is_flat_over_a_thousand_simulations() -> None:
    """A thousand simulations with faults, time limits and 100 KB arguments hold no more
    memory than two hundred did (Python's allocated blocks; ~300 per simulation leaked
    before close freed the fibers)."""
    app, _ = _app()
    kinds = ["plain", "killed", "time-limit", "suspended-at-close"]
    for seed in range(200):
        _one(app, kinds[seed % 4], seed)
    gc.collect()
    at_200 = sys.getallocatedblocks()
    for seed in range(200, 1000):
        _one(app, kinds[seed % 4], seed)
    gc.collect()
    grown = sys.getallocatedblocks() - at_200
    assert grown < 4_000, f"{grown} blocks more after 800 more simulations"


def test_big_arguments_are_not_kept_after_close() -> None:
    """A hundred simulations whose tasks take 100 KB arguments, some killed mid-task,
    leave less than 256 KB behind (tracemalloc)."""
    app, _ = _app()
    kinds = ["plain", "killed", "time-limit", "suspended-at-close"]
    for seed in range(8):
        _one(app, kinds[seed % 4], seed)
    gc.collect()
    tracemalloc.start()
    try:
        for seed in range(100):
            _one(app, kinds[seed % 4], seed)
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < 256_000, f"{kept} bytes kept by 100 simulations"


def test_a_task_suspended_at_close_runs_its_finally_and_with_exits() -> None:
    """Closing the simulation raises GreenletExit where a task sleeps; its cleanup runs."""
    app = celery.Celery("leaks", set_as_current=False)
    log: list[Any] = []

    class Resource:
        def __enter__(self) -> Resource:
            return self

        def __exit__(self, *exc_info: Any) -> None:
            log.append(("exit", exc_info[0]))

    @app.task(shared=False)
    def hold() -> None:
        with Resource():
            try:
                time.sleep(60)
            finally:
                time.sleep(5)  # returns at once: the clock no longer moves
                log.append(("finally", time.time()))

    with simq.Simulation(app) as sim:
        hold.delay()
        sim.advance(1)
        closing_at = sim.now.timestamp()
        assert log == []
    assert log == [("finally", closing_at), ("exit", greenlet.GreenletExit)]


def test_a_killed_child_never_runs_its_finally_block() -> None:
    """A child killed mid-task runs no more of its code: not at the kill, not at close,
    not when the memory is freed; what it held is freed at the kill."""
    app, seen = _app()
    with simq.Simulation(app) as sim:
        r = app.tasks["leaks.nap"].delay(BLOB, 5)
        sim.kill_child(r.id, at=1)
        sim.advance(2)
        gc.collect()
        assert [ref() for ref in seen["refs"]] == [None]  # freed at the kill
        assert sim.history.where(kind="child-lost", task_id=r.id).kinds() == ["child-lost"]
    gc.collect()
    assert seen["log"] == []


def test_a_buried_greenlet_runs_none_of_its_handlers() -> None:
    """bury() unwinds a suspended greenlet without running an except, finally, with exit,
    generator cleanup or finalizer, and leaves tracing and the collector as they were."""
    ran: list[str] = []

    class Exit:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc_info: object) -> None:
            ran.append("__exit__")

    class Finalized:
        def __del__(self) -> None:
            ran.append("__del__")

    def gen() -> Any:
        try:
            yield 1
        finally:
            ran.append("generator finally")

    def child() -> None:
        try:
            with Exit():
                finalized, started = Finalized(), gen()
                next(started)
                try:
                    hub.switch()
                finally:
                    ran.append("finally")
                del finalized, started
        except BaseException:
            ran.append("except")
            hub.switch()
        ran.append("after")

    hub = greenlet.getcurrent()
    glet = greenlet.greenlet(child)
    glet.switch()
    trace = sys.gettrace()
    bury(glet)
    gc.collect()
    assert glet.dead
    assert ran == []
    assert sys.gettrace() is trace
    assert gc.isenabled()


def test_closing_a_fiber_ends_an_idle_child_and_unwinds_a_busy_one() -> None:
    """Fiber.close() ends its greenlet either way; a busy job's finally runs."""
    idle, busy = Fiber("idle"), Fiber("busy")
    log: list[str] = []

    def job() -> None:
        try:
            busy.suspend()
        finally:
            log.append("finally")

    assert idle.run(lambda: 1) == 1
    assert busy.run(job) is SUSPENDED
    idle.close()
    busy.close()
    assert log == ["finally"]
    assert not idle.busy and not busy.busy


def test_a_task_that_ignores_greenlet_exit_cannot_keep_the_simulation_open() -> None:
    """A task looping on time.sleep that swallows GreenletExit is dropped at close, as
    Python drops a generator that ignores GeneratorExit; close() returns."""
    app = celery.Celery("leaks", set_as_current=False)
    naps: list[int] = []

    @app.task(shared=False)
    def stubborn() -> None:
        while True:
            try:
                time.sleep(1)
            except BaseException:  # the misbehaviour under test
                naps.append(1)

    with simq.Simulation(app) as sim:
        stubborn.delay()
        sim.advance(3)
    assert len(naps) == 1  # interrupted once; its later sleeps returned at once
    assert not sim.active


def test_close_inside_a_task_is_refused() -> None:
    """A task cannot end the simulation it runs in; the test's `with` block still does."""
    app = celery.Celery("leaks", set_as_current=False)
    holder: list[simq.Simulation] = []

    @app.task(shared=False)
    def closer() -> None:
        holder[0].close()

    with simq.Simulation(app) as sim:
        holder.append(sim)
        r = closer.delay()
        with pytest.raises(simq.SimqError, match=r"^close\(\) was called inside a task; "):
            r.get()
        assert sim.active
    assert not sim.active
