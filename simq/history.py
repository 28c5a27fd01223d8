"""The history of a run: every observable step as a frozen event.

A history is the contract between the simulator, real-broker adapters and checkers:
each records the same vocabulary, and checkers read nothing else. Histories serialize
to JSON Lines and back without loss::

    text = sim.history.to_jsonl()
    assert History.from_jsonl(text).to_jsonl() == text

Event kinds (``details`` keys in brackets; docs/history.md says when each is recorded):

* messages: ``published`` [task, queue, retries, eta, expires, priority, parent_id,
  root_id, ignore_result, timelimit; for canvas messages only: group, group_index,
  chord, chain, link, link_error], ``delivered`` [queue, redelivered, copy?],
  ``acked``, ``rejected`` [requeue], ``requeued`` [reason, copy?], ``ack-failed``,
  ``lost`` [reason, reconciled?] (with reason ``worker-crashed``: an early-acked task
  that died with its worker)
* execution: ``started`` [task, retries], ``succeeded``, ``failed`` [exception],
  ``retried`` [exception, when], ``ignored`` [exception], ``declined`` [requeue] (the
  task raised Reject), ``revoked`` [reason, expired, terminated], ``unregistered``
  [task], ``undecodable`` [error], ``time-limit`` [which, limit], ``child-lost`` [exitcode], ``child-killed``
  [exitcode], ``cancelled`` [reason]
* result backend: ``state`` [state, result, reconciled?], ``state-discarded`` [state, result] (a
  write after SUCCESS), ``forgotten``
* workers, broker, control: ``worker-online`` [concurrency, queues,
  prefetch_multiplier], ``worker-crashed`` [restart_after], ``worker-offline`` [reason],
  ``shutdown`` [warm], ``connection-lost``, ``connection-restored``,
  ``broker-restarted`` [lost, transport], ``revoke`` [terminate, signal, workers],
  ``control`` [method, destination], ``fault-skipped`` [fault, reason] (a scheduled
  fault found nothing to act on, e.g. ``kill_child`` of a task no longer running),
  ``fault-plan`` [faults] (a ``FaultPlan`` was applied: its faults as JSON values)

Every event of one delivery (``delivered``, ``started``, the outcome, marks such as
``time-limit``, ``acked``/``rejected``/``ack-failed``, ``requeued``/``lost`` of that
delivery, its ``revoked``, the ``state`` writes it makes) carries that delivery's
``attempt`` id in ``details``: two live attempts of one message (a visibility-timeout
copy, a redelivery after a lost connection) never share one.

``reconciled`` marks an event a real-broker adapter recorded after the fact, from the
broker's store or the result backend, because the process that should have recorded it
died first; its value says what was read.

:data:`KINDS` holds the same list for code; ``History.where`` checks names against it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterable, Iterator
from typing import Any, overload

import attrs

from simq.exceptions import InvalidArgument
from simq.validate import did_you_mean

__all__ = ["KINDS", "Event", "History"]

#: Every event kind the simulator and the real-broker adapters record, with its
#: ``details`` keys (the module docs say what each means). ``History.where`` checks names
#: against it, so that a misspelt kind or key is an error rather than an empty result.
KINDS: dict[str, frozenset[str]] = {
    kind: frozenset(keys.split())
    for kind, keys in {
        "published": "task queue retries eta expires priority parent_id root_id "
        "ignore_result timelimit group group_index chord chain link link_error",
        "delivered": "queue redelivered copy",
        "acked": "",
        "rejected": "requeue",
        "requeued": "reason copy",
        "ack-failed": "requeue",
        "lost": "reason exchange routing_key reconciled",
        "started": "task retries",
        "succeeded": "deduplicated",
        "failed": "exception",
        "retried": "exception when",
        "ignored": "exception",
        "declined": "requeue",
        "revoked": "reason expired terminated",
        "unregistered": "task",
        "undecodable": "error",
        "time-limit": "which limit",
        "child-lost": "exitcode",
        "child-killed": "exitcode",
        "cancelled": "reason",
        "state": "state result reconciled",
        "state-discarded": "state result",
        "forgotten": "",
        "worker-online": "concurrency queues prefetch_multiplier",
        "worker-crashed": "restart_after",
        "worker-offline": "reason",
        "shutdown": "warm",
        "connection-lost": "",
        "connection-restored": "",
        "broker-restarted": "lost transport",
        "revoke": "terminate signal workers",
        "control": "method destination",
        "fault-skipped": "fault reason",
        "fault-plan": "faults",
    }.items()
}


@attrs.frozen(slots=True)
class Event:
    """One step of a run.

    Attributes:
        kind: What happened (see the module docs for the vocabulary).
        time: Virtual time, seconds since the Unix epoch (UTC).
        task_id: The task concerned, if any.
        message_id: The message concerned, if any.
        worker: The worker concerned, if any.
        details: Kind-specific, JSON-compatible details.
    """

    kind: str
    time: float
    task_id: str | None = None
    message_id: str | None = None
    worker: str | None = None
    details: dict[str, Any] = attrs.field(factory=dict, hash=False)

    @property
    def at(self) -> dt.datetime:
        """``time`` as a timezone-aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.time, dt.timezone.utc)

    def __getitem__(self, key: str) -> Any:
        return self.details[key]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "time": self.time,
            "task_id": self.task_id,
            "message_id": self.message_id,
            "worker": self.worker,
            "details": self.details,
        }


