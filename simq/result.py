"""``AsyncResult`` and ``EagerResult``: Celery's result handles.

Inside a simulation ``AsyncResult.get()`` runs the simulation forward in virtual time
until the result is ready; ``timeout`` is in virtual seconds.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from simq import states
from simq.exceptions import SimqError, TaskRevokedError
from simq.serialization import decode_exception

if TYPE_CHECKING:
    from simq.app import App

__all__ = ["AsyncResult", "EagerResult"]


class AsyncResult:
    """The result of a task call, read from the simulation's result backend.

    Once a ready state (SUCCESS, FAILURE, REVOKED) has been seen it is cached on this
    instance, as Celery does; create a fresh ``AsyncResult`` to observe later writes.
    """

    def __init__(
        self,
        id: str,
        backend: Any = None,
        task_name: str | None = None,
        app: App | None = None,
        parent: Any = None,
    ) -> None:
        if app is None:
            raise SimqError(f"AsyncResult({id!r}) needs app=; use app.AsyncResult(id)")
        self.id = id
        self.app = app
        self.task_name = task_name
        self.parent = parent
        self.ignored = False
        self._cache: dict[str, Any] | None = None

    @property
    def task_id(self) -> str:
        return self.id

    # -- reading -----------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache
        meta = self.app.backend_get(self.id)
        if meta is None:
            return {"status": states.PENDING, "result": None, "traceback": None}
        if meta["status"] in states.READY_STATES:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        """The task's state: PENDING when nothing is stored."""
        return str(self._meta()["status"])

    status = state

    @property
    def result(self) -> Any:
        """The return value, the exception, or the meta of a STARTED/custom state."""
        meta = self._meta()
        return _decode(meta["status"], meta["result"])

    info = result

    @property
    def traceback(self) -> str | None:
        tb: str | None = self._meta().get("traceback")
        return tb

    @property
    def date_done(self) -> dt.datetime | None:
        done = self._meta().get("date_done")
        return None if done is None else dt.datetime.fromtimestamp(done, dt.timezone.utc)

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def exists(self) -> bool:
        """Whether the backend holds any record for this id (5.7)."""
        return self.app.backend_get(self.id) is not None

    # -- waiting -----------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Wait for the result and return it; raise the task's exception if it failed.

        In a simulation the wait runs the simulation in virtual time; ``timeout`` is in
        virtual seconds (``simq.exceptions.TimeoutError``). If the simulation goes idle
        without the result, SimulationIdle says why.
        """
        from simq.runtime import current_worker_task

        if self.ignored:
            return None
        if disable_sync_subtasks and current_worker_task() is not None:
            raise RuntimeError(
                "Never call result.get() within a task!\n"
                "See https://docs.celeryq.dev/en/latest/userguide/tasks.html"
                "#avoid-launching-synchronous-subtasks\n"
            )
        if not self.ready():
            world = self.app._world
            if world is None:
                raise SimqError(
                    f"result {self.id} is {self.state} and no simulation is active to run it; "
                    "call get() inside `with Simulation(app) as sim:`"
                )
            world.wait(None, timeout, self.id)
        return self.maybe_throw(propagate)

    wait = get

    def maybe_throw(self, propagate: bool = True) -> Any:
        meta = self._meta()
        state, value = meta["status"], _decode(meta["status"], meta["result"])
        if state in states.PROPAGATE_STATES and propagate:
            if isinstance(value, BaseException):
                raise value
            raise Exception(value)
        return value

    # -- control -----------------------------------------------------------------------

    def forget(self) -> None:
        """Remove the result from the backend."""
        self._cache = None
        world = self.app._world
        if world is not None:
            world.forget(self.id)
        else:
            self.app.eager_env().forget(self.id)

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: Any = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Broadcast a revoke of this task to the simulation's workers."""
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)

    def as_tuple(self) -> tuple[Any, ...]:
        return ((self.id, None), None)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"

    def __str__(self) -> str:
        return self.id


class EagerResult(AsyncResult):
    """The result of ``apply()``: already ready, holding the value in process."""

    def __init__(
        self,
        id: str,
        ret_value: Any,
        state: str,
        traceback: str | None = None,
        name: str | None = None,
        app: App | None = None,
    ) -> None:
        super().__init__(id, task_name=name, app=app)
        self._result = ret_value
        self._state = state
        self._traceback = traceback
        self.name = name

    def _meta(self) -> dict[str, Any]:
        return {"status": self._state, "result": self._result, "traceback": self._traceback}

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def result(self) -> Any:
        return self._result

    info = result

    @property
    def traceback(self) -> str | None:
        return self._traceback

    def ready(self) -> bool:
        return True

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        **kwargs: Any,
    ) -> Any:
        if self.successful():
            return self._result
        if self._state in states.PROPAGATE_STATES:
            if propagate:
                raise (
                    self._result
                    if isinstance(self._result, BaseException)
                    else Exception(self._result)
                )
            return self._result
        # Celery's EagerResult.get() falls through: REJECTED, IGNORED and RETRY give None.
        return None

    wait = get

    def forget(self) -> None:
        pass

    def revoke(self, *args: Any, **kwargs: Any) -> None:
        self._state = states.REVOKED
        self._result = TaskRevokedError("revoked")

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"


def _decode(state: str, value: Any) -> Any:
    if state in states.EXCEPTION_STATES and value is not None:
        return decode_exception(value)
    return value
