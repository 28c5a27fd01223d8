"""A drop-in for ``celery.contrib.pytest``: the same fixtures, on simq's simulated worker.

Turned on by ``--simq-worker`` or the ini setting ``simq_worker = true`` (see
:mod:`simq.pytest_plugin`); without either nothing here is loaded. When on, the plugin
unregisters and blocks ``celery.contrib.pytest`` (however it was loaded: ``-p``, a
conftest's ``pytest_plugins``, an entry point) and registers this module instead, so a
suite written against Celery's fixtures runs unchanged:

* ``celery_app`` is a Celery app built as Celery's fixture builds it (``TestApp`` from
  ``celery_config``, ``celery_parameters``, the ``celery`` marker), inside an active
  :class:`~simq.simulation.Simulation` for the test; its broker and backend are the
  simulation's. A ``broker_url`` names the broker simq models (``redis://``: Redis's
  visibility timeout; ``sqs://``: SQS's; else RabbitMQ), and a replaced URL is reported
  once as a :class:`SimqReplacedConfig` warning.
* ``celery_worker`` is a simulated worker on that app; ``AsyncResult.get(timeout=...)``
  drives virtual time.
* ``celery_session_app`` / ``celery_session_worker`` keep one simulation for the
  session. It is active only during the tests that use them (suspended in between, so
  other tests see real time and may use their own simulation).
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from simq import simulation as simulation_module
from simq.simulation import Simulation

__all__ = ["CELERY_PLUGIN", "SimqReplacedConfig", "SimulatedWorker", "enable"]

#: The module name Celery's plugin is registered under (``-p``, ``pytest_plugins``).
CELERY_PLUGIN = "celery.contrib.pytest"

_REPORTED_KEY = pytest.StashKey[set[tuple[str, str]]]()


class SimqReplacedConfig(pytest.PytestWarning):
    """``celery_config`` named a broker or backend that simq's simulation stands in for."""


def enable(config: pytest.Config) -> None:
    """Replace Celery's fixtures with this module's (idempotent)."""
    manager = config.pluginmanager
    this = importlib.import_module(__name__)  # (pytester may have dropped it from sys.modules)
    if manager.is_registered(this):
        return
    for _name, plugin in list(manager.list_name_plugin()):
        if getattr(plugin, "__name__", None) == CELERY_PLUGIN:
            manager.unregister(plugin)
    manager.set_blocked(CELERY_PLUGIN)
    manager.register(this, "simq.contrib_pytest")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "celery(**overrides): override celery configuration for a test case"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return (
        "simq: --simq-worker: celery.contrib.pytest's fixtures run on simq's simulated "
        "worker (broker and backend are the simulation's)"
    )


# -- the simulated worker ---------------------------------------------------------------


class SimulatedWorker:
    """What ``celery_worker`` yields: a simulated worker, shaped like Celery's test worker.

    ``app``, ``hostname`` and ``reload()`` behave as on Celery's ``TestWorkController``
    (the simulated worker looks tasks up in the app's registry at each delivery, so
    ``reload()`` has nothing to do). ``simulation`` is the :class:`Simulation`; ``worker``
    is simq's worker model.
    """

    def __init__(self, simulation: Simulation, worker: Any) -> None:
        self.simulation = simulation
        self.worker = worker
        self.app = simulation.app
        self.hostname = worker.hostname

    def reload(self, modules: Any = None, reload: bool = False, reloader: Any = None) -> None:
        """Like ``WorkController.reload``: import ``modules``; tasks are found anyway."""
        for module in modules or ():
            self.app.loader.import_task_module(module)

    def __repr__(self) -> str:
        return f"<SimulatedWorker {self.hostname} of {self.simulation!r}>"


