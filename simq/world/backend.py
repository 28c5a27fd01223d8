"""The simulated result backend: a key-value store where SUCCESS is final.

Internal. Like Celery's key-value backends (Redis, memcached, file), a write after
SUCCESS is ignored (``backends/base.py`` ``_store_result``); every other state may be
overwritten. Results are stored encoded, as a real backend would hold them, and each
write is an event in the history (``state``; a write refused after SUCCESS is
``state-discarded``, so nothing disappears silently).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simq import states
from simq.runtime import Context, encoded

__all__ = ["Backend"]

Record = Callable[..., None]


class Backend:
    """Task metas by task id: ``{"status", "result", "traceback", "date_done", ...}``."""

    def __init__(self, record: Record, clock: Callable[[], float]) -> None:
        self._record = record
        self._clock = clock
        self._metas: dict[str, dict[str, Any]] = {}

    def store(
        self,
        task_id: str,
        state: str,
        result: Any,
        request: Context | None = None,
        traceback: str | None = None,
        worker: str | None = None,
    ) -> None:
        """Write ``state`` with ``result``; raises EncodeError for an unencodable result."""
        value = encoded(result)
        old = self._metas.get(task_id)
        if old is not None and old["status"] == states.SUCCESS:
            self._record(
                "state-discarded", task_id=task_id, worker=worker, state=state, result=value
            )
            return
        now = self._clock()
        self._metas[task_id] = {
            "task_id": task_id,
            "status": state,
            "result": value,
            "traceback": traceback,
            "date_done": now if state in states.READY_STATES else None,
            "children": [],
            "name": request.task if request is not None else None,
            "retries": request.retries if request is not None else None,
        }
        self._record("state", task_id=task_id, worker=worker, state=state, result=value)

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The stored meta of ``task_id``, or None."""
        return self._metas.get(task_id)

    def state(self, task_id: str) -> str:
        meta = self._metas.get(task_id)
        return meta["status"] if meta is not None else states.PENDING

    def forget(self, task_id: str) -> None:
        self._metas.pop(task_id, None)
        self._record("forgotten", task_id=task_id)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._metas
