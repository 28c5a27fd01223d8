"""A history read by delivery: which events belong to which attempt.

Internal to the checkers. One pass over the history files every delivery-scoped event
under the :class:`Delivery` it concerns:

* ``started``, outcomes (``succeeded``, ``failed``, ``retried``, ``ignored``,
  ``declined``, ``child-lost``, ``revoked`` with ``terminated``) and marks
  (``time-limit``, ``cancelled``, ``child-killed``) go to their delivery;
* ``acked``, ``rejected``, ``ack-failed`` settle a delivery; ``requeued`` (unless it
  restored a copy), ``lost`` and a worker's crash, connection loss or going offline
  release it from the worker's hold; ``lost`` [worker-crashed] marks an early-acked
  attempt that died with its worker;
* ``state`` writes (they carry no message id) and writes the backend discarded
  (``state-discarded``) go to the attempt that made them.

An event that carries an ``attempt`` id goes to the delivery whose ``delivered`` event
named it, in constant time. One without (a history recorded before simq wrote ids, or
by a recorder that does not) is filed by order (:mod:`simq.checkers.order`): a step goes
to the earliest delivery of its message on its worker still waiting for one, a write to
the attempt of that task on that worker whose last step came just before. Copies of one
message held by one worker at once are then identical in the history; timing checks
skip them (:meth:`Index.twins`) rather than guess which copy did what.

A history without message ids (some real-broker recordings) is read with the task id
in their place, which merges retries of one task; checkers then see less, not wrong.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from simq.checkers.model import Delivery as Delivery
from simq.checkers.model import Index as Index
from simq.checkers.model import Ref as Ref
from simq.checkers.order import WRITES_BEFORE as _WRITES_BEFORE
from simq.checkers.order import done as _done
from simq.checkers.order import last_step as _last_step
from simq.checkers.order import latest as _latest
from simq.checkers.order import next_step as _next_step
from simq.checkers.order import reattribute as _reattribute
from simq.checkers.order import stored_revoked as _stored_revoked
from simq.history import Event, History

__all__ = ["Delivery", "Index", "Ref", "index_of"]

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

_CRASH = frozenset({"worker-crashed"})


def _key(event: Event) -> str:
    return event.message_id or f"task:{event.task_id}"


class _Builder:
    def __init__(self, history: History) -> None:
        self.idx = Index(list(history))
        self.by_key: dict[tuple[str, str | None], list[Delivery]] = defaultdict(list)
        self.pending: list[tuple[int, Event, list[Delivery]]] = []
        self.reused: set[str] = set()  # attempt ids given to more than one delivery

    def attempt(self, event: Event) -> Delivery | None:
        """The delivery ``event`` names by its attempt id, if it names a known one."""
        tag = event.details.get("attempt")
        return None if tag is None else self.idx.by_attempt.get(str(tag))

    def candidates(self, event: Event) -> list[Delivery]:
        key = _key(event)
        if event.worker is None:
            return list(self.idx.by_message.get(key, ()))
        found = self.by_key.get((key, event.worker))
        if found:
            # An attempt started, ended and settled takes no more events: drop it, so a
            # message delivered again and again is matched in linear time.
            found[:] = [d for d in found if not _done(d)]
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
            if d.attempt is None:
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
        tag = e.details.get("attempt")
        if tag is None:
            return
        tag = str(tag)
        first = idx.by_attempt.get(tag)
        if first is None and tag not in self.reused:
            idx.by_attempt[tag] = d
            d.attempt = tag
        elif first is not None:
            # Two deliveries under one id (a doctored or broken recording): neither can be
            # told apart by it, so both are matched by order, as without ids.
            first.attempt = None
            del idx.by_attempt[tag]
            self.reused.add(tag)

    def on_requeued(self, i: int, e: Event) -> None:
        self.idx.returns[_key(e)].append((i, e))
        tag = e.details.get("attempt")
        if tag is not None:
            self.idx.attempt_returns[str(tag)].append((i, e))
        if e.details.get("copy"):
            return  # the holder keeps its copy (kombu #337): not a release
        d = self.attempt(e)
        if d is not None:
            if d.settle is None and d.release is None:
                d.release, d.release_at = e, i
            return
        self._release(self.candidates(e), i, e)

    def on_lost(self, i: int, e: Event) -> None:
        d = self.attempt(e)
        if e.details.get("reason") == "worker-crashed":
            # An early-acked task that died with its worker: its message was acked, the
            # loss is the attempt's, not the broker's (G4).
            if d is None:
                d = self.pick(
                    self.candidates(e),
                    lambda d: d.died_at is not None and d.lost is None and d.settle is not None,
                )
            if d is not None:
                d.lost, d.lost_at = e, i
                if d.settle is None:
                    # An unacked message lost with its worker: the message itself is gone
                    # (G4 judges whether the transport allows it: kombu's virtual QoS).
                    self.idx.lost[_key(e)].append((i, e))
            else:
                self.idx.orphans.append((i, e))
            return
        self.idx.lost[_key(e)].append((i, e))
        if d is not None:
            if d.settle is None and d.release is None:
                d.release, d.release_at = e, i
            return
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
        d = self.attempt(e)
        if d is not None:
            if d.start is not None:
                self.idx.orphans.append((i, e))  # an attempt starts once
                return
        else:

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
        d = self.attempt(e)
        if d is not None:
            if d.settle is not None:
                self.idx.orphans.append((i, e))  # a second ack or reject of one delivery
                return
            d.settle, d.settle_at = e, i
            return
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
        d = self.attempt(e)
        if d is not None:
            return d

        def running(d: Delivery) -> bool:
            return d.start is not None and d.outcome is None

        def alive(d: Delivery) -> bool:
            # An attempt cancelled, or killed with its crashed worker, reports nothing
            # more: a later outcome on that worker belongs to a redelivery.
            crashed = self.idx.next_fault(d.worker, _CRASH, d.start_at or 0)
            return running(d) and crashed >= len(self.idx.events) and not d.marks_of("cancelled")

        return self.pick(self.candidates(e), alive, running)

    def _outcome(self, i: int, e: Event) -> None:
        d = self.attempt(e)
        if d is None:
            d = self._running(e)
            if e.details.get("deduplicated"):
                # G14's skip ends the attempt that just started, not an older one still
                # running on a lost channel.
                running = [
                    x for x in self.candidates(e) if x.start_at is not None and x.outcome is None
                ]
                d = max(running, key=lambda x: x.start_at or 0, default=d)
        elif d.outcome is not None:
            d = None  # an attempt ends once
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
        d = self.attempt(e)
        if d is not None:
            if d.start is not None and d.outcome is None:
                d.outcome, d.outcome_at = e, i  # terminated while it ran
            d.revoked, d.revoked_at = e, i
            return
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
        d = self.attempt(e) or self.pick(
            self.candidates(e), lambda d: d.start is None and d.unregistered is None
        )
        if d is not None:
            d.unregistered, d.unregistered_at = e, i

    # A message the consumer cannot decode or does not accept (consumer.py on_decode_error,
    # on_invalid_task) is acked or rejected before any Request exists, like an unknown task.
    on_undecodable = on_unregistered

    # -- backend ----------------------------------------------------------------------

    def _writer(self, i: int, e: Event) -> Delivery | None:
        d = self.attempt(e)
        if d is not None or e.worker is None:
            return d
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
        self.idx.add_fault(i, e)
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
