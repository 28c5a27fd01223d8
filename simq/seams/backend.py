"""A Celery result backend over the simulation's key-value store. Internal.

:class:`Backend` is a ``KeyValueStoreBackend``, like Celery's Redis and cache backends:
Celery's own code encodes metas, refuses to overwrite SUCCESS, counts chord parts with
``incr`` and serves ``AsyncResult``. simq adds two things: every write is an event in
the history (``state``, or ``state-discarded`` for a write refused after SUCCESS), and
waiting for a result (``AsyncResult.get``) drives the simulation in virtual time instead
of sleeping.
"""

from __future__ import annotations

import json
from typing import Any

from celery import states
from celery.backends.base import KeyValueStoreBackend
from kombu.utils.json import dumps as kombu_dumps

from simq.engine.fibers import current_fiber
from simq.exceptions import NoActiveSimulation

__all__ = ["Backend", "jsonable"]

_PLAIN = (str, int, float, bool, type(None))


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data for the history (kombu's json form, else its repr)."""
    if isinstance(value, _PLAIN):
        return value
    try:
        # Through JSON and back: tuples become lists (Celery's exc_message is a tuple),
        # as a history read back from JSON Lines has them.
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        pass
    try:
        return json.loads(kombu_dumps(value))
    except (TypeError, ValueError):
        return repr(value)


class Backend(KeyValueStoreBackend):
    """The simulation's result backend (Celery's key-value semantics, chords included)."""

    supports_native_join = True
    implements_incr = True
    persistent = True

    def __init__(self, app: Any = None, simulation: Any = None, **kwargs: Any) -> None:
        # Celery makes this backend from result_backend= when the app's backend is first
        # used. Outside a simulation it exists (so that Celery's eager apply(), which
        # builds a tracer over the app's backend, works) but every read or write raises.
        super().__init__(app=app, **kwargs)
        self.simulation = simulation
        self.data: dict[str, Any] = {}
        self.status: dict[str, str] = {}  # task id -> last stored state, for waiting

    def _require_simulation(self) -> None:
        if self.simulation is None:
            raise NoActiveSimulation(
                "this app's result backend is simq's simulated store, which exists only "
                "inside a simulation; use `with simq.Simulation(app) as sim:` around the "
                "call, or configure a real result_backend for use outside simq"
            )

    # -- the key-value client (KeyValueStoreBackend's interface) -----------------------

    def get(self, key: Any) -> Any:
        self._require_simulation()
        return self.data.get(_key(key))

    def mget(self, keys: Any) -> list[Any]:
        self._require_simulation()
        data = self.data
        return [data.get(_key(k)) for k in keys]

    def set(self, key: Any, value: Any) -> None:
        self._require_simulation()
        self.data[_key(key)] = value

    def delete(self, key: Any) -> None:
        self._require_simulation()
        self.data.pop(_key(key), None)

    def incr(self, key: Any) -> int:
        self._require_simulation()
        k = _key(key)
        value = int(self.data.get(k) or 0) + 1
        self.data[k] = value
        return value

    def expire(self, key: Any, value: Any) -> None:
        return None  # results never expire within a simulation

    # -- recording ---------------------------------------------------------------------

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        final = self.status.get(task_id) == states.SUCCESS
        out = super()._store_result(task_id, result, state, traceback, request, **kwargs)
        fiber = current_fiber()
        slot = getattr(fiber, "owner", None)
        worker = getattr(getattr(slot, "worker", None), "name", None)
        if worker is None:
            worker = self.simulation.acting_worker
        value = result if type(result) in _PLAIN else jsonable(self.encode_result(result, state))
        attempt = self._attempt(task_id, slot, worker, request)
        extra = {} if attempt is None else {"attempt": attempt}
        if final:
            self.simulation.record(
                "state-discarded",
                task_id=task_id,
                worker=worker,
                state=state,
                result=value,
                **extra,
            )
        else:
            self.status[task_id] = state
            self.simulation.record(
                "state", task_id=task_id, worker=worker, state=state, result=value, **extra
            )
        return out

    def _attempt(self, task_id: str, slot: Any, worker: str | None, request: Any) -> str | None:
        """The attempt (delivery tag) making a write of ``task_id``'s state, if any: the one
        a child runs, or the one whose Request the worker's main process acts for."""
        job = getattr(slot, "job", None)
        if job is not None:
            delivery = job.request
            return delivery.tag if delivery is not None and delivery.id == task_id else None
        node = self.simulation.workers.get(worker) if worker is not None else None
        return node.attempt_of(task_id, request) if node is not None else None

    def _forget(self, task_id: str) -> None:
        super()._forget(task_id)
        self.status.pop(task_id, None)
        self.simulation.record("forgotten", task_id=task_id)

    def state_of(self, task_id: str) -> str:
        """The last state stored for ``task_id`` (PENDING when none)."""
        return self.status.get(task_id) or str(states.PENDING)

    # -- waiting: virtual time instead of sleeping --------------------------------------

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> Any:
        self._ensure_not_eager()
        self._require_simulation()
        if current_fiber() is not None:
            # Inside a task that allowed it (allow_join_result(), disable_sync_subtasks=
            # False), Celery's worker child polls the store, sleeping between reads:
            # Celery's own loop, on virtual time. The task waits where it stands while
            # other children run; a task cannot drive the event loop itself.
            return super().wait_for(task_id, timeout, interval, no_ack, on_interval)
        # Without a predicate the simulation waits for a ready state of task_id in this
        # store; celery's TimeoutError on timeout.
        self.simulation.wait(None, timeout, task_id)
        return self.get_task_meta(task_id)

    def as_uri(self, include_password: bool = False) -> str:
        return "simq://"


def _key(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)
