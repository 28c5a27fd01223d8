"""Helpers for the checker tests: hand-built histories and edits of real ones.

``Story`` writes a history event by event in the simulator's vocabulary, so a test can
state a correct run in a few lines and then break exactly one thing::

    s = Story().online("w1").publish("m1", "t1")
    s.deliver("m1").start("m1").ack("m1").state("t1", "SUCCESS", 1).succeeded("m1")
    assert check_g1(s.history, CheckConfig()) == []
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from simq.checkers import Violation
from simq.history import Event, History

#: Where hand-built histories start (the simulator's default start).
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc).timestamp()


def iso(seconds: float) -> str:
    """``seconds`` after :data:`T0` as the ISO string ``published`` events carry."""
    return dt.datetime.fromtimestamp(T0 + seconds, dt.timezone.utc).isoformat()


def exc(name: str, *args: Any) -> dict[str, Any]:
    """An encoded exception, as ``state`` results and ``failed`` details hold it."""
    return {"exc_type": name, "exc_module": "simq.exceptions", "exc_message": list(args)}


class Story:
    """A history written by hand; each call appends one event at the current time."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.now = T0
        self.tasks: dict[str, tuple[str, str]] = {}  # message id -> (task id, task name)

    @property
    def history(self) -> History:
        return History(self.events)

    def at(self, seconds: float) -> Story:
        """Move to ``seconds`` after :data:`T0`."""
        self.now = T0 + seconds
        return self

    def event(
        self,
        kind: str,
        task_id: str | None = None,
        message_id: str | None = None,
        worker: str | None = None,
        **details: Any,
    ) -> Story:
        self.events.append(Event(kind, self.now, task_id, message_id, worker, details))
        return self

    def _m(self, kind: str, m: str, worker: str | None, **details: Any) -> Story:
        return self.event(kind, self.tasks[m][0], m, worker, **details)

    # -- workers and faults -----------------------------------------------------------

    def online(
        self, worker: str = "w1", concurrency: int = 1, prefetch_multiplier: int = 4
    ) -> Story:
        return self.event(
            "worker-online",
            worker=worker,
            concurrency=concurrency,
            queues=["celery"],
            prefetch_multiplier=prefetch_multiplier,
        )

    def fault(self, kind: str, worker: str | None = "w1", **details: Any) -> Story:
        return self.event(kind, worker=worker, **details)

    # -- messages ---------------------------------------------------------------------

    def publish(
        self,
        m: str,
        tid: str,
        task: str = "shop.add",
        retries: int = 0,
        eta: float | None = None,
        expires: float | None = None,
    ) -> Story:
        self.tasks[m] = (tid, task)
        return self.event(
            "published",
            tid,
            m,
            None,
            task=task,
            queue="celery",
            retries=retries,
            eta=None if eta is None else iso(eta),
            expires=None if expires is None else iso(expires),
            priority=None,
            parent_id=None,
            root_id=tid,
        )

    def deliver(
        self, m: str, worker: str = "w1", redelivered: bool = False, copy: bool = False
    ) -> Story:
        details: dict[str, Any] = {"queue": "celery", "redelivered": redelivered}
        if copy:
            details["copy"] = True
        return self._m("delivered", m, worker, **details)

    def start(self, m: str, worker: str = "w1", retries: int = 0) -> Story:
        return self._m("started", m, worker, task=self.tasks[m][1], retries=retries)

    def ack(self, m: str, worker: str = "w1") -> Story:
        return self._m("acked", m, worker)

    def reject(self, m: str, worker: str = "w1", requeue: bool = False) -> Story:
        return self._m("rejected", m, worker, requeue=requeue)

    def requeued(
        self, m: str, worker: str | None = "w1", reason: str = "worker-crashed", copy: bool = False
    ) -> Story:
        details: dict[str, Any] = {"reason": reason}
        if copy:
            details["copy"] = True
        return self._m("requeued", m, worker, **details)

    def outcome(self, kind: str, m: str, worker: str = "w1", **details: Any) -> Story:
        return self._m(kind, m, worker, **details)

    def succeeded(self, m: str, worker: str = "w1") -> Story:
        return self._m("succeeded", m, worker)

    def failed(self, m: str, name: str = "KeyError", worker: str = "w1") -> Story:
        return self._m("failed", m, worker, exception=exc(name))

    def state(self, tid: str, state: str, result: Any = None, worker: str | None = "w1") -> Story:
        return self.event("state", tid, None, worker, state=state, result=result)

    # -- whole runs -------------------------------------------------------------------

    def run_ok(
        self, m: str, worker: str = "w1", late: bool = False, result: Any = 1, retries: int = 0
    ) -> Story:
        """A correct successful attempt of an already delivered ``m``."""
        tid = self.tasks[m][0]
        self.start(m, worker, retries)
        if not late:
            self.ack(m, worker)
        self.state(tid, "SUCCESS", result, worker).succeeded(m, worker)
        return self.ack(m, worker) if late else self

    def run_failed(self, m: str, worker: str = "w1", late: bool = False) -> Story:
        """A correct failing attempt (acks_on_failure) of an already delivered ``m``."""
        tid = self.tasks[m][0]
        self.start(m, worker)
        if not late:
            self.ack(m, worker)
        self.state(tid, "FAILURE", exc("KeyError", "k"), worker).failed(m, worker=worker)
        return self.ack(m, worker) if late else self


def edited(
    history: History,
    drop: Callable[[Event], bool] | None = None,
    change: Callable[[Event], Event] | None = None,
) -> History:
    """``history`` without the events ``drop`` selects, each other passed through ``change``."""
    out = []
    for event in history:
        if drop is not None and drop(event):
            continue
        out.append(change(event) if change is not None else event)
    return History(out)


def only(violations: list[Violation], guarantee: str) -> Violation:
    """The single violation, which must be of ``guarantee``."""
    assert [v.guarantee for v in violations] == [guarantee], "\n".join(map(str, violations))
    return violations[0]


def kinds(violation: Violation) -> list[str]:
    return [e.kind for e in violation.events]
