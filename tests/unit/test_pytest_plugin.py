"""Tests for simq.pytest_plugin: the --simq-seed option, the header, the fixture, the repro line."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

APP = """
import time
import datetime

import simq
from simq.exceptions import NoActiveSimulation

REAL = (time.sleep, time.monotonic, time.time, datetime.datetime)
app = simq.App("plug")


def detached(app):
    # True when app is back on its own: its simulated broker refuses to publish.
    try:
        app.send_task("plug.nothing")
    except NoActiveSimulation:
        return True
    return False


@app.task
def add(x, y):
    return x + y
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest in process; Hypothesis's plugin is left out, as it re-imports slowly."""
    return pytester.runpytest("-p", "no:hypothesispytest", *args)


def test_header_shows_the_default_seed(pytester: pytest.Pytester) -> None:
    """The report header shows seed 0 and the option that changes it."""
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run(pytester)
    result.stdout.fnmatch_lines(["simq: seed=0 (--simq-seed=N to change)"])
    result.assert_outcomes(passed=1)


def test_header_shows_the_given_seed(pytester: pytest.Pytester) -> None:
    """--simq-seed=N appears in the report header."""
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run(pytester, "--simq-seed=31")
    result.stdout.fnmatch_lines(["simq: seed=31 (--simq-seed=N to change)"])
    result.assert_outcomes(passed=1)


def test_option_is_in_a_simq_help_group(pytester: pytest.Pytester) -> None:
    """pytest --help lists --simq-seed under a simq group."""
    result = run(pytester, "--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "simq deterministic simulation:",
            "*--simq-seed=SIMQ_SEED*",
        ]
    )


def test_fixture_gives_an_active_simulation_with_the_option_seed(
    pytester: pytest.Pytester,
) -> None:
    """simulation(app) is an active Simulation seeded from --simq-seed, and runs tasks."""
    pytester.makepyfile(
        APP
        + """
def test_seeded(simulation):
    sim = simulation(app, workers=2)
    assert isinstance(sim, simq.Simulation)
    assert sim.active
    assert app.backend is sim.backend
    assert sim.seed == 17
    assert len(sim.workers) == 2
    assert add.delay(2, 3).get() == 5


def test_seed_can_be_overridden(simulation):
    assert simulation(app, seed=4).seed == 4
"""
    )
    result = run(pytester, "--simq-seed=17")
    result.assert_outcomes(passed=2)


def test_fixture_seed_defaults_to_zero(pytester: pytest.Pytester) -> None:
    """Without --simq-seed the fixture's simulations are seeded with 0."""
    pytester.makepyfile(
        APP
        + """
def test_default(simulation):
    assert simulation(app).seed == 0
"""
    )
    run(pytester).assert_outcomes(passed=1)


def test_fixture_closes_its_simulations_after_the_test(pytester: pytest.Pytester) -> None:
    """After a test, the fixture's simulations are closed and the clock functions restored."""
    pytester.makepyfile(
        APP
        + """
made = []
other = simq.App("other")


def test_uses_two(simulation):
    made.append(simulation(app))
    made[0].close()
    made.append(simulation(other))
    time.sleep(30)
    assert made[1].elapsed == 30


def test_afterwards():
    assert [sim.active for sim in made] == [False, False]
    assert detached(app) and detached(other)
    assert (time.sleep, time.monotonic, time.time, datetime.datetime) == REAL
    assert datetime.datetime.now().year < 2030
"""
    )
    run(pytester, "-p", "no:randomly").assert_outcomes(passed=2)


def test_fixture_closes_a_simulation_when_the_test_fails(pytester: pytest.Pytester) -> None:
    """A test that fails with an active simulation still leaves nothing patched."""
    pytester.makepyfile(
        APP
        + """
def test_fails(simulation):
    simulation(app)
    assert False


def test_afterwards():
    assert detached(app)
    assert (time.sleep, time.monotonic, time.time, datetime.datetime) == REAL
"""
    )
    run(pytester).assert_outcomes(passed=1, failed=1)


def test_failure_prints_the_seed_and_the_repro_line(pytester: pytest.Pytester) -> None:
    """A failing test that used the fixture prints a simq section with its reproduce line."""
    pytester.makepyfile(
        test_repro=APP
        + """
def test_fails(simulation):
    simulation(app)
    assert add.delay(1, 1).get() == 3
"""
    )
    result = run(pytester, "--simq-seed=7")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- simq -*",
            "simulation seed: 7",
            "reproduce with: python -m pytest 'test_repro.py::test_fails' --simq-seed=7",
        ]
    )


def test_repro_line_quotes_a_parametrized_node_id(pytester: pytest.Pytester) -> None:
    """The reproduce line quotes the whole node id, brackets included, with the used seed."""
    pytester.makepyfile(
        test_params=APP
        + """
import pytest


@pytest.mark.parametrize("n", [1, 2])
def test_fails(simulation, n):
    simulation(app, seed=40 + n)
    assert n == 1
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "simulation seed: 42",
            "reproduce with: python -m pytest 'test_params.py::test_fails[[]2[]]' --simq-seed=42",
        ]
    )


def test_no_simq_section_without_the_fixture_or_a_failure(pytester: pytest.Pytester) -> None:
    """Passing tests, and failing tests that made no simulation, print no simq section."""
    pytester.makepyfile(
        APP
        + """
def test_passes(simulation):
    simulation(app)


def test_fails_without_simulation():
    assert False
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.no_fnmatch_line("*simulation seed*")
    result.stdout.no_fnmatch_line("*- simq -*")


def test_loading_the_plugin_patches_nothing(pytester: pytest.Pytester) -> None:
    """In a fresh pytest process the entry-point plugin is loaded and no clock is patched."""
    pytester.makepyfile("""
import datetime
import os
import tempfile
import time
import types


def test_clean(request):
    assert request.config.pluginmanager.has_plugin("simq")
    from simq.engine import vtime

    assert vtime._active is None
    for fn in (time.sleep, time.monotonic, time.monotonic_ns, time.time, time.time_ns):
        assert isinstance(fn, types.BuiltinFunctionType), fn
    assert datetime.datetime.__module__ == "datetime"
    with tempfile.TemporaryFile() as probe:
        kernel_now = os.fstat(probe.fileno()).st_mtime
    assert abs(time.time() - kernel_now) < 60
    assert abs(datetime.datetime.now().timestamp() - kernel_now) < 60
""")
    result = pytester.runpytest_subprocess("-p", "no:hypothesispytest", "--simq-seed=3")
    result.stdout.fnmatch_lines(["simq: seed=3 (--simq-seed=N to change)"])
    result.assert_outcomes(passed=1)