def _transport(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme.startswith("redis") or scheme.startswith("rediss") or scheme == "sentinel":
        return "redis"
    if scheme.startswith("sqs"):
        return "sqs"
    if scheme in ("filesystem", "sqla", "sqlalchemy") or scheme.startswith("sqla+"):
        return "polling"  # kombu's virtual transports without an event loop
    return "amqp"


def _note_replaced(config: pytest.Config, app: Any) -> None:
    broker = str(app.conf.broker_url or "")
    backend = str(app.conf.result_backend or "")
    if broker in ("", "memory://") and backend in ("", "cache+memory://"):
        return
    seen = config.stash.setdefault(_REPORTED_KEY, set())
    if (broker, backend) in seen:
        return
    seen.add((broker, backend))
    warnings.warn(
        SimqReplacedConfig(
            f"simq --simq-worker: celery_config's broker_url={broker!r} and "
            f"result_backend={backend!r} are not contacted; simq's simulated broker "
            f"(modelled as {_transport(broker)}) and key-value result store stand in for "
            "them. Run without --simq-worker to use them."
        ),
        stacklevel=2,
    )


def _seed(config: pytest.Config) -> int:
    from simq.pytest_plugin import _seed as seed

    return seed(config)


def _marker_overrides(node: Any) -> dict[str, Any]:
    """The closest ``celery(**overrides)`` marker's config, as celery.contrib.pytest reads it."""
    mark = node.get_closest_marker("celery")
    return dict(mark.kwargs) if mark is not None else {}


@contextmanager
def _simulated_app(
    config: pytest.Config,
    celery_config: Mapping[str, Any],
    parameters: Mapping[str, Any],
    overrides: Mapping[str, Any],
    enable_logging: bool,
    use_trap: bool,
) -> Iterator[tuple[Any, Simulation]]:
    from celery.contrib.testing.app import TestApp, setup_default_app

    app = TestApp(
        set_as_current=False,
        enable_logging=enable_logging,
        config=dict(celery_config, **overrides),
        **dict(parameters or {}),
    )
    with setup_default_app(app, use_trap=use_trap):
        _note_replaced(config, app)
        sim = Simulation(
            app, seed=_seed(config), workers=0, transport=_transport(str(app.conf.broker_url))
        )
        sim.start()
        try:
            yield app, sim
        finally:
            sim.close()


def _add_worker(
    sim: Simulation,
    includes: Sequence[str],
    class_tasks: Sequence[Any],
    parameters: Mapping[str, Any],
) -> SimulatedWorker:
    app = sim.app
    for module in includes:
        app.loader.import_task_module(module)
    for class_task in class_tasks:
        app.register_task(class_task)
    queues = parameters.get("queues")
    worker = sim.add_worker(
        concurrency=int(parameters.get("concurrency", 1)),
        queues=[queues] if isinstance(queues, str) else queues,
    )
    return SimulatedWorker(sim, worker)


# -- Celery's configuration fixtures, same names, same defaults -------------------------


@pytest.fixture(scope="session")
def use_celery_app_trap() -> bool:
    """Override to return True: using the current or default app raises."""
    return False


@pytest.fixture(scope="session")
def celery_enable_logging() -> bool:
    """Override to return True: the app sets up logging."""
    return False


@pytest.fixture(scope="session")
def celery_includes() -> Sequence[str]:
    """Override: modules the worker imports as it starts (task modules, signals)."""
    return ()


@pytest.fixture(scope="session")
def celery_worker_pool() -> Any:
    """Override: the pool name. The simulated worker runs child slots whatever it is."""
    return "solo"


@pytest.fixture(scope="session")
def celery_config() -> Mapping[str, Any]:
    """Override: the app's configuration."""
    return {}


@pytest.fixture(scope="session")
def celery_parameters() -> Mapping[str, Any]:
    """Override: keyword arguments for ``Celery(...)``."""
    return {}


@pytest.fixture(scope="session")
def celery_worker_parameters() -> Mapping[str, Any]:
    """Override: ``concurrency`` and ``queues`` are used; the rest has no simulated meaning."""
    return {}


@pytest.fixture(scope="session")
def celery_class_tasks() -> Sequence[Any]:
    """Override: class-based tasks to register on the worker's app."""
    return []


# -- apps and workers ---------------------------------------------------------------------


@pytest.fixture
def celery_app(
    request: pytest.FixtureRequest,
    celery_config: Mapping[str, Any],
    celery_parameters: Mapping[str, Any],
    celery_enable_logging: bool,
    use_celery_app_trap: bool,
) -> Generator[Any]:
    """A Celery app, as Celery's fixture builds it, inside an active simulation."""
    with (
        _SessionSuspended(),
        _simulated_app(
            request.config,
            celery_config,
            celery_parameters,
            _marker_overrides(request.node),
            celery_enable_logging,
            use_celery_app_trap,
        ) as (app, _sim),
    ):
        yield app


@pytest.fixture
def celery_worker(
    request: pytest.FixtureRequest,
    celery_app: Any,
    celery_includes: Sequence[str],
    celery_class_tasks: Sequence[Any],
    celery_worker_pool: Any,
    celery_worker_parameters: Mapping[str, Any],
) -> SimulatedWorker:
    """A simulated worker on ``celery_app``'s simulation."""
    sim = simulation_module._ACTIVE[0]
    assert sim is not None and sim.app is celery_app
    if os.environ.get("NO_WORKER"):
        return SimulatedWorker(sim, _NoWorker())
    return _add_worker(sim, celery_includes, celery_class_tasks, celery_worker_parameters)


class _NoWorker:
    hostname = "no-worker"


#: The session's simulation, while ``celery_session_app`` is set up.
_SESSION: list[Simulation | None] = [None]


class _SessionSuspended:
    """While a function-scoped simulation runs, the session's is suspended."""

    def __enter__(self) -> None:
        sim = _SESSION[0]
        self.resume = sim is not None and sim.active
        if self.resume and sim is not None:
            sim.pause()

    def __exit__(self, *exc_info: object) -> None:
        sim = _SESSION[0]
        if self.resume and sim is not None:
            sim.start()


@pytest.fixture(scope="session")
def celery_session_app(
    request: pytest.FixtureRequest,
    celery_config: Mapping[str, Any],
    celery_parameters: Mapping[str, Any],
    celery_enable_logging: bool,
    use_celery_app_trap: bool,
) -> Generator[Any]:
    """One app and one simulation for the session, active during the tests that use it."""
    with _simulated_app(
        request.config,
        celery_config,
        celery_parameters,
        _marker_overrides(request.node),
        celery_enable_logging,
        use_celery_app_trap,
    ) as (app, sim):
        if not use_celery_app_trap:
            app.set_default()
            app.set_current()
        _SESSION[0] = sim
        try:
            yield app
        finally:
            _SESSION[0] = None
            sim.start()  # resumed, so that close() ends its in-flight tasks


@pytest.fixture(scope="session")
def celery_session_worker(
    celery_session_app: Any,
    celery_includes: Sequence[str],
    celery_class_tasks: Sequence[Any],
    celery_worker_pool: Any,
    celery_worker_parameters: Mapping[str, Any],
) -> SimulatedWorker:
    """One simulated worker for the session, on ``celery_session_app``'s simulation."""
    sim = _SESSION[0]
    assert sim is not None
    if os.environ.get("NO_WORKER"):
        return SimulatedWorker(sim, _NoWorker())
    return _add_worker(sim, celery_includes, celery_class_tasks, celery_worker_parameters)


@pytest.fixture(autouse=True)
def _simq_session_simulation(request: pytest.FixtureRequest) -> Generator[None]:
    """The session's simulation is active only during the tests that use it."""
    if "celery_session_app" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("celery_session_app")
    sim = _SESSION[0]
    if sim is not None:
        sim.start()
    try:
        yield
    finally:
        if sim is not None:
            sim.pause()


@pytest.fixture
def depends_on_current_app(celery_app: Any) -> None:
    """Fixture that sets app as current."""
    celery_app.set_current()
