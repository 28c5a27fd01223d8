"""A user's freezegun block inside a task ends on the virtual clock, never the real one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from typing import Any

import celery
import freezegun

import simq


def _app() -> celery.Celery:
    app = celery.Celery("freezegun", set_as_current=False)

    @app.task(name="freezegun.stamp", shared=False)
    def stamp() -> list[float]:
        with freezegun.freeze_time("2020-01-01"):
            pass
        after = time.monotonic()  # no fiber switch in between
        time.sleep(after % 7)  # a sleep whose length depends on that reading
        return [after, time.monotonic_ns() / 1e9, time.time()]

    return app


def _run(seed: int) -> tuple[list[float], str]:
    app = _app()
    with simq.Simulation(app, seed=seed) as sim:
        values = app.tasks["freezegun.stamp"].delay().get()
        return values, sim.history.to_jsonl()


def test_monotonic_after_a_freezegun_block_is_virtual() -> None:
    """time.monotonic() right after the block reads the virtual clock (100,000 s at the
    simulation's start), and so do the clocks after the sleep it decided."""
    (after, after_ns, wall), _ = _run(0)
    assert after == 100_000.0
    assert after_ns == after + after % 7
    assert wall == simq.simulation.DEFAULT_START.timestamp() + after % 7


def test_the_same_seed_gives_the_same_history_around_freezegun() -> None:
    """Two runs of a task that uses freezegun record byte-identical histories."""
    assert _run(3)[1] == _run(3)[1]


SCRIPT = textwrap.dedent(
    """
    import time
    import celery, simq

    real = time.monotonic
    app = celery.Celery("fresh", set_as_current=False)

    @app.task
    def stamp():
        import freezegun  # first imported inside a task
        with freezegun.freeze_time("2020-01-01"):
            pass
        return time.monotonic()

    with simq.Simulation(app):
        print(stamp.delay().get())
    import freezegun
    with freezegun.freeze_time("2020-01-01"):
        pass
    print(time.monotonic is real)
    with simq.Simulation(app):
        print(stamp.delay().get())
    """
)


def test_freezegun_first_imported_in_a_task_keeps_no_virtual_clock(tmp_path: Any) -> None:
    """freezegun imported inside a simulation takes simq's clocks for the real ones; after
    the simulation they are the real ones again, so later freeze_time blocks and
    simulations work."""
    script = tmp_path / "fresh.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout.split()) == (0, ["100000.0", "True", "100000.0"])
