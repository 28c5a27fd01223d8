"""A chord that can never complete, told apart from one that is only slow. Internal.

On the polling result backends (``result_backend="database"`` or ``"rpc"``), Celery
publishes ``celery.chord_unlock``, which retries every ``result_chord_retry_interval``
(1 s) with no retry limit until every header result is ready. When a header result can
never be stored (a header task with ``ignore_result=True``, a result forgotten, a header
message lost), a real deployment retries it for ever, and so would the simulation: one
virtual second at a time, for the 365 virtual days of ``max_run_time``, which takes
hours of real time.

:class:`ChordWatch` ends such a run early, and only in a ``run()`` or ``get()`` without
a bound: when a ``chord_unlock`` has retried :data:`STREAK` times with no event of any
other task, fault or worker in between, and no other message is queued, held or
awaiting a restore anywhere (nothing left that could store the missing results), it stops
the run with :class:`~simq.exceptions.RunawaySimulation` (``limit="stuck_chord"``), naming
the chord and the header tasks whose results never came. A header task waiting for a
countdown, ETA or visibility-timeout restore holds a message, so a slow chord is never
stopped.
"""

from __future__ import annotations

from typing import Any

from celery import states

from simq.world.broker import MessageState

__all__ = ["STREAK", "ChordWatch"]

#: Consecutive ``chord_unlock`` retries with nothing else happening before the world is
#: searched for work that could still complete the chord.
STREAK = 30

_UNLOCK = "celery.chord_unlock"
_LIVE = (MessageState.READY, MessageState.UNACKED)


class ChordWatch:
    """Watches the ``chord_unlock`` retries of one simulation."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.streak: dict[str, tuple[int, int]] = {}  # task id -> (history length, count)

    def retried(self, task_id: str) -> None:
        """The ``chord_unlock`` task ``task_id`` retried (the history's last event)."""
        if not self.sim.unbounded:
            return
        history = self.sim.history
        now = len(history)
        last, count = self.streak.get(task_id, (0, 0))
        # Only this chord_unlock's own attempt since its last retry: published,
        # delivered, started, acked, state and retried events of its task id.
        quiet = last and all(e.task_id == task_id for e in history[last:now])
        count = count + 1 if quiet else 1
        if count >= STREAK:
            if not self._other_work(task_id):
                self.sim.loop.stop(self._explain(task_id, count), "stuck_chord")
            count = 0  # look again after another streak
        self.streak[task_id] = (now, count)

    def _other_work(self, task_id: str) -> bool:
        """Whether any message but this unlock's is queued, held or awaiting a restore."""
        broker = self.sim.broker
        for envelope in (*broker.envelopes.values(), *broker.copies):
            if envelope.state in _LIVE and envelope.message.task_id != task_id:
                return True
        return False

    def _explain(self, task_id: str, count: int) -> str:
        sim = self.sim
        published = sim.history.where(kind="published", task_id=task_id).first()
        body = published.details.get("chord")
        missing = _missing_results(sim, body)
        what = "; header tasks with no ready result: " + ", ".join(missing) if missing else ""
        return (
            f"runaway simulation: the chord of body task {body or '?'} can never complete: "
            f"its celery.chord_unlock [{task_id}] retried {count} times in a row with "
            "nothing else left to run, so the chord's body never runs (a real worker "
            f"retries it for ever){what}. On the polling result backends (result_backend="
            f"{sim.backend.kind!r}) chord_unlock waits for every header result: a header "
            "task with ignore_result=True, or whose result was forgotten or lost, never "
            "provides one (with result_backend='redis' Celery counts finished parts "
            "instead). Fix: store the header tasks' results, or bound the wait with "
            "run(until=...) or get(timeout=...) to watch the body never run"
        )


def _missing_results(sim: Any, body: str | None) -> list[str]:
    """The header tasks of the chord whose body is ``body`` that have no ready result."""
    if body is None:
        return []
    out: list[str] = []
    for event in sim.history.where(kind="published"):
        if event.details.get("chord") == body and event["task"] != _UNLOCK:
            state = sim.backend.state_of(event.task_id)
            label = f"{event['task']}[{event.task_id}] ({state})"
            if state not in states.READY_STATES and label not in out:
                out.append(label)
    return out
