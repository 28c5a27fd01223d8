"""Liveness: every run finishes (L1), nothing is lost (L2), and the recording is whole.

The checkers of :mod:`simq.checkers` judge safety: what a history must never show.
A run that never finishes, or a message that silently disappears, shows nothing wrong
to them, so these guarantees judge what a run *did not* reach::

    problems = check_l1(idx, config, result)   # an unfinished run, per unfinished task
    problems = check_l2(idx, config, result)   # a message that ended in no known end
    errors = recorder_errors(idx, result)      # the adapter recorded too little

A message **ends** acked, declined (``rejected`` without requeue), revoked, or dropped
by the broker as expired (``lost`` [expired]). An early-acked message whose task died
with its worker ended acked: that loss is Celery's documented behaviour (§3.1, the ack
table), recorded as ``lost`` [worker-crashed] on the attempt, not a lost message.

Times in messages are relative to the run's first publication (``+1.2 s``).
"""

from __future__ import annotations

import re

import attrs

from simq.checkers import CheckConfig, Violation
from simq.checkers.index import Delivery, Index
from simq.history import Event
from simq_conformance.adapter import RunResult

__all__ = [
    "MessageFate",
    "check_l1",
    "check_l2",
    "fates",
    "recorder_errors",
    "run_window",
    "unfinished",
]

#: Worker or broker events after which a worker no longer holds its unacked messages.
RELEASES = frozenset(
    {"worker-crashed", "connection-lost", "worker-offline", "broker-restarted", "shutdown"}
)
#: A ``lost`` reason that is an end, not a loss: the broker dropped an expired message.
_EXPIRED = "expired"
#: Events the L1 timeline of a task shows, with how each reads.
_TIMELINE_KINDS = frozenset(
    {
        "published",
        "delivered",
        "started",
        "acked",
        "rejected",
        "requeued",
        "ack-failed",
        "lost",
        "succeeded",
        "failed",
        "retried",
        "ignored",
        "declined",
        "revoked",
        "time-limit",
        "child-lost",
        "child-killed",
        "cancelled",
        "revoke",
    }
)
_WORKER_FAULTS = frozenset(
    {
        "worker-crashed",
        "connection-lost",
        "connection-restored",
        "worker-offline",
        "worker-online",
        "shutdown",
        "broker-restarted",
    }
)
_TIMED_OUT = re.compile(r"timed out after ([0-9.]+) s")
#: Events shown per unfinished task.
_SHOWN = 6


def _key(event: Event) -> str:
    return event.message_id or f"task:{event.task_id}"


@attrs.frozen
class MessageFate:
    """How one published message ended, or where it was left.

    Attributes:
        key: The message id (``task:<id>`` when the history has none).
        task_id: Its task.
        task: The task name.
        published: Its ``published`` event, if recorded.
        end: The event that ended it (None: it did not end).
        how: ``acked``, ``declined``, ``revoked``, ``expired``, ``lost`` (a loss the
            broker recorded), or ``open`` (no end).
        last_delivery: Its last delivery, if any.
        released_by: For an open message: the event that took it back from its last
            holder (a crash, a lost connection, a shutdown, a requeue, a failed ack), if
            any; None when it was never delivered or its holder still has it.
    """

    key: str
    task_id: str | None
    task: str | None
    published: Event | None
    end: Event | None
    how: str
    last_delivery: Delivery | None = attrs.field(default=None, eq=False, repr=False)
    released_by: Event | None = None

    @property
    def ended(self) -> bool:
        return self.how != "open"


def _end_of(d: Delivery) -> tuple[Event, str] | None:
    """The end one delivery reached by itself, if any."""
    s = d.settle
    if s is not None and s.kind == "acked":
        return s, "acked"
    if s is not None and s.kind == "rejected" and not s.details.get("requeue"):
        return s, "declined"
    if d.revoked is not None:
        return d.revoked, "revoked"
    return None


def _message_end(e: Event) -> str | None:
    if e.kind == "acked":
        return "acked"
    if e.kind == "rejected" and not e.details.get("requeue"):
        return "declined"
    if e.kind == "revoked":
        return "revoked"
    if e.kind == "lost":
        reason = e.details.get("reason")
        if reason == "worker-crashed":
            return None  # the attempt's loss; its message was acked already
        return "expired" if reason == _EXPIRED else "lost"
    return None


