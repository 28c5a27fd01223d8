"""Checks for the values users give simq's public API. Internal.

Each check returns the value in the form simq uses (``float`` seconds, ``int`` counts,
``bool`` flags, epoch seconds for an instant) or raises
:class:`~simq.exceptions.InvalidArgument` naming the call, the parameter, the value and
the fix. They run where the value is given, before anything is scheduled or recorded: a
bad value that reached the event loop would fail there, inside an unrelated ``get()``
or ``run()``, and leave the simulation half-changed.

Example:
    >>> seconds("crash_worker()", "restart_after", "5")
    Traceback (most recent call last):
    ...
    simq.exceptions.InvalidArgument: crash_worker(): restart_after must be a number of seconds >= 0, got the string '5'; pass a number, not a string: restart_after=5
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import numbers
import signal as pysignal
from collections.abc import Iterable, Mapping
from typing import Any

from celery.platforms import signals as platform_signals

from simq.exceptions import InvalidArgument

__all__ = [
    "LATEST",
    "app_settings",
    "did_you_mean",
    "durations",
    "flag",
    "instant",
    "invalid",
    "is_real",
    "moment",
    "number_hint",
    "queue_names",
    "seconds",
    "shown",
    "signum",
    "task_ids",
    "timeout",
    "whole",
]

#: The latest virtual time: user code reads the clock as a datetime, whose range ends
#: with the year 9999.
LATEST = dt.datetime.max.replace(tzinfo=dt.timezone.utc).timestamp()


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``word``, else ``""``."""
    close = difflib.get_close_matches(str(word), sorted(set(choices)), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def shown(value: object) -> str:
    """How an error message shows a value: strings say they are strings."""
    if isinstance(value, str):
        return f"the string {value!r}"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    name = type(value).__name__
    if name in text or type(value) in (list, tuple, dict, set):
        return text
    return f"{name} {text}"


def number_hint(name: str, value: object) -> str:
    """For a number written as a string, how to pass it: ``"; pass a number, not a string:
    restart_after=5"``; else ``""``."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    text = str(int(number)) if number.is_integer() else repr(number)
    return f"; pass a number, not a string: {name}={text}"


def invalid(call: str, name: str, expected: str, value: object, fix: str = "") -> InvalidArgument:
    """The error for ``call``'s ``name`` given ``value`` where ``expected`` was needed."""
    fix = fix or number_hint(name, value)
    return InvalidArgument(f"{call}: {name} must be {expected}, got {shown(value)}{fix}")


def is_real(value: object) -> bool:
    """A real number that is not a bool (``True`` is an int in Python)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def seconds(
    call: str,
    name: str,
    value: Any,
    *,
    none: bool = False,
    zero: bool = True,
    fix: str = "",
) -> Any:
    """A finite, non-negative number of seconds as a float (``None`` too if ``none``).

    ``zero=False`` also refuses 0. NaN and infinity are refused: virtual time never
    reaches infinity, and NaN compares false with every time, so a timer at NaN would
    never fire and a deadline of NaN would never pass.
    """
    expected = f"a number of seconds {'>= 0' if zero else '> 0'}"
    if none:
        expected += ", or None"
    if value is None and none:
        return None
    if not is_real(value):
        raise invalid(call, name, expected, value, fix)
    number = float(value)
    if not math.isfinite(number):
        raise invalid(
            call, name, expected, value, fix or "; virtual time only takes finite numbers"
        )
    if number < 0 or (number == 0 and not zero):
        raise invalid(call, name, expected, value, fix)
    return number


def whole(call: str, name: str, value: Any, *, minimum: int = 0, fix: str = "") -> int:
    """An int >= ``minimum`` (bools and floats refused, even 2.0: say 2)."""
    expected = f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if not fix and isinstance(value, float) and value.is_integer():
            fix = f"; pass {name}={int(value)}"
        raise invalid(call, name, expected, value, fix)
    if value < minimum:
        raise invalid(call, name, expected, value, fix)
    return int(value)


def flag(call: str, name: str, value: Any) -> bool:
    """``True`` or ``False`` only: ``"no"`` is a true value in Python."""
    if not isinstance(value, bool):
        raise invalid(call, name, "True or False", value)
    return value


def instant(call: str, name: str, value: Any) -> float:
    """A timezone-aware datetime, as epoch seconds."""
    if not isinstance(value, dt.datetime):
        fix = "; pass e.g. datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)"
        if name == "until":
            fix = "; pass e.g. sim.now + datetime.timedelta(seconds=5), or use sim.advance(5)"
        raise invalid(call, name, "a timezone-aware datetime", value, fix)
    if value.tzinfo is None or value.utcoffset() is None:
        raise invalid(
            call,
            name,
            "a timezone-aware datetime",
            value,
            "; add a timezone, e.g. tzinfo=datetime.timezone.utc",
        )
    return value.timestamp()


def moment(call: str, value: Any, now: float) -> float | None:
    """A fault's ``at``: ``None`` (now), seconds from now, or an aware datetime not in the
    past; returned as epoch seconds (``None`` stays ``None``)."""
    if value is None:
        return None
    expected = "seconds from now (a number >= 0), a timezone-aware datetime, or None"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise invalid(
                call, "at", expected, value, "; add a timezone, e.g. tzinfo=datetime.timezone.utc"
            )
        when = value.timestamp()
        if when < now:
            now_text = dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat()
            raise InvalidArgument(
                f"{call}: at={value.isoformat()} is in the past (virtual time is now "
                f"{now_text}); virtual time only moves forward: pass a later datetime, "
                "seconds from now, or None for now"
            )
        return when
    if not is_real(value) or not math.isfinite(float(value)) or value < 0:
        raise invalid(call, "at", expected, value)
    when = now + float(value)
    if when > LATEST:
        raise InvalidArgument(
            f"{call}: at={value!r} seconds from now is past the end of virtual time "
            "(datetime.max, the year 9999); pass a smaller number of seconds"
        )
    return when


def durations(app: Any, given: Any) -> dict[str, Any]:
    """``Simulation(durations=)``: registered task names to seconds or seeded callables."""
    call = "Simulation()"
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise invalid(call, "durations", "a dict of task name to seconds", given)
    out = dict(given)
    for name, value in out.items():
        if not callable(value) and not (is_real(value) and math.isfinite(value) and value >= 0):
            raise invalid(
                call,
                f"durations[{name!r}]",
                "a number of seconds >= 0 or a callable taking a random.Random",
                value,
            )
    unknown = [name for name in out if name not in app.tasks]
    if unknown:
        # A worker imports the app's task modules as it boots: so does this check.
        app.loader.import_default_modules()
        unknown = [name for name in out if name not in app.tasks]
    if unknown:
        name = unknown[0]
        known = sorted(n for n in app.tasks if not n.startswith("celery."))
        raise InvalidArgument(
            f"{call}: durations[{name!r}] names no task of app {app.main!r}"
            f"{did_you_mean(name, known)} (tasks: {', '.join(known) or 'none'}); "
            "key durations by task name (task.name)"
        )
    return out


def queue_names(call: str, queues: Any) -> list[str]:
    """``queues=`` checked: a non-empty list of queue names (a str would be read as one
    queue per character)."""
    expected = "a non-empty list of queue names"
    if isinstance(queues, str):
        raise invalid(call, "queues", expected, queues, f"; pass queues=[{queues!r}]")
    if not isinstance(queues, Iterable):
        raise invalid(call, "queues", expected, queues)
    names = list(queues)
    if not names or not all(isinstance(q, str) and q for q in names):
        raise invalid(call, "queues", expected, names)
    return names


def task_ids(call: str, task_id: Any) -> list[str]:
    """A task id, or an iterable of them, as a list of ids."""
    expected = "a task id (a str) or a list of task ids"
    if isinstance(task_id, str):
        ids = [task_id]
    elif isinstance(task_id, Iterable) and not isinstance(task_id, bytes | Mapping):
        ids = list(task_id)
    else:
        raise invalid(call, "task_id", expected, task_id, _ID_FIX)
    if not all(isinstance(tid, str) and tid for tid in ids):
        raise invalid(call, "task_id", expected, task_id, _ID_FIX)
    return ids


_ID_FIX = "; pass result.id (an AsyncResult's id), not the result or a number"


def signum(call: str, signal: Any) -> int:
    """``signal=`` as Celery reads it (``"TERM"``, ``"SIGKILL"``, 9), or InvalidArgument."""
    try:
        number = int(platform_signals.signum(signal))
    except (AttributeError, TypeError, ValueError):
        number = 0
    if isinstance(signal, bool) or not 0 < number < pysignal.NSIG:
        names = sorted(s.name[3:] for s in pysignal.Signals if not s.name.startswith("SIG_"))
        raise invalid(
            call,
            "signal",
            "a signal name like 'TERM' or 'KILL', or its number",
            signal,
            did_you_mean(str(signal).upper().removeprefix("SIG"), names),
        )
    return number


def timeout(value: Any) -> float | None:
    """``get(timeout=)``: seconds (negative: time out at once, as Celery does), inf: none."""
    if not is_real(value) or math.isnan(value):
        raise invalid(
            "get()", "timeout", "a number of seconds, or None to wait without limit", value
        )
    return None if value == math.inf else float(value)


def app_settings(call: str, app: Any) -> None:
    """The app's settings that the simulated broker and workers read, each checked the way
    the real broker or worker would refuse it, but here, with the setting's name."""
    conf = app.conf
    # A starting worker hands these to its pool (billiard's Pool(timeout=, soft_timeout=)).
    for setting in ("task_time_limit", "task_soft_time_limit"):
        seconds(call, f"app.conf.{setting}", conf.get(setting), none=True)
    multiplier = conf.get("worker_prefetch_multiplier")
    try:
        int(multiplier)  # what Celery's WorkController does with it
    except (TypeError, ValueError):
        raise invalid(
            call, "app.conf.worker_prefetch_multiplier", "an int >= 0", multiplier
        ) from None
    top = conf.get("task_queue_max_priority")
    if top is not None and (
        isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 255
    ):
        # RabbitMQ's x-max-priority queue argument: an int from 1 to 255.
        raise invalid(
            call, "app.conf.task_queue_max_priority", "an int from 1 to 255, or None", top
        )
    options = conf.get("broker_transport_options")
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise invalid(call, "app.conf.broker_transport_options", "a dict", options)
    timeout = options.get("visibility_timeout")
    if timeout is not None and (not is_real(timeout) or not math.isfinite(timeout)):
        raise invalid(
            call,
            "app.conf.broker_transport_options['visibility_timeout']",
            "a finite number of seconds (kombu's default: 3600 on redis)",
            timeout,
        )
