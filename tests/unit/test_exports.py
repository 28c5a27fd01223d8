"""Tests for simq's public face: the curated export list, simq's own exceptions, and a
side-effect-free import.

simq runs Celery's own code, so it re-exports none of Celery's names: tasks, signatures,
results, states and Celery's exceptions come from ``celery`` itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
import textwrap

import celery
import celery.exceptions
import pytest

import simq
from simq import exceptions

EXPECTED_ALL = [
    "App", "CrashWorker", "Event", "FaultPlan", "FaultSpace", "History", "KillChild",
    "LoseConnection", "Report", "RestartBroker", "Revoke", "Scenario", "ShutdownWorker",
    "SimqError", "Simulation", "campaign_test", "exceptions", "explore", "invariants",
    "scenario", "shrink",
]  # fmt: skip
EXPECTED_EXCEPTIONS = [
    "InvalidArgument", "InvariantViolated", "NoActiveSimulation", "RunawaySimulation",
    "SimqError", "SimulationIdle", "UnknownTarget",
]  # fmt: skip


def test_all_is_sorted_and_exactly_the_curated_list() -> None:
    """simq.__all__ is sorted and lists exactly the public names."""
    assert simq.__all__ == sorted(simq.__all__)
    assert simq.__all__ == EXPECTED_ALL


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_every_exported_name_is_importable(name: str) -> None:
    """``from simq import <name>`` works for each name in __all__ and gives simq's object."""
    namespace: dict[str, object] = {}
    exec(f"from simq import {name}", namespace)
    assert namespace[name] is getattr(simq, name)


def test_star_import_gives_exactly_all() -> None:
    """``from simq import *`` binds exactly the curated names."""
    namespace: dict[str, object] = {}
    exec("from simq import *", namespace)
    assert sorted(n for n in namespace if n != "__builtins__") == EXPECTED_ALL


def test_exported_objects_are_the_real_ones() -> None:
    """Each export is the object its module defines (no stale copy or alias)."""
    from simq.app import App
    from simq.history import Event, History
    from simq.simulation import Simulation

    assert simq.App is App
    assert simq.Event is Event
    assert simq.History is History
    assert simq.Simulation is Simulation
    assert simq.SimqError is exceptions.SimqError
    assert simq.exceptions is importlib.import_module("simq.exceptions")


def test_public_names_without_underscore_are_exported() -> None:
    """No public class or function defined in simq is left out of __all__."""
    public = {
        name for name, value in vars(simq).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("simq")
    }  # fmt: skip
    assert public <= set(simq.__all__)


def test_app_makes_a_real_celery_app() -> None:
    """simq.App returns a celery.Celery app on the simulated broker and backend."""
    app = simq.App("proj", task_acks_late=True)
    assert isinstance(app, celery.Celery)
    assert app.main == "proj"
    assert app.conf.broker_url == "simq://"
    assert app.conf.result_backend == "simq.seams.backend:Backend"
    assert app.conf.task_acks_late is True


@pytest.mark.parametrize(
    "name", ["AsyncResult", "Celery", "EagerResult", "Signature", "Task", "signature", "states"]
)
def test_celerys_names_are_not_re_exported(name: str) -> None:
    """The re-implemented Celery API is gone from simq: users import it from celery."""
    assert not hasattr(simq, name)
    with pytest.raises(ImportError):
        exec(f"from simq import {name}", {})


@pytest.mark.parametrize(
    "module",
    [
        "simq.task", "simq.canvas", "simq.result", "simq.arguments", "simq.autoretry",
        "simq.routing", "simq.serialization", "simq.config", "simq.runtime", "simq.rates",
        "simq.states", "simq.world.backend",
    ],
)  # fmt: skip
def test_deleted_reimplementation_modules_are_gone(module: str) -> None:
    """The modules of the deleted re-implementation cannot be imported any more."""
    assert importlib.util.find_spec(module) is None


# -- simq.exceptions --------------------------------------------------------------------


