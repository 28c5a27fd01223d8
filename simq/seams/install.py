"""Install the seams on a Celery app for one simulation, and restore everything after.

Internal. One :class:`Installation` holds every change simq makes while a simulation is
active, applied in order and undone in reverse order, even on error:

* the app: its producer pool and connection pool publish into the simulated broker, its
  result backend is the simulation's store, it is the current app, and each task's
  cached tracer is dropped so that Celery builds one over the simulated backend;
* Celery's process-wide worker state (``celery.worker.state``) starts empty;
* randomness and identity: kombu's ``uuid()`` (task ids, delivery tags, group ids),
  ``uuid.uuid4`` and Celery's retry jitter draw from the seed; the ``origin`` header and
  the tracer's hostname name the simulated node instead of this machine.

After :meth:`Installation.restore` the app and the interpreter are as they were.
"""

from __future__ import annotations

import os
import uuid as uuid_module
from collections.abc import Callable
from typing import Any

import celery._state as celery_state_module
from celery import result as celery_result
from celery.app import amqp as celery_amqp
from celery.app import trace as celery_trace
from celery.utils import time as celery_time
from celery.worker import state as worker_state
from kombu.utils.uuid import uuid as kombu_uuid

from simq.engine.fibers import current_fiber
from simq.exceptions import SimqError
from simq.seams.calling import annotated
from simq.seams.transport import ProducerPool, connect

__all__ = ["Installation"]

_MISSING = object()

#: The process-wide collections of ``celery.worker.state`` that a simulation empties.
_WORKER_STATE = (
    "requests",
    "reserved_requests",
    "active_requests",
    "scheduled_requests",
    "successful_requests",
    "total_count",
    "revoked",
    "revoked_stamps",
)


