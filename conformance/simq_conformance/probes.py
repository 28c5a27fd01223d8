"""The probe tasks: small tasks whose every behaviour the suite knows in advance.

:func:`register_probes` defines them, as ``probes.<name>``, on a ``celery.Celery`` app
with the same code, whether it runs on simq's simulation or on a real deployment, so
one workload means the same thing on both::

    probes = register_probes(app)
    probes["fail_n"].apply_async(("k1", 2, "done"))   # fails twice, then returns "done"

Probes that act on their first runs (``fail_n``, ``retry``, ``die``, ``reject``) count
the executions of a call by its ``key``. The count must survive process boundaries (a
retry or redelivery may run in another pool child or another worker), so it lives in
the run's sink directory: each execution appends one line to
``<sink>/attempts/<key>`` and reads back its own position. The directory is
``app.conf.simq_conformance_sink`` if set, else the ``SIMQ_CONFORMANCE_SINK``
environment variable; without either (a simulator run in one process) the counts live
in memory on the app and :func:`reset_attempts` clears them between runs.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["SINK_ENV", "SINK_SETTING", "attempt", "register_probes", "reset_attempts"]

#: ``app.conf`` setting naming the sink directory (wins over the environment).
SINK_SETTING = "simq_conformance_sink"
#: Environment variable naming the sink directory (for worker processes).
SINK_ENV = "SIMQ_CONFORMANCE_SINK"

#: Countdown of ``fail_n``'s automatic retries, in seconds.
FAIL_N_COUNTDOWN = 0.2

_MEMORY_ATTR = "_simq_conformance_attempts"


def _sink_dir(app: Any) -> Path | None:
    conf = app.conf
    try:
        configured = conf.get(SINK_SETTING)
    except (KeyError, AttributeError):  # pragma: no cover - conf without get()
        configured = None
    value = configured or os.environ.get(SINK_ENV)
    return Path(value) if value else None


def attempt(app: Any, key: str) -> int:
    """Count one more execution of the call named ``key``; return its number (from 1)."""
    directory = _sink_dir(app)
    if directory is None:
        counts: dict[str, int] = app.__dict__.setdefault(_MEMORY_ATTR, {})
        counts[key] = counts.get(key, 0) + 1
        return counts[key]
    folder = directory / "attempts"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / quote(key, safe="")
    token = f"{os.getpid()}-{uuid.uuid4().hex}\n".encode()
    # One O_APPEND write per execution is atomic, so reading back our own line's
    # position gives each execution a distinct number even when several race.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, token)
    finally:
        os.close(fd)
    lines = path.read_bytes().splitlines(keepends=True)
    return lines.index(token) + 1


def reset_attempts(app: Any) -> None:
    """Forget the in-memory execution counts (runs with a sink directory need nothing)."""
    app.__dict__.pop(_MEMORY_ATTR, None)


def register_probes(app: Any) -> dict[str, Any]:
    """Define the probes of :data:`simq_conformance.PROBES` on ``app``; return them by name.

    Calling it again on the same app returns the tasks already registered.
    """
    from simq_conformance.adapter import PROBES

    names = [f"probes.{probe}" for probe in PROBES]
    tasks = app.tasks
    if all(name in tasks for name in names):
        return {probe: tasks[f"probes.{probe}"] for probe in PROBES}
    from celery.exceptions import Ignore, Reject

    # shared=False: a Celery shared task would be added to every app created later.
    options: dict[str, Any] = {"shared": False, "lazy": False}

    @app.task(name="probes.ret", **options)
    def ret(value: Any) -> Any:
        return value

    @app.task(
        name="probes.fail_n",
        bind=True,
        autoretry_for=(ValueError,),
        retry_kwargs={"countdown": FAIL_N_COUNTDOWN},
        **options,
    )
    def fail_n(self: Any, key: str, n: int, value: Any) -> Any:
        # Celery's autoretry reads override_max_retries for this attempt: n + 1 keeps
        # the n planned failures from exhausting the retries.
        self.override_max_retries = n + 1
        number = attempt(app, key)
        if number <= n:
            raise ValueError(f"fail_n {key!r}: failing attempt {number} of {n}")
        return value

    @app.task(name="probes.retry", bind=True, **options)
    def retry(self: Any, key: str, times: int, countdown: float) -> str:
        number = attempt(app, key)
        if number <= times:
            raise self.retry(countdown=countdown, max_retries=times + 1)
        return "ok"

    @app.task(name="probes.sleep", **options)
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="probes.die", **options)
    def die(key: str, times: int) -> str:
        if attempt(app, key) <= times:
            # The pool child ends here without cleanup, as with a segfault or the OOM
            # killer; simq turns os._exit inside a task into a dead child too.
            os._exit(1)
        return "ok"

    @app.task(name="probes.exceed", **options)
    def exceed(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="probes.reject", **options)
    def reject(key: str, times: int, requeue: bool) -> str:
        number = attempt(app, key)
        if number <= times:
            raise Reject(f"reject {key!r}: attempt {number} of {times}", requeue=requeue)
        return "ok"

    @app.task(name="probes.ignore", **options)
    def ignore() -> None:
        raise Ignore()

    @app.task(name="probes.fail", **options)
    def fail(message: str) -> None:
        raise ValueError(message)

    defined = {
        "ret": ret,
        "fail_n": fail_n,
        "retry": retry,
        "sleep": sleep,
        "die": die,
        "exceed": exceed,
        "reject": reject,
        "ignore": ignore,
        "fail": fail,
    }
    return {probe: defined[probe] for probe in PROBES}