def fates(idx: Index) -> list[MessageFate]:
    """Every published or delivered message's fate, in order of first appearance.

    A message ended when its last delivery reached an end itself, or an end event of
    the message follows that delivery (or its publication, if it was never delivered).
    """
    order: list[str] = []
    events: dict[str, list[tuple[int, Event]]] = {}
    for i, e in enumerate(idx.events):
        if e.kind in ("published", "delivered") or (
            e.kind in ("acked", "rejected", "revoked", "lost") and (e.message_id or e.task_id)
        ):
            key = _key(e)
            if key not in events:
                if e.kind not in ("published", "delivered"):
                    continue
                order.append(key)
                events[key] = []
            events[key].append((i, e))
    out: list[MessageFate] = []
    for key in order:
        pub = idx.publications.get(key)
        deliveries = idx.by_message.get(key, [])
        last = max(deliveries, key=lambda d: d.at, default=None)
        start = last.at if last is not None else (pub[0] if pub else -1)
        end: tuple[Event, str] | None = _end_of(last) if last is not None else None
        if end is None:
            for j, e in events[key]:
                how = _message_end(e)
                if j > start and how is not None:
                    end = (e, how)
                    break
        first = events[key][0][1]
        task = (pub[1].details.get("task") if pub else None) or (last.task if last else None)
        if end is not None:
            out.append(
                MessageFate(key, first.task_id, task, pub[1] if pub else None, end[0], end[1], last)
            )
            continue
        released = _released(idx, last) if last is not None else None
        out.append(
            MessageFate(
                key, first.task_id, task, pub[1] if pub else None, None, "open", last, released
            )
        )
    return out


def _released(idx: Index, d: Delivery) -> Event | None:
    """What took an unended delivery back from its worker, if anything did."""
    s = d.settle
    if s is not None and (s.kind == "ack-failed" or s.details.get("requeue")):
        return s
    if d.release is not None:
        return d.release
    for j, e in idx.faults:
        if j > d.at and e.kind in RELEASES and (e.worker in (None, d.worker)):
            return e
    return None


def _running(idx: Index) -> list[Delivery]:
    """Attempts started and still running at the end (not died, cancelled or ended)."""
    end = len(idx.events)
    return [d for d in idx.deliveries if d.start is not None and d.running_at(end)]


def run_window(result: RunResult) -> tuple[float, float]:
    """``(t0, cut)``: the first publication's time and when the run was stopped.

    The cut is ``result.stopped_at`` when the adapter says when it stopped the run, else
    ``t0`` plus its timeout when its notes say it timed out ("timed out after 30.0 s"),
    else the last event's time.
    """
    history = list(result.history)
    if not history:
        return 0.0, 0.0
    pubs = [e.time for e in history if e.kind == "published"]
    t0 = min(pubs) if pubs else history[0].time
    last = max(e.time for e in history)
    if result.stopped_at is not None:
        return t0, max(last, result.stopped_at)
    for note in result.notes:
        m = _TIMED_OUT.search(note)
        if m:
            return t0, max(last, t0 + float(m.group(1)))
    return t0, last


def unfinished(idx: Index) -> dict[str, list[str]]:
    """Task id -> why it is unfinished: an open message or an attempt still running."""
    out: dict[str, list[str]] = {}
    for f in fates(idx):
        if not f.ended:
            out.setdefault(f.task_id or f.key, []).append(f.key)
    for d in _running(idx):
        out.setdefault(d.task_id or d.message_id, []).append(d.message_id)
    return out


# -- L1 ------------------------------------------------------------------------------