_FIELDS = ("kind", "time", "task_id", "message_id", "worker")
#: Details keys any event may carry: ``attempt`` names the delivery an event belongs to.
_COMMON = frozenset({"attempt"})
_KEYS = frozenset(_FIELDS).union(_COMMON, *KINDS.values())


class History:
    """An ordered, append-only list of events with filtering and JSONL round trips."""

    __slots__ = ("_events",)

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self._events: list[Event] = list(events)

    def append(self, event: Event) -> None:
        self._events.append(event)

    def where(self, **criteria: Any) -> History:
        """Events matching every criterion.

        ``kind``, ``time``, ``task_id``, ``message_id`` and ``worker`` match the event's
        field (a list, tuple or set matches any of its members); other keywords match
        ``details``. A kind, or a keyword, that no event kind has (and no event of this
        history has) is an :class:`~simq.exceptions.InvalidArgument` suggesting the
        closest name: a misspelling would otherwise match nothing, silently.

        Example:
            ``sim.history.where(kind="started", task_id=r.id)``
        """
        self._check(criteria)
        tests: list[tuple[str, bool, Any]] = []
        for key, want in criteria.items():
            many = isinstance(want, Collection) and not isinstance(want, str)
            tests.append((key, many, set(want) if many else want))
        out = []
        for event in self._events:
            for key, many, want in tests:
                value = getattr(event, key) if key in _FIELDS else event.details.get(key, _MISSING)
                if (value not in want) if many else (value != want):
                    break
            else:
                out.append(event)
        return History(out)

    def _check(self, criteria: dict[str, Any]) -> None:
        for key in criteria:
            if key not in _KEYS and not any(key in e.details for e in self._events):
                names = sorted(_KEYS.union(*(e.details for e in self._events)))
                raise InvalidArgument(
                    f"where(): no event has a field or detail {key!r}"
                    f"{did_you_mean(key, names)} (fields: {', '.join(_FIELDS)}; details "
                    "by kind: simq.history.KINDS)"
                )
        want = criteria.get("kind")
        if want is None:
            return
        many = isinstance(want, Collection) and not isinstance(want, str)
        for kind in want if many else [want]:
            if kind not in KINDS and not any(e.kind == kind for e in self._events):
                names = sorted(set(KINDS).union(e.kind for e in self._events))
                raise InvalidArgument(
                    f"where(): {kind!r} is not an event kind{did_you_mean(kind, names)} "
                    f"(kinds: {', '.join(names)})"
                )

    def kinds(self) -> list[str]:
        """The kinds of the events, in order."""
        return [e.kind for e in self._events]

    def first(self) -> Event:
        if not self._events:
            raise IndexError("the history is empty")
        return self._events[0]

    def last(self) -> Event:
        if not self._events:
            raise IndexError("the history is empty")
        return self._events[-1]

    def to_jsonl(self) -> str:
        """The history as JSON Lines, one event per line."""
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        return "".join(dumps(e.to_dict()) + "\n" for e in self._events)

    @classmethod
    def from_jsonl(cls, text: str) -> History:
        """Parse what :meth:`to_jsonl` wrote."""
        events = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                events.append(Event(**data))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"line {number} is not a history event: {exc}") from exc
        return cls(events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def __len__(self) -> int:
        return len(self._events)

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> History: ...
    def __getitem__(self, index: int | slice) -> Event | History:
        if isinstance(index, slice):
            return History(self._events[index])
        return self._events[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self._events == other._events

    def __repr__(self) -> str:
        return f"<History {len(self._events)} events>"


class _Missing:
    pass


_MISSING = _Missing()