class Installation:
    """Every change one simulation makes to its app and the interpreter."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.app = sim.app
        self._undo: list[Callable[[], None]] = []
        self.channel: Any = None  # a channel on the simulated broker, for declarations

    # -- install -----------------------------------------------------------------------

    def install(self) -> None:
        """Apply every change; on an error, undo what was applied and re-raise."""
        app = self.app
        if app.conf.task_always_eager:
            raise SimqError(
                f"app {app.main!r} has task_always_eager=True, which would run every call "
                "in the caller and bypass the simulation; set app.conf.task_always_eager = "
                "False for the simulated run"
            )
        try:
            self._install_app()
            self._install_worker_state()
            self._install_join_guard()
            self._install_identity()
        except BaseException:
            self.restore()
            raise

    def _set(self, obj: Any, name: str, value: Any, cached: bool = False) -> None:
        """Set ``obj.name`` to ``value``, remembering how to put the old one back.

        ``cached``: ``name`` is a cached property; only an already computed value is kept.
        """
        old = obj.__dict__.get(name, _MISSING) if hasattr(obj, "__dict__") else _MISSING
        if old is _MISSING and not cached:
            old = getattr(obj, name, _MISSING)

        def undo() -> None:
            if old is _MISSING:
                try:
                    delattr(obj, name)
                except AttributeError:
                    pass
            else:
                setattr(obj, name, old)

        setattr(obj, name, value)
        self._undo.append(undo)

    def _install_app(self) -> None:
        app, sim = self.app, self.sim
        app.finalize(auto=True)
        connection = connect(sim)
        self._undo.append(connection.release)
        producers = ProducerPool(connection)
        self.channel = producers.producer.channel
        self._set(app.amqp, "_producer_pool", producers)
        self._set(app, "send_task", annotated(app.send_task), cached=True)
        # Celery 5.5 builds the (disabled) task-sent event dispatcher on the configured
        # broker's connection: give it the simulated one.
        dispatcher = app.events.Dispatcher(connection, enabled=False)
        self._set(app.amqp, "_event_dispatcher", dispatcher, cached=True)
        # Celery builds its task sender once per app, over the dispatcher of the moment:
        # one built here must not outlive the simulation (it would keep it reachable).
        self._set(app.amqp, "send_task_message", app.amqp._create_task_sender(), cached=True)
        pool = connection.Pool(limit=app.conf.broker_pool_limit or 10)
        self._undo.append(pool.force_close_all)
        self._set(app, "_pool", pool)
        backend = sim.backend
        self._set(app, "_backend_cache", None)
        # The app's thread-local caches (backend, oid) go back exactly as they were.
        local = app._local.__dict__
        saved_local = dict(local)

        def restore_local() -> None:
            local.clear()
            local.update(saved_local)

        self._undo.append(restore_local)
        app._local.backend = backend
        self._set(celery_state_module._tls, "current_app", app)
        self._forget_tracers()
        self._undo.append(self._forget_tracers)

    def _forget_tracers(self) -> None:
        # build_tracer captures the backend and hostname: a tracer built outside must not
        # run inside, nor one built inside outside.
        for task in self.app.tasks.values():
            if task.__dict__.get("__trace__") is not None:
                task.__trace__ = None

    def _install_worker_state(self) -> None:
        saved = {}
        for name in _WORKER_STATE:
            obj = getattr(worker_state, name, None)  # scheduled_requests is 5.6+
            if obj is None:
                continue
            saved[name] = list(obj.items()) if hasattr(obj, "items") else list(obj)
        saved_all = list(worker_state.all_total_count)

        def restore() -> None:
            worker_state.reset_state()
            for name, items in saved.items():
                obj = getattr(worker_state, name)
                if isinstance(obj, dict):
                    obj.update(items)
                elif hasattr(obj, "update"):
                    obj.update(dict(items) if hasattr(obj, "items") else items)
                else:
                    for item in items:
                        obj.add(item)
            worker_state.all_total_count[:] = saved_all

        worker_state.reset_state()
        self._undo.append(restore)

    def _install_join_guard(self) -> None:
        # A prefork child sets task_join_will_block (prefork.py process_initializer), so
        # result.get() inside a task raises RuntimeError(E_WOULDBLOCK) unless wrapped in
        # allow_join_result(). Here the children are fibers: the flag is per fiber (True
        # by default), while test code on the main greenlet keeps the process-wide flag.
        blocks: dict[Any, bool] = {}

        def task_join_will_block() -> bool:
            fiber = current_fiber()
            if fiber is None:
                return bool(celery_state_module._task_join_will_block)
            return blocks.get(fiber, True)

        def set_task_join_will_block(value: bool) -> None:
            fiber = current_fiber()
            if fiber is None:
                celery_state_module._task_join_will_block = value
            else:
                blocks[fiber] = bool(value)

        for module in (celery_state_module, celery_result):
            self._set(module, "task_join_will_block", task_join_will_block)
            self._set(module, "_set_task_join_will_block", set_task_join_will_block)
        self._undo.append(blocks.clear)

    def _install_identity(self) -> None:
        sim = self.sim

        def seeded_uuid4() -> uuid_module.UUID:
            return uuid_module.UUID(sim.streams.uuid("uuids"))

        def node_hostname() -> str:
            fiber = current_fiber()
            worker = getattr(getattr(fiber, "owner", None), "worker", None)
            return str(worker.hostname) if worker is not None else "simq"

        real_getpid = os.getpid

        def child_getpid() -> int:
            # Inside a task, the simulated child's pid; elsewhere this process's.
            slot = getattr(current_fiber(), "owner", None)
            pid = getattr(slot, "pid", None)
            return int(pid) if pid is not None else real_getpid()

        real_kill = os.kill

        def child_kill(pid: int, sig: int) -> None:
            # A simulated pid (a task's own os.getpid()) names a simulated child, never a
            # real process: its signal kills that child; a pid the simulation handed out
            # to a child that is gone is ProcessLookupError, as for a dead process.
            if not isinstance(pid, int) or not sim.owns_pid(pid):
                real_kill(pid, sig)
                return
            slot = sim.child_slot(pid)
            if slot is None:
                raise ProcessLookupError(3, f"No such process (simulated child {pid} is gone)")
            if sig == 0:
                return
            fiber = current_fiber()
            if fiber is not None and fiber is slot.fiber:
                fiber.exit(-int(sig))
            else:
                slot.pool.kill(slot, -int(sig))

        self._set(kombu_uuid, "__defaults__", (seeded_uuid4,))
        self._set(os, "getpid", child_getpid)
        self._set(os, "kill", child_kill)
        self._set(uuid_module, "uuid4", seeded_uuid4)
        self._set(celery_amqp, "anon_nodename", lambda *_: "gen0@simq")
        self._set(celery_trace, "gethostname", node_hostname)
        # Celery's retry jitter (get_exponential_backoff_interval) draws from the global
        # random module: here it draws from the seed's "retry_jitter" stream instead.
        self._set(celery_time, "random", sim.random("retry_jitter"))

    # -- restore -----------------------------------------------------------------------

    def restore(self) -> None:
        """Undo every change, newest first; every undo runs even if one fails."""
        errors: list[BaseException] = []
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
        if errors:
            raise errors[0]
