"""simq's pytest plugin: the ``--simq-seed`` option and the ``simulation`` fixture.

Registered through the ``pytest11`` entry point. Loading it patches nothing: time is
only patched while a simulation the fixture made is active.

A simulation left active after a test keeps the whole process on virtual time, and
every later test with it. After each test's teardown the plugin closes such a
simulation and fails that test (an error at teardown) with where it was started. A
simulation a wider-scoped fixture (module, session) holds across tests is that
fixture's: it is checked when the fixture has been torn down.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable, Generator
from typing import Any

import pytest

from simq import simulation as simulation_module
from simq.campaign import pytest as campaign_pytest
from simq.simulation import Simulation

__all__ = ["SEED_OPTION", "WORKER_INI", "WORKER_OPTION", "simulation"]

SEED_OPTION = "--simq-seed"
#: Turn on the drop-in for celery.contrib.pytest (:mod:`simq.contrib_pytest`).
WORKER_OPTION = "--simq-worker"
WORKER_INI = "simq_worker"
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
    group.addoption(
        WORKER_OPTION,
        action="store_true",
        default=False,
        dest=WORKER_INI,
        help="run celery.contrib.pytest's fixtures (celery_app, celery_worker, ...) on "
        "simq's simulated worker instead of a real one",
    )
    parser.addini(
        WORKER_INI,
        type="bool",
        default=False,
        help=f"as {WORKER_OPTION}: celery.contrib.pytest's fixtures run on simq's worker",
    )
    # Fault campaigns (simq.campaign.pytest): checked in pytest_configure.
    group.addoption(
        campaign_pytest.SEEDS_OPTION,
        action="store",
        default=None,
        dest=campaign_pytest.SEEDS_INI,
        metavar="N",
        help="run every simq campaign over N seeds, overriding each one's own count",
    )
    group.addoption(
        campaign_pytest.SHARD_OPTION,
        action="store",
        default=None,
        dest=campaign_pytest.SHARD_DEST,
        metavar="K/N",
        help="run only the K-th of N slices of every simq campaign's seeds (split across CI jobs)",
    )
    group.addoption(
        campaign_pytest.REPLAY_OPTION,
        action="store",
        default=None,
        dest=campaign_pytest.REPLAY_DEST,
        metavar="JSON",
        help="rerun one run of a simq campaign: the JSON its failure printed",
    )
    parser.addini(
        campaign_pytest.SEEDS_INI,
        type="string",
        default="",
        help=f"as {campaign_pytest.SEEDS_OPTION}: every simq campaign runs this many seeds",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", campaign_pytest.MARKER_HELP)
    campaign_pytest.configure(config)


def worker_enabled(config: pytest.Config) -> bool:
    """Whether ``--simq-worker`` or the ini setting ``simq_worker = true`` is given."""
    namespace = getattr(config, "known_args_namespace", None)
    if bool(getattr(namespace, WORKER_INI, False)) or bool(config.getoption(WORKER_INI, False)):
        return True
    return bool(config.getini(WORKER_INI))


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    # Before conftests load: their ``pytest_plugins = ("celery.contrib.pytest",)`` must
    # find Celery's plugin blocked, and ``-p celery.contrib.pytest`` is undone here.
    if worker_enabled(early_config):
        importlib.import_module("simq.contrib_pytest").enable(early_config)


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


# -- leaked simulations ------------------------------------------------------------------

#: Per simulation started during a setup that also set up wider-scoped fixtures: those
#: fixtures, one of which may own it until it is torn down.
_HELD_BY_KEY = pytest.StashKey["weakref.WeakKeyDictionary[Simulation, list[Any]]"]()


def _active() -> Simulation | None:
    return simulation_module._ACTIVE[0]


def _wider_fixtures(item: pytest.Item) -> list[Any]:
    """The item's fixtures of a scope wider than the test that are set up now."""
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", None) or {}
    return [
        chain[-1]
        for chain in defs.values()
        if chain and chain[-1].scope != "function" and chain[-1].cached_result is not None
    ]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, Any]:
    before = _active()
    wider_before = {id(f) for f in _wider_fixtures(item)}
    try:
        return (yield)
    finally:
        sim = _active()
        if sim is not None and sim is not before:
            opened = [f for f in _wider_fixtures(item) if id(f) not in wider_before]
            if opened:
                held = item.config.stash.setdefault(_HELD_BY_KEY, weakref.WeakKeyDictionary())
                held[sim] = opened


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    try:
        result = yield
    except BaseException:
        _close_leaked(item)
        raise
    message = _close_leaked(item)
    if message:
        pytest.fail(message, pytrace=False)
    return result


def _close_leaked(item: pytest.Item) -> str:
    """Close a simulation still active after ``item``'s teardown; say where it started."""
    sim = _active()
    if sim is None:
        return ""
    held = item.config.stash.get(_HELD_BY_KEY, None)
    owners = held.get(sim) if held is not None else None
    if owners and any(f.cached_result is not None for f in owners):
        return ""  # a module- or session-scoped fixture holds it for later tests
    sim.close()
    return (
        f"simq: a Simulation started at {sim.started_where} was never closed ({sim!r}); "
        "it kept the whole process on virtual time and would have leaked into every later "
        "test. It has been closed now. Use `with simq.Simulation(app) as sim:`, the "
        "`simulation` fixture, or call sim.close() (in a fixture: after its yield)"
    )