def check_l1(idx: Index, config: CheckConfig, result: RunResult) -> list[Violation]:
    """L1: every run finishes within the adapter's deadline.

    An incomplete run fails once per unfinished task, naming it and its last events in
    relative seconds; an incomplete run with nothing visibly unfinished fails once,
    quoting the adapter's notes.
    """
    if result.complete:
        return []
    t0, cut = run_window(result)
    window = cut - t0
    keys = {tid: key for key, tid in result.task_ids.items()}
    left = unfinished(idx)
    out: list[Violation] = []
    for tid in left:
        events = _task_events(idx, tid)
        task = next((e.details.get("task") for e in events if e.details.get("task")), None)
        name = keys.get(tid)
        label = f"task {name} ({task or '?'}, id {tid})" if name else f"task {tid} ({task or '?'})"
        steps = [_phrase(e, t0) for e in events]
        if len(steps) > _SHOWN:
            steps = ["...", *steps[-_SHOWN:]]
        steps.append(f"{_never(idx, tid)} within {window:.0f} s")
        out.append(Violation("L1", f"{label}: " + ", ".join(steps), tuple(events[-_SHOWN:])))
    if not out:
        notes = "; ".join(result.notes) or "no notes"
        out.append(
            Violation(
                "L1",
                f"the run did not finish within {window:.0f} s, yet every message ended "
                f"and no attempt runs (adapter notes: {notes})",
            )
        )
    return out


def _task_events(idx: Index, task_id: str) -> list[Event]:
    """The task's own events and the faults of the workers that held it, in order."""
    mine = [(i, e) for i, e in enumerate(idx.events) if e.task_id == task_id]
    holders: dict[str | None, int] = {}
    for i, e in mine:
        if e.kind == "delivered":
            holders.setdefault(e.worker, i)
    faults = [
        (i, e)
        for i, e in idx.faults
        if e.kind in _WORKER_FAULTS
        and (e.worker is None or (e.worker in holders and i > holders[e.worker]))
    ]
    out: list[Event] = []
    for _, e in sorted(
        [(i, e) for i, e in mine if e.kind in _TIMELINE_KINDS] + faults, key=lambda r: r[0]
    ):
        if (
            e.kind == "worker-offline"
            and out
            and out[-1].kind == "worker-crashed"
            and out[-1].worker == e.worker
        ):
            continue  # the crash said it
        out.append(e)
    return out


def _rel(e: Event, t0: float) -> str:
    return f"+{e.time - t0:.1f} s"


def _phrase(e: Event, t0: float) -> str:
    """One event as a few words: ``delivered to worker-2 +1.3 s``."""
    at = _rel(e, t0)
    w = e.worker or "?"
    kind = e.kind
    simple = {
        "published": "published",
        "acked": f"acked by {w}",
        "succeeded": f"succeeded on {w}",
        "failed": f"failed on {w}",
        "retried": f"retried on {w}",
        "ignored": f"ignored on {w}",
        "declined": f"declined on {w}",
        "child-lost": f"child lost on {w}",
        "child-killed": f"child killed on {w}",
        "cancelled": f"cancelled on {w}",
        "ack-failed": f"ack failed on {w}",
        "worker-crashed": f"{w} killed",
        "connection-lost": f"{w} lost its connection",
        "connection-restored": f"{w} reconnected",
        "worker-offline": f"{w} offline",
        "worker-online": f"{w} online",
        "broker-restarted": "broker restarted",
    }
    if kind in simple:
        text = simple[kind]
        if kind == "published" and e.details.get("retries"):
            text = f"published (retry {e.details['retries']})"
    elif kind == "delivered":
        text = f"{'redelivered' if e.details.get('redelivered') else 'delivered'} to {w}"
    elif kind == "started":
        text = f"started on {w}"
    elif kind == "rejected":
        text = f"rejected by {w}" + (" (requeue)" if e.details.get("requeue") else "")
    elif kind == "requeued":
        text = f"requeued ({e.details.get('reason', '?')})"
    elif kind == "lost":
        text = f"lost ({e.details.get('reason', '?')})"
    elif kind == "revoked":
        text = f"revoked on {w}"
    elif kind == "revoke":
        text = "revoke sent" + (" (terminate)" if e.details.get("terminate") else "")
    elif kind == "time-limit":
        text = f"{e.details.get('which', '?')} time limit on {w}"
    elif kind == "shutdown":
        text = f"{w} {'warm' if e.details.get('warm') else 'cold'} shutdown"
    else:
        text = kind
    return f"{text} {at}"


