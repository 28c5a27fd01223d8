"""A history read by delivery: which events belong to which attempt.

Internal to the checkers. One pass over the history files every delivery-scoped event
under the :class:`Delivery` it concerns:

* ``started``, outcomes (``succeeded``, ``failed``, ``retried``, ``ignored``,
  ``declined``, ``child-lost``, ``revoked`` with ``terminated``) and marks
  (``time-limit``, ``cancelled``, ``child-killed``) go to the earliest delivery of that
  message on that worker still waiting for one;
* ``acked``, ``rejected``, ``ack-failed`` settle a delivery; ``requeued`` (unless it
  restored a copy), ``lost`` and a worker's crash, connection loss or going offline
  release it from the worker's hold;
* ``state`` writes (they carry no message id) go to the delivery of that task on that
  worker that most recently started (or was revoked at receipt).

A history without message ids (some real-broker recordings) is read with the task id
in their place, which merges retries of one task; checkers then see less, not wrong.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import attrs

from simq.checkers.base import epoch
from simq.history import Event, History

__all__ = ["Delivery", "Index", "index_of"]

OUTCOMES = frozenset({"succeeded", "failed", "retried", "ignored", "declined", "child-lost"})
SETTLES = frozenset({"acked", "rejected", "ack-failed"})
MARKS = frozenset({"time-limit", "cancelled", "child-killed"})
#: Worker events after which the broker no longer counts the worker's deliveries as held.
WORKER_RELEASES = frozenset({"worker-crashed", "connection-lost", "worker-offline"})
#: Worker faults, in the order checkers report them.
FAULTS = frozenset(
    {
        "worker-crashed",
        "worker-online",
        "worker-offline",
        "connection-lost",
        "connection-restored",
        "broker-restarted",
        "shutdown",
    }
)

Ref = tuple[int, Event]
_CRASH = frozenset({"worker-crashed"})
#: Outcomes recorded after the attempt's backend write (child-lost, revoked and declined
#: come first: Reject(requeue=False) stores its FAILURE after the decline, in the parent).
_WRITES_BEFORE = frozenset({"succeeded", "failed", "retried", "ignored"})


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
        return epoch(self.publication.details.get("eta")) if self.publication else None

    @property
    def expires(self) -> float | None:
        return epoch(self.publication.details.get("expires")) if self.publication else None

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

    def came_back(self, message_id: str, i: int) -> bool:
        """Whether the message ran again after ``i`` (or was revoked at receipt, or lost),
        or went back to a queue that no worker consumes at the end of the history."""
        if self.returned_after(message_id, i):
            return True
        if not any(j > i for j, _ in self.returns.get(message_id, ())):
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


def _latest(cands: list[Delivery], i: int) -> Delivery | None:
    """The delivery with the last step before ``i``: its start, outcome or a mark (a
    child-lost, hard time limit or cancel is followed by its write), or its revoke or
    unknown-task notice at receipt."""
    best: Delivery | None = None
    best_at = -1
    for d in cands:
        j = _last_step(d, i)
        if j is not None and j > best_at:
            best, best_at = d, j
    return best


def _next_step(d: Delivery, i: int) -> float:
    """Index of ``d``'s first outcome or mark after ``i`` (infinity if none)."""
    steps = (d.outcome_at, d.died_at, *(k for k, _ in d.marks))
    return min((j for j in steps if j is not None and j > i), default=float("inf"))


def _last_step(d: Delivery, i: int) -> int | None:
    """Index of ``d``'s last step before ``i`` (start, outcome, mark, receipt notice)."""
    steps = (d.start_at, d.revoked_at, d.unregistered_at, d.outcome_at, *(k for k, _ in d.marks))
    return max((j for j in steps if j is not None and j < i), default=None)