def test_exceptions_all_is_sorted_and_exactly_simqs_own() -> None:
    """simq.exceptions exports only simq's own errors, sorted."""
    assert exceptions.__all__ == sorted(exceptions.__all__)
    assert exceptions.__all__ == EXPECTED_EXCEPTIONS


@pytest.mark.parametrize("name", EXPECTED_EXCEPTIONS)
def test_every_exception_is_importable_and_a_simq_error(name: str) -> None:
    """Each exported exception imports by name and derives from SimqError."""
    namespace: dict[str, object] = {}
    exec(f"from simq.exceptions import {name}", namespace)
    cls = namespace[name]
    assert cls is getattr(exceptions, name)
    assert isinstance(cls, type)
    assert issubclass(cls, exceptions.SimqError)
    assert cls.__module__ == "simq.exceptions"


def test_simq_errors_share_one_root_and_their_builtin() -> None:
    """simq's own errors derive from SimqError and the builtin they really are."""
    assert issubclass(exceptions.SimqError, Exception)
    assert issubclass(exceptions.NoActiveSimulation, RuntimeError)
    assert issubclass(exceptions.SimulationIdle, RuntimeError)
    assert issubclass(exceptions.RunawaySimulation, RuntimeError)
    assert issubclass(exceptions.UnknownTarget, LookupError)
    assert issubclass(exceptions.InvalidArgument, TypeError)
    assert issubclass(exceptions.InvalidArgument, ValueError)
    with pytest.raises(LookupError):
        raise exceptions.UnknownTarget("no worker named 'w9'")


def test_simq_errors_are_not_celery_errors() -> None:
    """simq's errors are about the simulation, never mistaken for Celery's task errors."""
    for name in EXPECTED_EXCEPTIONS:
        assert not issubclass(getattr(exceptions, name), celery.exceptions.CeleryError), name


@pytest.mark.parametrize(
    "name",
    [
        "Retry", "Reject", "Ignore", "NotRegistered", "MaxRetriesExceededError",
        "TaskRevokedError", "TimeoutError", "QueueNotFound", "SoftTimeLimitExceeded",
        "TimeLimitExceeded", "WorkerLostError", "TaskError",
    ],
)  # fmt: skip
def test_celerys_exceptions_are_not_copied_into_simq(name: str) -> None:
    """Celery's exceptions are used from celery.exceptions; simq.exceptions has no copies."""
    assert hasattr(celery.exceptions, name)
    assert not hasattr(exceptions, name)


# -- importing patches nothing ---------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import datetime, json, os, sys, tempfile, time

    def real_now():
        with tempfile.TemporaryFile() as probe:
            return os.fstat(probe.fileno()).st_mtime

    names = ("time", "time_ns", "sleep", "monotonic", "monotonic_ns")
    originals = {name: getattr(time, name) for name in names}
    datetime_class, date_class = datetime.datetime, datetime.date
    report = {}

    def check(stage):
        report[stage] = {
            "same": [name for name in names if getattr(time, name) is originals[name]],
            "datetime": datetime.datetime is datetime_class and datetime.date is date_class,
            "time_close": abs(time.time() - real_now()) < 5,
            "now_close": abs(datetime.datetime.now().timestamp() - real_now()) < 5,
        }

    import simq
    check("import simq")
    import simq.pytest_plugin
    check("load plugin")
    print(json.dumps(report))
    """
)


def test_importing_simq_and_its_plugin_patches_no_clock() -> None:
    """After import simq and loading simq.pytest_plugin, time and datetime are the originals."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    report = json.loads(done.stdout)
    clocks = ["time", "time_ns", "sleep", "monotonic", "monotonic_ns"]
    for stage in ("import simq", "load plugin"):
        assert report[stage] == {
            "same": clocks, "datetime": True, "time_close": True, "now_close": True,
        }, stage  # fmt: skip


def test_import_simq_needs_neither_pytest_nor_hypothesis() -> None:
    """Test tools are an extra: importing simq (campaigns included) loads neither."""
    import subprocess
    import sys

    code = "import sys, simq; print(sorted({'pytest', 'hypothesis'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
