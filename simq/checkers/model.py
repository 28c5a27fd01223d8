"""What the index of a history is made of: a :class:`Delivery` per delivery, the
:class:`Index` that holds them. Internal to the checkers (built by ``index.py``).

Checkers ask the index questions per message ("did it run again after index i?") once
per delivery; the index answers each from per-message summaries in constant or
logarithmic time, so a message delivered thousands of times is checked in linear time.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

import attrs

from simq.checkers.base import epoch
from simq.history import Event

__all__ = ["Delivery", "Index", "Ref"]

Ref = tuple[int, Event]

_NEVER = -1


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
    lost: Event | None = None  # ``lost`` [worker-crashed]: acked, it died with its worker
    lost_at: int | None = None
    #: The attempt id every event of this delivery carries, if the recorder gave one (and
    #: no other delivery claims it: events of a reused id are matched by order instead).
    attempt: str | None = None
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
    def ignore_result(self) -> bool | None:
        """The message's own ``ignore_result`` (``apply_async(ignore_result=)``), if given.

        Celery's worker reads it from the message before the task's setting
        (``Request.ignore_result``, ``get_actual_ignore_result``).
        """
        pub = self.publication
        value = pub.details.get("ignore_result") if pub is not None else None
        return None if value is None else bool(value)

    def time_limit(self, which: str) -> float | None:
        """The message's own ``hard`` or ``soft`` time limit (its ``timelimit`` header).

        Celery's Request uses it before the task's (``time_limit or task.time_limit``);
        None when the message sets none.
        """
        pub = self.publication
        limits = pub.details.get("timelimit") if pub is not None else None
        if not isinstance(limits, list | tuple) or len(limits) != 2:
            return None
        value = limits[0] if which == "hard" else limits[1]
        return float(value) if value else None

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
class _Summary:
    """Per-message facts the checkers ask about, each the last (or first) index of it."""

    last_delivery: int = _NEVER
    last_start: int = _NEVER
    last_revoked_delivery: int = _NEVER  # the latest delivery that was revoked
    last_lost: int = _NEVER
    last_return: int = _NEVER
    last_requeued: int = _NEVER  # the broker's own returns (not reject(requeue=True))
    first_copy_restore: int | None = None  # first visibility-timeout restore


@attrs.define(eq=False)
class Index:
    """The deliveries of a history and the events around them."""

    events: list[Event]
    deliveries: list[Delivery] = attrs.field(factory=list)
    by_message: dict[str, list[Delivery]] = attrs.field(factory=lambda: defaultdict(list))
    by_worker: dict[str, list[Delivery]] = attrs.field(factory=lambda: defaultdict(list))
    by_attempt: dict[str, Delivery] = attrs.field(factory=dict)
    publications: dict[str, Ref] = attrs.field(factory=dict)
    published: dict[str, list[Ref]] = attrs.field(factory=lambda: defaultdict(list))
    returns: dict[str, list[Ref]] = attrs.field(factory=lambda: defaultdict(list))
    #: ``requeued`` events by the attempt id they name (the delivery put back or copied).
    attempt_returns: dict[str, list[Ref]] = attrs.field(factory=lambda: defaultdict(list))
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
    _summaries: dict[str, _Summary] | None = attrs.field(default=None, repr=False)
    _faults_of: dict[str | None, list[Ref]] = attrs.field(
        factory=lambda: defaultdict(list), repr=False
    )
    _consumed: dict[str | None, bool] = attrs.field(factory=dict, repr=False)
    _successes: dict[str, list[int]] | None = attrs.field(default=None, repr=False)
    _twins: dict[int, bool] | None = attrs.field(default=None, repr=False)
    _settles: dict[str, list[Ref]] | None = attrs.field(default=None, repr=False)

    @property
    def end_time(self) -> float:
        return self.events[-1].time if self.events else 0.0

    # -- per-message summaries ----------------------------------------------------------

    def _summary(self, message_id: str) -> _Summary:
        summaries = self._summaries
        if summaries is None:
            summaries = self._summaries = self._summarize()
        return summaries.get(message_id) or _Summary()

    def _summarize(self) -> dict[str, _Summary]:
        out: dict[str, _Summary] = defaultdict(_Summary)
        for message_id, ds in self.by_message.items():
            s = out[message_id]
            for d in ds:
                s.last_delivery = max(s.last_delivery, d.at)
                if d.start_at is not None:
                    s.last_start = max(s.last_start, d.start_at)
                if d.revoked is not None:
                    s.last_revoked_delivery = max(s.last_revoked_delivery, d.at)
        for message_id, refs in self.lost.items():
            out[message_id].last_lost = max(j for j, _ in refs)
        for message_id, refs in self.returns.items():
            s = out[message_id]
            s.last_return = max(j for j, _ in refs)
            s.last_requeued = max((j for j, e in refs if e.kind == "requeued"), default=_NEVER)
            for j, e in refs:
                if e.details.get("reason") == "visibility-timeout":
                    s.first_copy_restore = j
                    break
        return dict(out)

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
        s = self._summary(message_id)
        return s.last_start > i or s.last_lost > i or s.last_revoked_delivery > i

    def returned_to_queue_after(self, message_id: str, i: int) -> bool:
        """Whether the message went back to its queue (requeued, rejected) after ``i``."""
        return self._summary(message_id).last_return > i

    def requeued_after(self, message_id: str, i: int) -> bool:
        """Whether the broker put the message back in its queue (``requeued``) after ``i``."""
        return self._summary(message_id).last_requeued > i

    def delivered_after(self, message_id: str, i: int) -> bool:
        """Whether the message was delivered (to any worker) after index ``i``."""
        return self._summary(message_id).last_delivery > i

    def consumed_at_end(self, queue: str | None) -> bool:
        """Whether a worker is up, connected and consuming ``queue`` when the history ends."""
        known = self._consumed.get(queue)
        if known is not None:
            return known
        up: dict[str | None, tuple[bool, Any]] = {}
        for _, e in self.faults:
            queues = up.get(e.worker, (False, None))[1]
            if e.kind == "worker-online":
                up[e.worker] = (True, e.details.get("queues"))
            elif e.kind == "connection-restored":
                up[e.worker] = (True, queues)
            elif e.kind in ("worker-crashed", "worker-offline", "connection-lost", "shutdown"):
                up[e.worker] = (False, queues)
        answer = any(on and (qs is None or queue is None or queue in qs) for on, qs in up.values())
        self._consumed[queue] = answer
        return answer

    def came_back(self, message_id: str, i: int, since: int | None = None) -> bool:
        """Whether the message ran again after ``i`` (or was revoked at receipt, or lost),
        or went back (after ``since``, default ``i``) to a queue that no worker consumes at
        the end of the history."""
        if self.returned_after(message_id, i):
            return True
        since = i if since is None else since
        if not self.returned_to_queue_after(message_id, since):
            return False
        pub = self.publications.get(message_id)
        return not self.consumed_at_end(pub[1].details.get("queue") if pub else None)

    def duplicated_before(self, message_id: str, i: int) -> bool:
        """Whether a visibility-timeout restore copied the message before index ``i``: from
        then on, another run of it is the documented duplicate (G6), not a redelivery."""
        first = self._summary(message_id).first_copy_restore
        return first is not None and first < i

    def restores_of(self, d: Delivery) -> list[Ref]:
        """The ``requeued`` events that put ``d``'s message back while ``d`` held it:
        its own restore, or a visibility-timeout copy made while it ran."""
        if d.attempt is not None:
            return self.attempt_returns.get(d.attempt, [])
        return [
            (j, e)
            for j, e in self.returns.get(d.message_id, ())
            if j > d.at and e.kind == "requeued" and e.worker in (None, d.worker)
        ]

    def twins(self, d: Delivery) -> bool:
        """Whether another delivery of ``d``'s message was held by ``d``'s worker at once.

        Without attempt ids such copies (visibility-timeout copies, a redelivery after a
        lost connection) are identical in the history: which one started, or was acked,
        first cannot be told, so timing checks skip them. With attempt ids every event
        names its delivery, and nothing needs skipping.
        """
        if d.attempt is not None:
            return False
        twins = self._twins
        if twins is None:
            twins = self._twins = self._find_twins()
        return twins.get(d.at, False)

    def _find_twins(self) -> dict[int, bool]:
        # Deliveries overlap when [at, until) intervals do; one sweep per message and
        # worker flags each that overlaps an earlier one, or the next one.
        end = len(self.events)

        def until(x: Delivery) -> int:
            if x.start_at is not None and x.outcome_at is None and x.died_at is None:
                return end  # still running, whether or not its channel is gone
            steps = [
                j for j in (x.settle_at, x.outcome_at, x.release_at, x.died_at) if j is not None
            ]
            return max(steps) if steps else end

        out: dict[int, bool] = {}
        for ds in self.by_message.values():
            per_worker: dict[str | None, list[Delivery]] = defaultdict(list)
            for d in ds:
                if d.attempt is None:
                    per_worker[d.worker].append(d)
            for mine in per_worker.values():
                reach = _NEVER
                for k, d in enumerate(mine):
                    ends = until(d)
                    nxt = mine[k + 1].at if k + 1 < len(mine) else end + 1
                    out[d.at] = d.at < reach or nxt < ends
                    reach = max(reach, ends)
        return out

    def deliveries_after(self, message_id: str, i: int) -> list[Delivery]:
        ds = self.by_message.get(message_id, [])
        return ds[bisect.bisect_right(ds, i, key=lambda d: d.at) :]

    def started_after(self, message_id: str, i: int) -> list[Delivery]:
        if self._summary(message_id).last_start <= i:
            return []
        return [
            d
            for d in self.by_message.get(message_id, ())
            if d.start_at is not None and d.start_at > i
        ]

    def first_settle_after(self, message_id: str, i: int) -> Ref | None:
        """The first ack or reject of any delivery of the message after ``i``, if any."""
        settles = self._settles
        if settles is None:
            settles = self._settles = defaultdict(list)
            for d in self.deliveries:
                s = d.settle
                if s is not None and d.settle_at is not None and s.kind in ("acked", "rejected"):
                    settles[d.message_id].append((d.settle_at, s))
            for refs in settles.values():
                refs.sort(key=lambda r: r[0])
        refs = settles.get(message_id, [])
        k = bisect.bisect_right(refs, i, key=lambda r: r[0])
        return refs[k] if k < len(refs) else None

    def published_after(self, task_id: str | None, i: int) -> list[Ref]:
        """The messages published for ``task_id`` after index ``i``."""
        refs = self.published.get(task_id or "", [])
        return refs[bisect.bisect_right(refs, i, key=lambda r: r[0]) :]

    def lost_after(self, message_id: str, i: int) -> list[Ref]:
        refs = self.lost.get(message_id, [])
        return refs[bisect.bisect_right(refs, i, key=lambda r: r[0]) :]

    def worker_events(self, worker: str | None, kinds: frozenset[str]) -> list[Ref]:
        return [(j, e) for j, e in self.faults_of(worker) if e.kind in kinds]

    def add_fault(self, i: int, event: Event) -> None:
        """File a worker or broker fault (the index builder calls this in history order)."""
        self.faults.append((i, event))
        self._faults_of[event.worker].append((i, event))

    def faults_of(self, worker: str | None) -> list[Ref]:
        """The worker's fault events (and the broker's, for worker None), in order."""
        return self._faults_of.get(worker, [])

    def next_fault(self, worker: str | None, kinds: frozenset[str], i: int) -> int:
        """Index of the first fault of ``kinds`` on ``worker`` after ``i`` (else the end)."""
        refs = self.faults_of(worker)
        for j, e in refs[bisect.bisect_right(refs, i, key=lambda r: r[0]) :]:
            if e.kind in kinds:
                return j
        return len(self.events)

    def stored_before(self, task_id: str | None, i: int) -> Ref | None:
        """The last effective backend write for ``task_id`` before index ``i``, if any."""
        writes = self.states.get(task_id or "", [])
        k = bisect.bisect_left(writes, i, key=lambda r: r[0])
        if not k:
            return None
        last = writes[k - 1]
        return last if last[0] > self._forgot_before(task_id, i) else None

    def succeeded_before(self, task_id: str | None, i: int) -> Ref | None:
        """The SUCCESS write for ``task_id`` in force at index ``i`` (None if none)."""
        successes = self._successes
        if successes is None:
            successes = self._successes = defaultdict(list)
            for key, writes in self.states.items():
                for k, (_, e) in enumerate(writes):
                    if e.details.get("state") == "SUCCESS":
                        successes[key].append(k)
        forgot = self._forgot_before(task_id, i)
        writes = self.states.get(task_id or "", [])
        mine = successes.get(task_id or "", [])
        # The first SUCCESS after the last forget before i, if it is before i.
        k = bisect.bisect_right(mine, forgot, key=lambda n: writes[n][0])
        if k < len(mine) and writes[mine[k]][0] < i:
            return writes[mine[k]]
        return None

    def _forgot_before(self, task_id: str | None, i: int) -> int:
        forgotten = self.forgotten.get(task_id or "", [])
        k = bisect.bisect_left(forgotten, i)
        return forgotten[k - 1] if k else _NEVER
