"""``simq.App``: a real Celery app set up for simulation only.

Example:
    >>> import simq
    >>> app = simq.App("shop", task_acks_late=True)
    >>> type(app).__module__
    'celery.app.base'
"""

from __future__ import annotations

from typing import Any

import celery

from simq import validate

__all__ = ["SIMULATED_BACKEND", "SIMULATED_BROKER", "App"]

#: The broker URL of an app made by :func:`App`: simq's simulated broker (no server).
SIMULATED_BROKER = "simq://"
#: The result backend of an app made by :func:`App`: the simulation's store.
SIMULATED_BACKEND = "simq.seams.backend:Backend"


def App(main: str | None = None, **settings: Any) -> celery.Celery:
    """A ``celery.Celery`` app whose broker and result backend exist only in a simulation.

    Inside ``with simq.Simulation(app):`` it behaves like any Celery app on the
    simulation; outside one, publishing or reading a result raises
    :class:`~simq.exceptions.NoActiveSimulation` instead of reaching for a real broker.

    Args:
        main: The app's main module name, as for ``celery.Celery``.
        **settings: Settings by Celery's names (``task_acks_late=True``, ...); ``broker``
            and ``backend`` are accepted as Celery's constructor takes them.
    """
    if main is not None and not isinstance(main, str):
        # Celery would fail later, naming no setting, as it names the first task.
        raise validate.invalid("App()", "main", "the app's name (a str), or None", main)
    broker = settings.pop("broker", None) or SIMULATED_BROKER
    backend = settings.pop("backend", None) or SIMULATED_BACKEND
    app = celery.Celery(main, broker=broker, backend=backend)
    if settings:
        app.conf.update(settings)
    return app