def _reattribute(idx: Index, d: Delivery, field: str) -> None:
    """Move backend writes the single pass gave the wrong attempt of one task and worker.

    Processes of a real worker record in their own order: the REVOKED write of a
    message revoked at receipt may come before its ``revoked`` event, and an attempt's
    RETRY may land after a retry message was already refused there. A delivery revoked
    at receipt writes only REVOKED; a started, unrevoked one writes no REVOKED when a
    sibling revoked at receipt lacks its write.
    """
    writes: list[Ref] = getattr(d, field)
    if not writes:
        return
    siblings = [x for x in idx.by_task_worker.get((d.task_id, d.worker), ()) if x is not d]
    keep: list[Ref] = []
    for j, e in writes:
        revoked_write = e.details.get("state") == "REVOKED"
        if d.start is None and d.revoked is not None and not revoked_write:
            dest = [
                x
                for x in siblings
                if x.start_at is not None
                and x.start_at < j
                and (x.outcome_at is None or x.outcome_at >= j)
            ]
        elif d.start is not None and d.revoked is None and revoked_write:
            dest = sorted(
                (
                    x
                    for x in siblings
                    if x.start is None
                    and x.revoked_at is not None
                    and not _stored_revoked(getattr(x, field))
                ),
                key=lambda x: abs((x.revoked_at or 0) - j),
            )
        else:
            dest = []
        if dest:
            getattr(dest[0], field).append((j, e))
            getattr(dest[0], field).sort(key=lambda r: r[0])
        else:
            keep.append((j, e))
    setattr(d, field, keep)


def _stored_revoked(writes: list[Ref]) -> bool:
    return any(e.details.get("state") == "REVOKED" for _, e in writes)


def _key(event: Event) -> str:
    return event.message_id or f"task:{event.task_id}"


