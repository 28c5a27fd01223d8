"""A note on Celery's own calling errors, naming the option that caused them. Internal.

Celery's ``send_task`` refuses some bad ``apply_async`` options with errors that name no
option (``countdown="soon"``: "'<' not supported between instances of 'str' and 'int'").
simq leaves Celery's exception as it is, type and message, as on a real broker, and adds
a note (Python 3.11+, shown under the traceback) saying which option was wrong and what
it takes.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["annotated", "option_problem"]

#: The errors Celery's calling code raises for a malformed option.
_CALLING_ERRORS = (TypeError, ValueError, OverflowError, AttributeError)

#: Seconds a countdown or expires may be: datetime's own range (about 2.7e11 s from now
#: is year 9999, beyond which Celery's timedelta arithmetic overflows).
_MAX_SECONDS = 1e11


def _seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) < _MAX_SECONDS
    )


def _moment(value: Any) -> bool:
    if isinstance(value, dt.datetime):
        return True
    if isinstance(value, str):
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    return False


def option_problem(options: Mapping[str, Any]) -> str | None:
    """What is wrong with the calling options, in words, or None if nothing is seen."""
    problems = []
    countdown = options.get("countdown")
    if countdown is not None and not _seconds(countdown):
        problems.append(f"countdown={countdown!r} must be a finite number of seconds")
    eta = options.get("eta")
    if eta is not None and not _moment(eta):
        problems.append(f"eta={eta!r} must be a datetime (or an ISO 8601 string)")
    expires = options.get("expires")
    if expires is not None and not (_seconds(expires) or _moment(expires)):
        problems.append(
            f"expires={expires!r} must be seconds from now or a datetime (or an ISO 8601 string)"
        )
    headers = options.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        problems.append(f"headers={headers!r} must be a dict")
    queue = options.get("queue")
    if queue is not None and not isinstance(queue, str) and not hasattr(queue, "name"):
        problems.append(f"queue={queue!r} must be a queue name (a str) or a kombu Queue")
    if not problems:
        return None
    return (
        "simq: the apply_async option "
        + "; ".join(problems)
        + ". Celery's own calling code raised the error above, as it would with a real broker."
    )


def annotated(send_task: Callable[..., Any]) -> Callable[..., Any]:
    """``send_task`` whose calling errors carry a note naming the bad option."""

    @functools.wraps(send_task)
    def send(*args: Any, **options: Any) -> Any:
        try:
            return send_task(*args, **options)
        except _CALLING_ERRORS as exc:
            note = option_problem(options)
            if note is not None and hasattr(exc, "add_note"):
                exc.add_note(note)
            raise

    return send
