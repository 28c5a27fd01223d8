"""What the index of a history is made of: a :class:`Delivery` per delivery, the
:class:`Index` that holds them. Internal to the checkers (built by ``index.py``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import attrs

from simq.checkers.base import epoch
from simq.history import Event

__all__ = ["Delivery", "Index", "Ref"]

Ref = tuple[int, Event]


@attrs.define(eq=False)
class Delivery:
    """One delivery of one message to one worker, and what followed from it."""

    at: int
    event: Event
    number: int
    publication: Event | None
    task: str | None = None
    start: Event | None = None
    start_at: int | None = None
    outcome: Event | None = None
    outcome_at: int | None = None
    settle: Event | None = None
    settle_at: int | None = None
    release: Event | None = None
    release_at: int | None = None
    revoked: Event | None = None
    revoked_at: int | None = None
    unregistered: Event | None = None
    unregistered_at: int | None = None
    died_at: int | None = None  # index of the crash of its worker while it ran
    _times: tuple[float | None, float | None] | None = attrs.field(default=None, repr=False)
    marks: list[Ref] = attrs.field(factory=list)
    states: list[Ref] = attrs.field(factory=list)
    discarded: list[Ref] = attrs.field(factory=list)

    @property
    def message_id(self) -> str:
        return self.event.message_id or f"task:{self.event.task_id}"

    @property
    def task_id(self) -> str | None:
        return self.event.task_id

    @property
    def worker(self) -> str | None:
        return self.event.worker

    @property
    def copy(self) -> bool:
        return bool(self.event.details.get("copy"))

    @property
    def redelivered(self) -> bool:
        return bool(self.event.details.get("redelivered"))

    @property
    def eta(self) -> float | None:
        return self.times[0]

    @property
    def expires(self) -> float | None:
        return self.times[1]

    @property
    def times(self) -> tuple[float | None, float | None]:
        """(eta, expires) of the publication as epoch seconds, parsed once."""
        if self._times is None:
            pub = self.publication
            self._times = (
                (epoch(pub.details.get("eta")), epoch(pub.details.get("expires")))
                if pub is not None
                else (None, None)
            )
        return self._times

    @property
    def retries(self) -> int:
        """``request.retries`` of the attempt: from ``started``, else the publication."""
        for event in (self.start, self.publication):
            if event is not None and event.details.get("retries") is not None:
                return int(event.details["retries"])
        return 0

    @property
    def label(self) -> str:
        """``task name[task id]`` message ``id``, for violation messages."""
        return f"{self.task or '?'}[{self.task_id}] message {self.message_id}"

    def unacked_at(self, i: int) -> bool:
        """Delivered before index ``i`` and neither settled nor released before it."""
        return self.at < i and _open(self.settle_at, i) and _open(self.release_at, i)

    def running_at(self, i: int) -> bool:
        """Started before index ``i`` and without an outcome or cancellation before it."""
        if self.start_at is None or self.start_at >= i or not _open(self.outcome_at, i):
            return False
        if self.died_at is not None and self.died_at < i:
            return False
        return not any(j < i for j, e in self.marks if e.kind == "cancelled")

    def marks_of(self, kind: str, **details: Any) -> list[Ref]:
        return [
            (j, e)
            for j, e in self.marks
            if e.kind == kind and all(e.details.get(k) == v for k, v in details.items())
        ]

    def states_after(self, i: int) -> list[Ref]:
        """The attempt's backend writes after ``i``, those the backend discarded included
        (after SUCCESS a key-value backend refuses them: the attempt still made them)."""
        return sorted(
            ((j, e) for j, e in self.states + self.discarded if j > i), key=lambda r: r[0]
        )


def _open(end: int | None, i: int) -> bool:
    return end is None or end >= i


@attrs.define(eq=False)
class Index:
    """The deliveries of a history and the events around them."""

    events: list[Event]
    deliveries: list[Delivery] = attrs.field(factory=list)
    by_message: dict[str, list[Delivery]] = attrs.field(factory=lambda: defaultdict(list))
    by_worker: dict[str, list[Delivery]] = attrs.field(factory=lambda: defaultdict(list))
    publications: dict[str, Ref] = attrs.field(factory=dict)
    published: dict[str, list[Ref]] = attrs.field(factory=lambda: defaultdict(list))
    returns: dict[str, list[Ref]] = attrs.field(factory=lambda: defaultdict(list))
    lost: dict[str, list[Ref]] = attrs.field(factory=lambda: defaultdict(list))
    states: dict[str, list[Ref]] = attrs.field(factory=lambda: defaultdict(list))
    discarded: dict[str, list[Ref]] = attrs.field(factory=lambda: defaultdict(list))
    forgotten: dict[str, list[int]] = attrs.field(factory=lambda: defaultdict(list))
    faults: list[Ref] = attrs.field(factory=list)
    revokes: list[Ref] = attrs.field(factory=list)
    orphans: list[Ref] = attrs.field(factory=list)
    by_task_worker: dict[tuple[str | None, str | None], list[Delivery]] = attrs.field(
        factory=lambda: defaultdict(list)
    )

    @property
    def end_time(self) -> float:
        return self.events[-1].time if self.events else 0.0

    def attempt_end(self, d: Delivery) -> float:
        """When ``d``'s attempt stopped: outcome, cancel, its worker's crash, else the end."""
        ends = [e.time for _, e in d.marks if e.kind == "cancelled"]
        if d.outcome is not None:
            ends.append(d.outcome.time)
        if d.start_at is not None:
            crash = self.next_fault(d.worker, frozenset({"worker-crashed"}), d.start_at)
            if crash < len(self.events):
                ends.append(self.events[crash].time)
        return min(ends) if ends else self.end_time

    def returned_after(self, message_id: str, i: int) -> bool:
        """Whether the message started again, was revoked at receipt or was lost after ``i``."""
        return bool(
            self.started_after(message_id, i)
            or self.lost_after(message_id, i)
            or any(d.revoked is not None for d in self.deliveries_after(message_id, i))
        )

    def consumed_at_end(self, queue: str | None) -> bool:
        """Whether a worker is up, connected and consuming ``queue`` when the history ends."""
        up: dict[str | None, tuple[bool, Any]] = {}
        for _, e in self.faults:
            queues = up.get(e.worker, (False, None))[1]
            if e.kind == "worker-online":
                up[e.worker] = (True, e.details.get("queues"))
            elif e.kind == "connection-restored":
                up[e.worker] = (True, queues)
            elif e.kind in ("worker-crashed", "worker-offline", "connection-lost", "shutdown"):
                up[e.worker] = (False, queues)
        return any(on and (qs is None or queue is None or queue in qs) for on, qs in up.values())

    def came_back(self, message_id: str, i: int, since: int | None = None) -> bool:
        """Whether the message ran again after ``i`` (or was revoked at receipt, or lost),
        or went back (after ``since``, default ``i``) to a queue that no worker consumes at
        the end of the history."""
        if self.returned_after(message_id, i):
            return True
        since = i if since is None else since
        if not any(j > since for j, _ in self.returns.get(message_id, ())):
            return False
        pub = self.publications.get(message_id)
        return not self.consumed_at_end(pub[1].details.get("queue") if pub else None)

    def duplicated_before(self, message_id: str, i: int) -> bool:
        """Whether a visibility-timeout restore copied the message before index ``i``: from
        then on, another run of it is the documented duplicate (G6), not a redelivery."""
        return any(
            j < i and e.details.get("reason") == "visibility-timeout"
            for j, e in self.returns.get(message_id, ())
        )

    def twins(self, d: Delivery) -> list[Delivery]:
        """Other deliveries of ``d``'s message held by ``d``'s worker at the same time.

        Such copies (visibility-timeout copies) are identical in the history: which one
        started, or was acked, first cannot be told, so timing checks skip them.
        """
        end = len(self.events)

        def until(x: Delivery) -> int:
            if x.start_at is not None and x.outcome_at is None and x.died_at is None:
                return end  # still running, whether or not its channel is gone
            steps = [
                j for j in (x.settle_at, x.outcome_at, x.release_at, x.died_at) if j is not None
            ]
            return max(steps) if steps else end

        return [
            x
            for x in self.by_message.get(d.message_id, ())
            if x is not d and x.worker == d.worker and x.at < until(d) and d.at < until(x)
        ]

    def deliveries_after(self, message_id: str, i: int) -> list[Delivery]:
        return [d for d in self.by_message.get(message_id, ()) if d.at > i]

    def started_after(self, message_id: str, i: int) -> list[Delivery]:
        return [
            d
            for d in self.by_message.get(message_id, ())
            if d.start_at is not None and d.start_at > i
        ]

    def lost_after(self, message_id: str, i: int) -> list[Ref]:
        return [(j, e) for j, e in self.lost.get(message_id, ()) if j > i]

    def worker_events(self, worker: str | None, kinds: frozenset[str]) -> list[Ref]:
        return [(j, e) for j, e in self.faults if e.worker == worker and e.kind in kinds]

    def next_fault(self, worker: str | None, kinds: frozenset[str], i: int) -> int:
        """Index of the first fault of ``kinds`` on ``worker`` after ``i`` (else the end)."""
        for j, e in self.faults:
            if j > i and e.kind in kinds and e.worker == worker:
                return j
        return len(self.events)

    def stored_before(self, task_id: str | None, i: int) -> Ref | None:
        """The last effective backend write for ``task_id`` before index ``i``, if any."""
        last: Ref | None = None
        forgot = max((j for j in self.forgotten.get(task_id or "", ()) if j < i), default=-1)
        for j, e in self.states.get(task_id or "", ()):
            if forgot < j < i:
                last = (j, e)
        return last

    def succeeded_before(self, task_id: str | None, i: int) -> Ref | None:
        """The SUCCESS write for ``task_id`` in force at index ``i`` (None if none)."""
        forgot = max((j for j in self.forgotten.get(task_id or "", ()) if j < i), default=-1)
        for j, e in self.states.get(task_id or "", ()):
            if forgot < j < i and e.details.get("state") == "SUCCESS":
                return (j, e)
        return None