class _Builder:
    def __init__(self, history: History) -> None:
        self.idx = Index(list(history))
        self.by_key: dict[tuple[str, str | None], list[Delivery]] = defaultdict(list)
        self.pending: list[tuple[int, Event, list[Delivery]]] = []

    def candidates(self, event: Event) -> list[Delivery]:
        key = _key(event)
        if event.worker is None:
            return list(self.idx.by_message.get(key, ()))
        found = self.by_key.get((key, event.worker))
        if found is None and event.message_id is None:
            # A recording without message ids: match the task on this worker.
            found = self.idx.by_task_worker.get((event.task_id, event.worker))
        return list(found or ())

    @staticmethod
    def pick(cands: list[Delivery], *tiers: Any) -> Delivery | None:
        for tier in tiers:
            for d in cands:
                if tier(d):
                    return d
        return None

    def build(self) -> Index:
        for i, event in enumerate(self.idx.events):
            handler = getattr(self, "on_" + event.kind.replace("-", "_"), None)
            if handler is not None:
                handler(i, event)
        for i, e, running in self.pending:
            d = min(running, key=lambda d: (_next_step(d, i), d.start_at or 0))
            writes = d.states if e.kind == "state" else d.discarded
            writes.append((i, e))
            writes.sort(key=lambda r: r[0])
        for d in self.idx.deliveries:
            _reattribute(self.idx, d, "states")
            _reattribute(self.idx, d, "discarded")
        return self.idx

    # -- broker side ------------------------------------------------------------------

    def on_published(self, i: int, e: Event) -> None:
        self.idx.publications.setdefault(_key(e), (i, e))
        self.idx.published[e.task_id or ""].append((i, e))

    def on_delivered(self, i: int, e: Event) -> None:
        idx = self.idx
        key = _key(e)
        pub = idx.publications.get(key)
        d = Delivery(
            i,
            e,
            len(idx.by_message[key]) + 1,
            pub[1] if pub else None,
            task=pub[1].details.get("task") if pub else None,
        )
        idx.deliveries.append(d)
        idx.by_message[key].append(d)
        idx.by_worker[e.worker or ""].append(d)
        self.by_key[(key, e.worker)].append(d)
        idx.by_task_worker[(e.task_id, e.worker)].append(d)

    def on_requeued(self, i: int, e: Event) -> None:
        self.idx.returns[_key(e)].append((i, e))
        if e.details.get("copy"):
            return  # the holder keeps its copy (kombu #337): not a release
        self._release(self.candidates(e), i, e)

    def on_lost(self, i: int, e: Event) -> None:
        self.idx.lost[_key(e)].append((i, e))
        self._release(self.candidates(e), i, e)

    def _release(self, cands: list[Delivery], i: int, e: Event) -> None:
        if e.worker is None and any(d.settle is None and d.release is not None for d in cands):
            return  # the broker restores a message whose holder is gone: no hold changes
        # A copy waiting on the worker goes back before one that is running (a shutdown
        # returns what has not started).
        for d in sorted(cands, key=lambda d: d.start is not None):
            if d.settle is None and d.release is None:
                d.release, d.release_at = e, i
                if e.worker is not None:
                    return

    # -- worker side ------------------------------------------------------------------

    def on_started(self, i: int, e: Event) -> None:
        def fresh(d: Delivery) -> bool:
            return d.start is None and d.revoked is None and d.unregistered is None

        d = self.pick(
            self.candidates(e),
            lambda d: fresh(d) and d.release is None and d.settle is None,
            lambda d: fresh(d) and d.release is None,
            fresh,
        )
        if d is None:
            self.idx.orphans.append((i, e))
            return
        d.start, d.start_at = e, i
        if e.details.get("task"):
            d.task = e.details["task"]

    def _settle(self, i: int, e: Event, released_first: bool) -> None:
        # An ack follows the step that decided it (start, outcome, revoke at receipt): among
        # copies of one message on one worker, the one with the latest step goes first.
        cands = sorted(
            (d for d in self.candidates(e) if d.settle is None),
            key=lambda d: -1 - (_last_step(d, i) or -1),
        )

        def active(d: Delivery) -> bool:
            return d.start is not None or d.revoked is not None or d.unregistered is not None

        if released_first:
            # ack-failed: an attempt that ended after its channel closed; one that died
            # with its crashed worker sends nothing.
            d = self.pick(
                cands,
                lambda d: (
                    d.release is not None
                    and d.outcome is not None
                    and d.release.kind != "worker-crashed"
                ),
                lambda d: d.release is not None and active(d),
                lambda d: d.release is not None,
                active,
                lambda d: True,
            )
        else:
            d = self.pick(
                cands,
                lambda d: d.release is None and active(d),
                lambda d: d.release is None,
                active,
                lambda d: True,
            )
        if d is None:
            self.idx.orphans.append((i, e))
            return
        d.settle, d.settle_at = e, i

    def on_acked(self, i: int, e: Event) -> None:
        self._settle(i, e, released_first=False)

    def on_rejected(self, i: int, e: Event) -> None:
        if e.details.get("requeue"):
            self.idx.returns[_key(e)].append((i, e))
        self._settle(i, e, released_first=False)

    def on_ack_failed(self, i: int, e: Event) -> None:
        self._settle(i, e, released_first=True)

    def _running(self, e: Event) -> Delivery | None:
        def running(d: Delivery) -> bool:
            return d.start is not None and d.outcome is None

        def alive(d: Delivery) -> bool:
            # An attempt cancelled, or killed with its crashed worker, reports nothing
            # more: a later outcome on that worker belongs to a redelivery.
            crashed = self.idx.next_fault(d.worker, _CRASH, d.start_at or 0)
            return running(d) and crashed >= len(self.idx.events) and not d.marks_of("cancelled")

        return self.pick(self.candidates(e), alive, running)

    def _outcome(self, i: int, e: Event) -> None:
        d = self._running(e)
        if e.details.get("deduplicated"):
            # G14's skip ends the attempt that just started, not an older one still
            # running on a lost channel.
            running = [
                x for x in self.candidates(e) if x.start_at is not None and x.outcome is None
            ]
            d = max(running, key=lambda x: x.start_at or 0, default=d)
        if d is None:
            self.idx.orphans.append((i, e))
            return
        d.outcome, d.outcome_at = e, i

    on_succeeded = on_failed = on_retried = on_ignored = on_declined = _outcome
    on_child_lost = _outcome

    def _mark(self, i: int, e: Event) -> None:
        d = self._running(e)
        if d is None:
            self.idx.orphans.append((i, e))
            return
        d.marks.append((i, e))

    on_time_limit = on_cancelled = on_child_killed = _mark

    def on_revoked(self, i: int, e: Event) -> None:
        cands = self.candidates(e)
        if e.details.get("terminated") or e.details.get("reason") == "terminated":
            d = self._running(e)
            if d is not None:
                d.outcome, d.outcome_at = e, i
                d.revoked, d.revoked_at = e, i
                return

        def waiting(d: Delivery) -> bool:
            return d.start is None and d.revoked is None and d.settle is None and d.release is None

        # Revoked on receipt: the copy received just now, not an older one on an ETA timer.
        now = [x for x in cands if waiting(x) and x.event.time == e.time]
        d = (
            now[-1]
            if now
            else self.pick(cands, waiting, lambda d: d.start is None and d.revoked is None)
        )
        if d is None:
            d = self._running(e)
            if d is None:
                self.idx.orphans.append((i, e))
                return
            d.outcome, d.outcome_at = e, i
        d.revoked, d.revoked_at = e, i

    def on_unregistered(self, i: int, e: Event) -> None:
        d = self.pick(self.candidates(e), lambda d: d.start is None and d.unregistered is None)
        if d is not None:
            d.unregistered, d.unregistered_at = e, i

    # -- backend ----------------------------------------------------------------------

    def _writer(self, i: int, e: Event) -> Delivery | None:
        if e.worker is None:
            return None
        cands = self.idx.by_task_worker.get((e.task_id, e.worker), [])
        # An attempt that reported success, failure, retry, Ignore or Reject stored its
        # state before that: a later write comes from another attempt still running
        # (e.g. one left on a lost channel), if there is one.
        live = [
            d
            for d in cands
            if not (
                d.outcome is not None
                and d.outcome_at is not None
                and d.outcome_at < i
                and d.outcome.kind in _WRITES_BEFORE
                and not d.marks_of("time-limit", which="hard")
            )
            and not (d.start is None and _stored_revoked(d.states + d.discarded))
        ]
        step = _latest(live, i)
        if step is not None and step.start_at is not None and _last_step(step, i) == step.start_at:
            running = [d for d in live if d.running_at(i)]
            if len(running) > 1 and e.details.get("state") != "STARTED":
                # Attempts of this task side by side here (visibility-timeout copies): the
                # write belongs to the one that ends next, settled once the pass is done.
                self.pending.append((i, e, running))
                return None
        # A real worker may record a revoke's write before its ``revoked`` event: then the
        # delivery it received last is the writer.
        return (
            step
            or _latest(cands, i)
            or max((d for d in cands if d.at < i), key=lambda d: d.at, default=None)
        )

    def on_state(self, i: int, e: Event) -> None:
        self.idx.states[e.task_id or ""].append((i, e))
        d = self._writer(i, e)
        if d is not None:
            d.states.append((i, e))

    def on_state_discarded(self, i: int, e: Event) -> None:
        self.idx.discarded[e.task_id or ""].append((i, e))
        d = self._writer(i, e)
        if d is not None:
            d.discarded.append((i, e))

    def on_forgotten(self, i: int, e: Event) -> None:
        self.idx.forgotten[e.task_id or ""].append(i)

    def on_revoke(self, i: int, e: Event) -> None:
        self.idx.revokes.append((i, e))

    # -- faults -----------------------------------------------------------------------

    def _fault(self, i: int, e: Event) -> None:
        self.idx.faults.append((i, e))
        if e.kind == "worker-crashed":
            for d in self.idx.by_worker.get(e.worker or "", ()):
                if d.died_at is None and d.running_at(i):
                    d.died_at = i
        if e.kind in WORKER_RELEASES:
            for d in self.idx.by_worker.get(e.worker or "", ()):
                if d.settle is None and d.release is None:
                    d.release, d.release_at = e, i
        elif e.kind == "broker-restarted":
            for d in self.idx.deliveries:
                if d.settle is None and d.release is None:
                    d.release, d.release_at = e, i

    on_worker_crashed = on_worker_online = on_worker_offline = _fault
    on_connection_lost = on_connection_restored = on_broker_restarted = on_shutdown = _fault


def index_of(history: History | Index) -> Index:
    """The :class:`Index` of ``history`` (an Index is returned as it is)."""
    if isinstance(history, Index):
        return history
    return _Builder(history).build()
