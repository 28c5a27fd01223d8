"""The conformance suite's probe tasks, as tinyq runs them.

``simq_conformance.probes`` defines them for Celery; tinyq is not Celery, so it writes
the same behaviours again (``simq_conformance.PROBES`` says what each does) and the
adapter declares which ones it runs. A probe returns what the attempt ended with, and
the worker acts on it as Celery's worker would (the ack table of Celery's docs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["PROBES", "Failed", "Ignored", "Outcome", "Rejected", "Retry", "Returned", "run"]

#: Seconds ``fail_n`` waits before each automatic retry (as simq_conformance's probe).
FAIL_N_COUNTDOWN = 0.2


@attrs.frozen
class Returned:
    value: Any


@attrs.frozen
class Failed:
    exc_type: str
    message: str


@attrs.frozen
class Retry:
    countdown: float
    cause: Failed | None = None


@attrs.frozen
class Rejected:
    requeue: bool
    message: str


@attrs.frozen
class Ignored:
    pass


Outcome = Returned | Failed | Retry | Rejected | Ignored
Counter = Callable[[str], int]


def _ret(count: Counter, value: Any) -> Outcome:
    return Returned(value)


def _sleep(count: Counter, seconds: float) -> Outcome:
    time.sleep(seconds)
    return Returned(seconds)


def _fail(count: Counter, message: str) -> Outcome:
    return Failed("ValueError", message)


def _fail_n(count: Counter, key: str, n: int, value: Any) -> Outcome:
    number = count(key)
    if number <= n:
        cause = Failed("ValueError", f"fail_n {key!r}: failing attempt {number} of {n}")
        return Retry(FAIL_N_COUNTDOWN, cause)  # Celery's autoretry_for
    return Returned(value)


def _retry(count: Counter, key: str, times: int, countdown: float) -> Outcome:
    return Retry(countdown) if count(key) <= times else Returned("ok")


def _reject(count: Counter, key: str, times: int, requeue: bool) -> Outcome:
    number = count(key)
    if number <= times:
        return Rejected(requeue, f"reject {key!r}: attempt {number} of {times}")
    return Returned("ok")


def _ignore(count: Counter) -> Outcome:
    return Ignored()


_BODIES: dict[str, Callable[..., Outcome]] = {
    "ret": _ret,
    "sleep": _sleep,
    "fail": _fail,
    "fail_n": _fail_n,
    "retry": _retry,
    "reject": _reject,
    "ignore": _ignore,
}
#: The probes tinyq runs (not ``die`` nor ``exceed``: no pool child, no time limits).
PROBES = frozenset(_BODIES)


def run(probe: str, args: list[Any], count: Counter) -> Outcome:
    """Run the probe ``probe`` (a short name: ``"ret"``); ``count`` numbers its runs."""
    return _BODIES[probe](count, *args)
