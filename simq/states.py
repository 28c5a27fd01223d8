"""Task states and state sets, with Celery's names and values (``celery.states``)."""

from __future__ import annotations

__all__ = [
    "ALL_STATES",
    "EXCEPTION_STATES",
    "FAILURE",
    "IGNORED",
    "PENDING",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "REJECTED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNREADY_STATES",
    "precedence",
]

#: Waiting for execution, or an unknown id: never written, only read.
PENDING = "PENDING"
#: Received by a worker (events only).
RECEIVED = "RECEIVED"
#: Started by a worker (only with ``track_started``).
STARTED = "STARTED"
#: Succeeded.
SUCCESS = "SUCCESS"
#: Failed.
FAILURE = "FAILURE"
#: Revoked, expired or terminated.
REVOKED = "REVOKED"
#: Rejected (events and eager only).
REJECTED = "REJECTED"
#: Waiting for a retry.
RETRY = "RETRY"
#: Ignored (eager only).
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})

_PRECEDENCE = [SUCCESS, FAILURE, None, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING]


def precedence(state: str) -> int:
    """Celery's precedence index of ``state`` (lower wins); custom states rank as ``None``."""
    try:
        return _PRECEDENCE.index(state)
    except ValueError:
        return _PRECEDENCE.index(None)
