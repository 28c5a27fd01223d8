"""Tests for simq.contrib_pytest: celery.contrib.pytest's fixtures on simq's worker.

Each test writes a small suite that uses Celery's fixtures only and runs it with pytester.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest

pytest_plugins = ("celery.contrib.pytest",)
"""

WHICH = """
def fixture_module(request, name):
    return request._fixturemanager.getfixturedefs(name, request.node)[-1].func.__module__
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)


def test_without_the_option_celerys_fixtures_are_used(pytester: pytest.Pytester) -> None:
    """No --simq-worker: celery_app and celery_worker are celery.contrib.pytest's."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        WHICH
        + """
def test_celery(request, celery_app):
    assert fixture_module(request, "celery_app") == "celery.contrib.pytest"
    assert fixture_module(request, "celery_worker") == "celery.contrib.pytest"
    assert celery_app.conf.broker_url == "memory://"
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert "simulated worker" not in result.stdout.str()


@pytest.mark.parametrize(
    "how",
    [
        ["--simq-worker"],
        ["-o", "simq_worker=true"],
        ["--simq-worker", "-p", "celery.contrib.pytest"],
    ],
    ids=["option", "ini", "option-and-p"],
)
def test_the_option_replaces_every_fixture(pytester: pytest.Pytester, how: list[str]) -> None:
    """With the option or ini setting, every fixture of Celery's plugin is simq's."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        WHICH
        + """
NAMES = [
    "celery_app", "celery_worker", "celery_session_app", "celery_session_worker",
    "celery_config", "celery_includes", "celery_parameters", "celery_worker_parameters",
    "celery_worker_pool", "celery_enable_logging", "use_celery_app_trap",
    "celery_class_tasks", "depends_on_current_app",
]

def test_fixtures(request, celery_worker, celery_config, celery_includes,
                  celery_parameters, celery_worker_parameters, celery_worker_pool,
                  celery_enable_logging, use_celery_app_trap, celery_class_tasks):
    for name in NAMES:
        assert fixture_module(request, name) == "simq.contrib_pytest", name
    assert type(celery_worker).__name__ == "SimulatedWorker"
"""
    )
    result = run(pytester, *how)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["simq: --simq-worker: celery.contrib.pytest's fixtures run*"])


def test_get_drives_virtual_time(pytester: pytest.Pytester) -> None:
    """A task due in a day is done when get(timeout=...) returns, a day later in virtual time."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
import datetime as dt

def test_tomorrow(celery_app, celery_worker):
    @celery_app.task(shared=False)
    def add(x, y):
        return x + y

    celery_worker.reload()
    sent = dt.datetime.now(dt.timezone.utc)
    result = add.apply_async((2, 3), countdown=86400)
    assert result.get(timeout=90000) == 5
    assert dt.datetime.now(dt.timezone.utc) - sent >= dt.timedelta(days=1)
    assert celery_worker.simulation.history.where(kind="succeeded")
"""
    )
    run(pytester, "--simq-worker").assert_outcomes(passed=1)


def test_marker_and_config_are_merged(pytester: pytest.Pytester) -> None:
    """celery_config and the celery marker configure the app, the closest marker winning."""
    pytester.makeconftest(
        CONFTEST
        + """
@pytest.fixture(scope="session")
def celery_config():
    return {"task_default_queue": "orders", "result_extended": False}
"""
    )
    pytester.makepyfile(
        """
import pytest

@pytest.mark.celery(result_extended=True)
def test_marker(celery_app, celery_worker):
    assert celery_app.conf.result_extended is True
    assert celery_app.conf.task_default_queue == "orders"

def test_config_alone(celery_app):
    assert celery_app.conf.result_extended is False
"""
    )
    run(pytester, "--simq-worker").assert_outcomes(passed=2)


def test_session_simulation_survives_function_tests(pytester: pytest.Pytester) -> None:
    """One simulation for the session: a task sent in one test is read in a later one,
    with function-scoped simulations in between."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
import time
from celery import shared_task

SENT = []

@shared_task(name="t.double")
def double(x):
    return 2 * x

def test_1_session_sends(celery_session_app, celery_session_worker):
    SENT.append(double.apply_async((21,), countdown=60))
    SENT.append(celery_session_worker.simulation)

def test_2_function_between(celery_app, celery_worker):
    assert celery_worker.simulation is not SENT[1]
    assert celery_app.tasks["t.double"].delay(4).get(timeout=5) == 8

def test_3_real_time_between():
    assert abs(time.time() - time.perf_counter() - (time.time() - time.perf_counter())) < 5

def test_4_session_reads(celery_session_app, celery_session_worker):
    assert celery_session_worker.simulation is SENT[1]
    assert SENT[0].get(timeout=120) == 42
"""
    )
    run(pytester, "--simq-worker").assert_outcomes(passed=4)


def test_replaced_broker_is_reported_once(pytester: pytest.Pytester) -> None:
    """A celery_config naming Redis: never contacted, said once, modelled as Redis."""
    pytester.makeconftest(
        CONFTEST
        + """
@pytest.fixture(scope="session")
def celery_config():
    return {"broker_url": "redis://127.0.0.1:1/0", "result_backend": "redis://127.0.0.1:1/0"}
"""
    )
    pytester.makepyfile(
        """
def ping(app, worker):
    @app.task(shared=False)
    def pong():
        return "pong"

    worker.reload()
    return pong.delay().get(timeout=5)

def test_one(celery_app, celery_worker):
    assert celery_worker.simulation.transport == "redis"
    assert ping(celery_app, celery_worker) == "pong"

def test_two(celery_app, celery_worker):
    assert ping(celery_app, celery_worker) == "pong"
"""
    )
    result = run(pytester, "--simq-worker")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*SimqReplacedConfig*redis://127.0.0.1:1/0*not contacted*"])
    assert result.stdout.str().count("SimqReplacedConfig:") == 1


def test_a_polling_broker_is_modelled_as_polling(pytester: pytest.Pytester) -> None:
    """A celery_config naming kombu's filesystem or SQLAlchemy transport is simulated with
    the polling model (Simulation(transport="polling")), not RabbitMQ's."""
    pytester.makeconftest(
        CONFTEST
        + """
@pytest.fixture(scope="session")
def celery_config():
    return {"broker_url": "sqla+sqlite:///never.db"}
"""
    )
    pytester.makepyfile(
        """
def test_model(celery_app, celery_worker):
    assert celery_worker.simulation.transport == "polling"
"""
    )
    run(pytester, "--simq-worker").assert_outcomes(passed=1)
    assert not (pytester.path / "never.db").exists()
