"""Exceptions raised by simq, with Celery's names where Celery has one.

The tree::

    Exception
    ├── SimqError                      simq's own errors: misuse, impossible waits
    │   ├── NoActiveSimulation (+RuntimeError)
    │   ├── SimulationIdle (+RuntimeError)
    │   └── UnknownTarget (+LookupError)
    ├── CeleryError
    │   ├── TaskPredicate
    │   │   ├── Retry
    │   │   ├── Reject
    │   │   └── Ignore
    │   ├── TaskError
    │   │   ├── NotRegistered (+KeyError)
    │   │   ├── MaxRetriesExceededError
    │   │   ├── TaskRevokedError
    │   │   ├── TimeoutError
    │   │   └── QueueNotFound (+KeyError)
    │   └── ImproperlyConfigured
    ├── EncodeError (+ValueError)
    ├── DecodeError (+ValueError)
    ├── SoftTimeLimitExceeded
    ├── TimeLimitExceeded
    └── WorkerLostError

The Celery-named classes behave like Celery's: same constructor arguments, same
``str()``, so code that catches ``celery.exceptions.Retry`` patterns ports as is.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

__all__ = [
    "CeleryError",
    "DecodeError",
    "EncodeError",
    "Ignore",
    "ImproperlyConfigured",
    "MaxRetriesExceededError",
    "NoActiveSimulation",
    "NotRegistered",
    "QueueNotFound",
    "Reject",
    "Retry",
    "SimqError",
    "SimulationIdle",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskPredicate",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "UnknownTarget",
    "WorkerLostError",
]


class SimqError(Exception):
    """Root of simq's own errors: each says what went wrong, why, and how to fix it."""


class NoActiveSimulation(SimqError, RuntimeError):
    """A call needed an active simulation (for example ``task.delay()``) and none was active."""


class SimulationIdle(SimqError, RuntimeError):
    """A wait can never finish: the simulation has nothing left to do."""


class UnknownTarget(SimqError, LookupError):
    """A fault or query named a worker, task or queue that does not exist."""


class CeleryError(Exception):
    """Base class of Celery's errors (``celery.exceptions.CeleryError``)."""


class TaskPredicate(CeleryError):
    """Base class of the exceptions that steer what the worker does with a task."""


class Retry(TaskPredicate):
    """The task is to be retried; raised by ``Task.retry()``.

    Args:
        message: Reason text, or ``None``.
        exc: The exception that caused the retry, if any.
        when: Seconds (countdown) or a datetime (eta) of the retry.
        is_eager: Whether the retry was raised under ``apply()``.
        sig: The signature of the retry message.
    """

    message: str | None
    exc: BaseException | None
    when: float | _dt.datetime | None

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | str | None = None,
        when: float | _dt.datetime | None = None,
        is_eager: bool = False,
        sig: Any = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        self.excs: str | None
        if isinstance(exc, str):
            self.exc, self.excs = None, exc
        else:
            self.exc = exc
            self.excs = repr(exc) if exc is not None else None
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        super().__init__(self, exc, when, **kwargs)

    def humanize(self) -> str:
        if isinstance(self.when, (int, float)):
            return f"in {self.when}s"
        return f"at {self.when}"

    def __str__(self) -> str:
        if self.message:
            return self.message
        if self.excs:
            return f"Retry {self.humanize()}: {self.excs}"
        return f"Retry {self.humanize()}"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.message, self.exc, self.when)


class Ignore(TaskPredicate):
    """The worker is to ignore the task: ack the message and store no state."""


class Reject(TaskPredicate):
    """The worker is to reject the message, requeuing it if ``requeue`` (needs acks_late)."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __repr__(self) -> str:
        return f"reject requeue={self.requeue}: {self.reason}"


class TaskError(CeleryError):
    """Task related errors."""


class NotRegistered(KeyError, TaskError):
    """The task name is not in the app's registry."""

    def __repr__(self) -> str:
        name = self.args[0] if self.args else None
        return f"Task of kind {name!r} never registered, please make sure it's imported."


class MaxRetriesExceededError(TaskError):
    """``retry()`` was called after the task's ``max_retries``; carries the call's arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.task_args = kwargs.pop("task_args", [])
        self.task_kwargs = kwargs.pop("task_kwargs", {})
        super().__init__(*args, **kwargs)


class TaskRevokedError(TaskError):
    """The task was revoked ('revoked'), expired ('expired') or terminated ('terminated')."""


class TimeoutError(TaskError):
    """``AsyncResult.get(timeout=...)`` ran out of (virtual) time."""


class ImproperlyConfigured(CeleryError):
    """The configuration is invalid."""


class QueueNotFound(KeyError, TaskError):
    """A task was routed to a queue that is not declared and may not be created."""


class EncodeError(ValueError):
    """Arguments or a result could not be serialized (kombu's ``EncodeError``)."""


class DecodeError(ValueError):
    """A message body could not be deserialized (kombu's ``DecodeError``)."""


class SoftTimeLimitExceeded(Exception):
    """The task's soft time limit was reached; raised inside the task, catchable."""

    def __str__(self) -> str:
        return f"SoftTimeLimitExceeded{self.args}"


class TimeLimitExceeded(Exception):
    """The task's hard time limit was reached; the child running it is killed."""

    def __str__(self) -> str:
        return f"TimeLimitExceeded{self.args}"


class WorkerLostError(Exception):
    """The child process running the task died (``Worker exited prematurely``)."""
