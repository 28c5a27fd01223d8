"""``autoretry_for``: retrying on listed exceptions, with Celery's backoff formula (§4.4)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from simq.exceptions import Retry

if TYPE_CHECKING:
    from simq.task import Task

__all__ = ["backoff_interval", "make_autoretry"]


def make_autoretry(task: Task) -> None:
    """Wrap ``task.run`` to retry on ``autoretry_for`` exceptions (Celery's autoretry.py)."""
    autoretry_for = tuple(task.autoretry_for or ())
    if not autoretry_for or getattr(task, "_orig_run", None) is not None:
        return
    dont_autoretry_for = tuple(task.dont_autoretry_for or ())
    retry_backoff = task.retry_backoff
    retry_backoff_max = int(task.retry_backoff_max)
    retry_jitter = task.retry_jitter
    run = task.run

    def run_with_autoretry(*args: Any, **kwargs: Any) -> Any:
        from simq.exceptions import Ignore

        try:
            return run(*args, **kwargs)
        except Ignore:
            raise
        except Retry:
            raise
        except dont_autoretry_for:
            raise
        except autoretry_for as exc:
            retry_kwargs = dict(task.retry_kwargs or {})
            if retry_backoff:
                retry_kwargs["countdown"] = backoff_interval(
                    factor=int(max(1.0, float(retry_backoff))),
                    retries=task.request.retries,
                    maximum=retry_backoff_max,
                    full_jitter=retry_jitter,
                    rng=task.jitter_random(),
                )
            if hasattr(task, "override_max_retries"):
                retry_kwargs["max_retries"] = task.override_max_retries
            ret = task.retry(exc=exc, **retry_kwargs)
            raise ret from None

    task._orig_run = run  # type: ignore[attr-defined]
    task.run = run_with_autoretry  # type: ignore[method-assign]


def backoff_interval(
    factor: int, retries: int, maximum: int, full_jitter: bool, rng: random.Random
) -> int:
    """Celery's ``get_exponential_backoff_interval``: ``min(max, factor*2**n)``, jittered."""
    countdown: int = min(maximum, factor * (2**retries))
    if full_jitter:
        countdown = rng.randrange(countdown + 1)
    return max(0, countdown)
