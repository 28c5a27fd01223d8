"""Around every test: no leaked clock patch, fiber or global random use; no shared tasks."""

from __future__ import annotations

import datetime
import gc
import random
import time
from collections.abc import Iterator

import celery
import celery._state
import greenlet
import pytest

from simq.engine import vtime

#: The running Celery's (major, minor), for expectations that differ between versions.
CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)
_RUNNING = (celery.VERSION.major, celery.VERSION.minor, celery.VERSION.micro)


#: tests/contrib_suite is a user's suite with its own rootdir (pytest.ini, conftest with
#: ``pytest_plugins``): tests/integration/test_contrib_dropin.py runs it in a subprocess.
collect_ignore = ["contrib_suite"]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked ``celery_version(min="5.7", why=...)`` on an older Celery, saying why.

    ``min`` is "major.minor" or "major.minor.micro".
    """
    for marker in item.iter_markers(name="celery_version"):
        minimum = marker.kwargs["min"]
        why = marker.kwargs["why"]
        if _version(minimum) > _RUNNING:
            pytest.skip(f"needs Celery >= {minimum} (running {celery.__version__}): {why}")


@pytest.fixture(autouse=True)
def _unshare_tasks() -> Iterator[None]:
    """Forget the tasks a test registered on every future app.

    ``@app.task`` defaults to ``shared=True``: Celery adds each task to every app
    finalized later in the process, and the first one registered under a name wins, so
    without this a task of an earlier test would run under a later test's task name.
    """
    saved = set(celery._state._on_app_finalizers)
    yield
    celery._state._on_app_finalizers.clear()
    celery._state._on_app_finalizers.update(saved)


@pytest.fixture(autouse=True)
def _simq_sanity() -> Iterator[None]:
    """Fail a test that leaves time patched, runs off the main greenlet or uses global random."""
    random_state = random.getstate()
    thresholds = gc.get_threshold()
    originals = (time.sleep, time.monotonic, datetime.datetime)
    yield
    problems = []
    active = vtime._active
    if active is not None:
        active.stop()
        problems.append("a simulation was left active (virtual time still patched)")
    if (time.sleep, time.monotonic, datetime.datetime) != originals:
        problems.append("time.sleep, time.monotonic or datetime.datetime was not restored")
    if abs(time.time() - datetime.datetime.now().timestamp()) > 60:
        problems.append("time.time() and datetime.now() disagree: a clock patch leaked")
    if greenlet.getcurrent().parent is not None:
        problems.append("the test ended inside a fiber, not on the main greenlet")
    if gc.get_threshold() != thresholds:
        gc.set_threshold(*thresholds)
        problems.append("the garbage collector's thresholds were not restored")
    if random.getstate() != random_state:
        problems.append("the global random module was used (simq must use seeded streams)")
    if problems:
        pytest.fail("simq sanity: " + "; ".join(problems), pytrace=False)
