"""Tests for simq's public face: the export list, Celery's names, and a side-effect-free import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import celery.exceptions
import celery.states
import pytest

import simq
from simq import exceptions, states

EXPECTED_ALL = [
    "App",
    "AsyncResult",
    "Celery",
    "EagerResult",
    "Event",
    "History",
    "Signature",
    "SimqError",
    "Simulation",
    "Task",
    "exceptions",
    "signature",
    "states",
]


def test_all_is_sorted_and_complete() -> None:
    """simq.__all__ is sorted and lists exactly the public names."""
    assert simq.__all__ == sorted(simq.__all__)
    assert simq.__all__ == EXPECTED_ALL


def test_every_exported_name_exists() -> None:
    """Each name in __all__ is an attribute of simq."""
    for name in simq.__all__:
        assert getattr(simq, name) is not None, name


def test_public_names_without_underscore_are_exported() -> None:
    """No public class or function defined in simq is left out of __all__."""
    public = {
        name for name, value in vars(simq).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("simq")
    }  # fmt: skip
    assert public <= set(simq.__all__)


# -- Celery's names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["READY_STATES", "UNREADY_STATES", "EXCEPTION_STATES", "PROPAGATE_STATES", "ALL_STATES"],
)
def test_state_sets_equal_celerys(name: str) -> None:
    """simq.states' state sets equal celery.states' (§2.1)."""
    assert getattr(states, name) == getattr(celery.states, name)


@pytest.mark.parametrize(
    "name",
    [
        "PENDING",
        "RECEIVED",
        "STARTED",
        "SUCCESS",
        "FAILURE",
        "REVOKED",
        "REJECTED",
        "RETRY",
        "IGNORED",
    ],
)
def test_state_names_equal_celerys(name: str) -> None:
    """Each state constant has Celery's value."""
    assert getattr(states, name) == getattr(celery.states, name)


def test_state_precedence_follows_celery() -> None:
    """precedence() ranks states as celery.states.precedence does, custom states included."""
    names = [
        "SUCCESS",
        "FAILURE",
        "PROGRESS",
        "REVOKED",
        "STARTED",
        "RECEIVED",
        "REJECTED",
        "RETRY",
        "PENDING",
    ]
    for name in names:
        assert states.precedence(name) == celery.states.precedence(name), name


CELERY_EXCEPTION_NAMES = [
    "CeleryError", "TaskPredicate", "Retry", "Reject", "Ignore", "TaskError",
    "NotRegistered", "MaxRetriesExceededError", "TaskRevokedError", "TimeoutError",
    "ImproperlyConfigured", "QueueNotFound", "SoftTimeLimitExceeded", "TimeLimitExceeded",
    "WorkerLostError",
]  # fmt: skip


@pytest.mark.parametrize("name", CELERY_EXCEPTION_NAMES)
def test_exceptions_keep_celerys_names(name: str) -> None:
    """simq.exceptions has each of Celery's exception names, with Celery's base classes."""
    ours = getattr(exceptions, name)
    theirs = getattr(celery.exceptions, name)
    assert issubclass(ours, BaseException)
    for base in theirs.__mro__[1:]:
        if base.__module__ == "builtins" and base is not object:
            assert issubclass(ours, base), (name, base)
        elif hasattr(exceptions, base.__name__):
            assert issubclass(ours, getattr(exceptions, base.__name__)), (name, base)


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("Retry", (), {}),
        ("Retry", ("custom message",), {}),
        ("Retry", (None, ValueError("boom"), 30), {}),
        ("Retry", (None, ValueError("boom")), {"when": 5.5}),
        ("Retry", (None, "text exc", 7), {}),
        ("Reject", ("no",), {}),
        ("Reject", ("no",), {"requeue": True}),
        ("Reject", (), {}),
        ("NotRegistered", ("proj.x",), {}),
        ("MaxRetriesExceededError", ("Can't retry proj.x[1] args:() kwargs:{}",), {}),
        ("MaxRetriesExceededError", ("m",), {"task_args": [1], "task_kwargs": {"k": 2}}),
        ("TaskRevokedError", ("expired",), {}),
        ("SoftTimeLimitExceeded", (), {}),
        ("TimeLimitExceeded", (30,), {}),
        ("WorkerLostError", ("Worker exited prematurely: exitcode 1.",), {}),
    ],
)
def test_exception_str_and_repr_match_celery(name: str, args: tuple, kwargs: dict) -> None:
    """The str() and repr() of Celery-named exceptions equal Celery's for the same arguments."""
    ours = getattr(exceptions, name)(*args, **kwargs)
    theirs = getattr(celery.exceptions, name)(*args, **kwargs)
    assert str(ours) == str(theirs)
    assert repr(ours) == repr(theirs)


def test_max_retries_exceeded_carries_the_call() -> None:
    """MaxRetriesExceededError keeps task_args and task_kwargs, as Celery's does."""
    error = exceptions.MaxRetriesExceededError("m", task_args=[1], task_kwargs={"k": 2})
    assert (error.task_args, error.task_kwargs) == ([1], {"k": 2})


def test_simq_errors_share_one_root() -> None:
    """simq's own errors derive from SimqError and the builtin they really are."""
    assert issubclass(exceptions.NoActiveSimulation, exceptions.SimqError)
    assert issubclass(exceptions.NoActiveSimulation, RuntimeError)
    assert issubclass(exceptions.SimulationIdle, exceptions.SimqError)
    assert issubclass(exceptions.EncodeError, ValueError)
    assert simq.SimqError is exceptions.SimqError


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