def _never(idx: Index, task_id: str) -> str:
    """What the unfinished task never reached."""
    open_fates = [f for f in fates(idx) if f.task_id == task_id and not f.ended]
    if open_fates:
        f = open_fates[-1]
        d = f.last_delivery
        if d is None:
            return "never delivered"
        if f.released_by is not None:
            return "never redelivered"
        if d.start is None:
            return "never started"
        if d.outcome is None and d.running_at(len(idx.events)):
            return "never finished"
        return "never acked"
    return "never finished"


# -- L2 ------------------------------------------------------------------------------


def check_l2(idx: Index, config: CheckConfig, result: RunResult) -> list[Violation]:
    """L2: every published message ends acked, revoked, declined or expired.

    Fails for a message the broker recorded as lost (other than expired, or an
    early-acked task that died with its worker: its message was acked), and for one
    taken back from its holder by a fault (crash, lost connection, shutdown, failed
    ack, requeue) that never came back: in a complete run, or in an incomplete run
    once the time left after the fault exceeded the transport's redelivery delay
    (its visibility timeout on redis/sqs) plus the transport slack. A message open for
    any other reason is the recorder's fault (:func:`recorder_errors`) or, in an
    incomplete run, L1's. A transport that loses messages by design declares ``Deviation("L2", why)``.
    """
    out: list[Violation] = []
    t0, cut = run_window(result)
    vt = config.effective_visibility_timeout if config.transport in ("redis", "sqs") else None
    grace = (vt or 0.0) + max(config.transport_tolerance, 1.0) + 1.0
    for f in fates(idx):
        label = f"message {f.key} of task {f.task_id} ({f.task or '?'})"
        if f.how == "lost" and f.end is not None:
            out.append(
                Violation(
                    "L2",
                    f"{label} was lost at {_rel(f.end, t0)} "
                    f"({f.end.details.get('reason', 'no reason')}); a message ends acked, "
                    "revoked, declined or expired",
                    _evidence(f.published, f.end),
                )
            )
            continue
        r = f.released_by
        if f.ended or r is None:
            continue
        if not result.complete and cut - r.time < grace:
            continue
        within = "although the run drained" if result.complete else f"within {cut - r.time:.0f} s"
        d = f.last_delivery
        held = f" held by {d.worker}" if d is not None else ""
        out.append(
            Violation(
                "L2",
                f"{label}{held} unacked was taken back by {_phrase(r, t0)} and never "
                f"delivered again {within}: the transport lost it",
                _evidence(f.published, d.event if d else None, r),
            )
        )
    return out


def _evidence(*events: Event | None) -> tuple[Event, ...]:
    return tuple(e for e in events if e is not None)


# -- recorder completeness -----------------------------------------------------------


def recorder_errors(idx: Index, result: RunResult) -> list[Violation]:
    """What the adapter failed to record: the run cannot be judged on it.

    A delivery without a publication of its message; in a complete run, a message with
    no end that nothing took back from its holder (delivered and never settled, or
    published and never delivered, with no ``lost``).
    """
    out: list[Violation] = []
    t0, _ = run_window(result)
    seen: set[str] = set()
    for d in idx.deliveries:
        if d.publication is None and d.message_id not in seen:
            seen.add(d.message_id)
            out.append(
                Violation(
                    "recorder",
                    f"message {d.message_id} of task {d.task_id} was delivered to {d.worker} "
                    f"at {_rel(d.event, t0)} but its publication was not recorded",
                    (d.event,),
                )
            )
    if result.complete:
        for f in fates(idx):
            if f.ended or f.released_by is not None:
                continue
            last = f.last_delivery
            where = (
                f"delivered to {last.worker} at {_rel(last.event, t0)}"
                if last is not None
                else "published and never delivered"
            )
            out.append(
                Violation(
                    "recorder",
                    f"message {f.key} of task {f.task_id} ({f.task or '?'}) was {where} and "
                    "has no end (ack, reject, revoke, loss) although the adapter reported "
                    "the run complete",
                    _evidence(f.published, last.event if last else None),
                )
            )
    return out
