"""simq's pytest plugin: the ``--simq-seed`` option and the ``simulation`` fixture.

Registered through the ``pytest11`` entry point. Loading it patches nothing: time is
only patched while a simulation the fixture made is active.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest

from simq.simulation import Simulation

__all__ = ["SEED_OPTION", "simulation"]

SEED_OPTION = "--simq-seed"
_SEED_DEST = "simq_seed"
_SEEDS_KEY = pytest.StashKey[list[int]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("simq", "simq deterministic simulation")
    group.addoption(
        SEED_OPTION,
        action="store",
        type=int,
        default=None,
        dest=_SEED_DEST,
        help="seed for simulations made by the `simulation` fixture (default: 0)",
    )


def _seed(config: pytest.Config) -> int:
    value = config.getoption(_SEED_DEST)
    return 0 if value is None else int(value)


def pytest_report_header(config: pytest.Config) -> str:
    return f"simq: seed={_seed(config)} ({SEED_OPTION}=N to change)"


@pytest.fixture
def simulation(request: pytest.FixtureRequest) -> Generator[Callable[..., Simulation]]:
    """A factory: ``simulation(app, **options)`` returns an active, seeded Simulation.

    Every simulation it made is closed after the test. ``seed=`` may be passed to
    override the ``--simq-seed`` option for one simulation.
    """
    made: list[Simulation] = []
    seeds = request.node.stash.setdefault(_SEEDS_KEY, [])

    def factory(app: Any, **options: Any) -> Simulation:
        options.setdefault("seed", _seed(request.config))
        sim = Simulation(app, **options)
        seeds.append(sim.seed)
        made.append(sim)
        return sim.start()

    try:
        yield factory
    finally:
        for sim in reversed(made):
            sim.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    seeds = item.stash.get(_SEEDS_KEY, None)
    if seeds and report.failed:
        seed = seeds[0]
        report.sections.append(
            (
                "simq",
                f"simulation seed: {seed}\n"
                f"reproduce with: python -m pytest '{item.nodeid}' {SEED_OPTION}={seed}",
            )
        )
    return report
