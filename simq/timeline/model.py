"""What a timeline draws, read from a history: attempts as bars, faults as markers.

Everything here is a pure function of a :class:`~simq.History`. Times are seconds
relative to the history's first event.

An attempt is one delivery that a child started (a ``started`` event with its
``attempt`` id). It ends at its first outcome event (see :data:`OUTCOMES`); an attempt
still running when the history ends has outcome ``"running"`` and ends at the last
event. Started events name no child slot, so the attempts of one worker are packed into
lanes: each takes the lowest lane free at its start, in event order.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from simq.history import Event, History

__all__ = [
    "FAULTS",
    "OUTCOMES",
    "Bar",
    "Marker",
    "Timeline",
    "WorkerRow",
    "attempts",
    "build",
    "describe_exception",
    "markers",
]

#: Event kinds that end a started attempt, in the order a reader meets them.
OUTCOMES = (
    "succeeded",
    "failed",
    "retried",
    "ignored",
    "declined",
    "revoked",
    "child-lost",
    "child-killed",
    "cancelled",
    "time-limit",
    "lost",
    "requeued",
)
#: The outcome of an attempt the history ends in the middle of.
RUNNING = "running"
#: Event kinds drawn as fault markers.
FAULTS = (
    "worker-crashed",
    "connection-lost",
    "child-killed",
    "shutdown",
    "broker-restarted",
    "revoke",
    "fault-skipped",
    "worker-offline",
)
#: A fault's end, by fault kind: the event kind (on the same worker) that closes it.
_UNTIL = {
    "worker-crashed": "worker-online",
    "connection-lost": "connection-restored",
    "shutdown": "worker-offline",
}


@attrs.frozen
class Bar:
    """One started attempt.

    Attributes:
        attempt: The delivery's attempt id, e.g. ``"m4.1"``.
        task_id: The task's id.
        task: The task's name.
        message_id: The delivered message's id.
        worker: The worker whose child ran it.
        lane: The worker's child lane it is drawn in (0-based).
        start: When it started (seconds since the first event).
        end: When its outcome was recorded, or the history's end for ``"running"``.
        outcome: The kind of its first outcome event, or ``"running"``.
        retries: The task's retry count (``started`` ``retries``).
        redelivered: The broker flagged the delivery as a redelivery.
        previous: The attempt id of the previous started attempt of the same message
            (a redelivery) or, failing that, of the same task (a retry); ``None`` if none.
        previous_via: ``"message"`` or ``"task"``: what links ``previous`` to this one.
        exception: The exception of a ``failed``, ``retried`` or ``ignored`` outcome.
        detail: More about the outcome (a reason, an exit code, a time limit).
        seq: The position of its ``started`` event in the history.
    """

    attempt: str
    task_id: str
    task: str
    message_id: str
    worker: str
    lane: int
    start: float
    end: float
    outcome: str
    retries: int
    redelivered: bool
    previous: str | None
    previous_via: str | None
    exception: str | None
    detail: str | None
    seq: int

    @property
    def duration(self) -> float:
        return self.end - self.start


@attrs.frozen
class Marker:
    """One fault (or fault-like step) of a run.

    Attributes:
        kind: The event kind, one of :data:`FAULTS`.
        time: When (seconds since the first event).
        worker: The worker concerned, or ``None`` for the broker and broadcasts.
        task_id: The task concerned (``child-killed``, ``revoke``, ``fault-skipped``).
        attempt: The attempt concerned, if the event names one.
        label: A short human-readable description.
        until: When the fault's effect ended (a restart, a reconnection), if it did.
        seq: The position of its event in the history.
    """

    kind: str
    time: float
    worker: str | None
    task_id: str | None
    attempt: str | None
    label: str
    until: float | None
    seq: int


@attrs.frozen
class WorkerRow:
    """A worker's block: its name, its configured concurrency and the lanes drawn."""

    name: str
    concurrency: int
    lanes: int


@attrs.frozen
class Timeline:
    """Everything a renderer needs, in drawing order."""

    bars: tuple[Bar, ...]
    markers: tuple[Marker, ...]
    workers: tuple[WorkerRow, ...]
    span: float
    tasks: int
    events: int


def build(history: History) -> Timeline:
    """The bars, markers and worker blocks of ``history``."""
    bars = attempts(history)
    marks = markers(history)
    return Timeline(
        bars=tuple(bars),
        markers=tuple(marks),
        workers=tuple(_workers(history, bars)),
        span=(history.last().time - history.first().time) if len(history) else 0.0,
        tasks=len({e.task_id for e in history if e.task_id and e.kind in ("published", "started")}),
        events=len(history),
    )


@attrs.define
class _Open:
    """An attempt being read (local to :func:`attempts`)."""

    event: Event
    seq: int
    attempt: str
    lane: int
    start: float
    redelivered: bool
    previous: str | None
    previous_via: str | None
    end: float | None = None
    outcome: str | None = None
    exception: str | None = None
    detail: str | None = None
    notes: list[str] = attrs.field(factory=list)


def attempts(history: History) -> list[Bar]:
    """Every started attempt of ``history`` as a bar, in start order."""
    if not len(history):
        return []
    origin = history.first().time
    last = history.last().time - origin
    redelivered: dict[str, bool] = {}
    opened: dict[str, _Open] = {}
    running: dict[str, dict[str, _Open]] = collections.defaultdict(dict)  # worker: attempt
    by_message: dict[str, str] = {}
    by_task: dict[str, str] = {}
    order: list[_Open] = []
    for index, event in enumerate(history):
        now = event.time - origin
        key = _attempt_key(event, index)
        if event.kind == "delivered":
            redelivered[key] = bool(event.details.get("redelivered"))
        elif event.kind == "started" and event.worker is not None:
            busy = {item.lane for item in running[event.worker].values()}
            lane = next(n for n in range(len(busy) + 1) if n not in busy)
            previous, via = _previous(event, by_message, by_task)
            item = _Open(event, index, key, lane, now, redelivered.get(key, False), previous, via)
            opened[key] = running[event.worker][key] = item
            order.append(item)
            if event.message_id:
                by_message[event.message_id] = key
            if event.task_id:
                by_task[event.task_id] = key
        elif event.kind == "worker-offline" and event.worker is not None:
            for item in running.pop(event.worker, {}).values():
                _close(item, now, "lost", "worker went offline")
        elif key in opened:
            _follow(opened[key], event, now, running)
    return [_bar(item, last) for item in order]


def _attempt_key(event: Event, index: int) -> str:
    attempt = event.details.get("attempt")
    if isinstance(attempt, str):
        return attempt
    # A history without attempt ids: one attempt per message at a time.
    return f"{event.message_id or event.task_id or index}"


def _previous(
    event: Event, by_message: dict[str, str], by_task: dict[str, str]
) -> tuple[str | None, str | None]:
    if event.message_id and event.message_id in by_message:
        return by_message[event.message_id], "message"
    if event.task_id and event.task_id in by_task:
        return by_task[event.task_id], "task"
    return None, None


def _follow(item: _Open, event: Event, now: float, running: dict[str, dict[str, _Open]]) -> None:
    """Apply a later event of a started attempt."""
    kind = event.kind
    details = event.details
    if (
        kind in ("failed", "retried", "ignored")
        and item.exception is None
        and "exception" in details
    ):
        item.exception = describe_exception(details["exception"])
    if item.outcome is not None:
        return
    if kind == "time-limit" and details.get("which") != "hard":
        item.notes.append(f"soft time limit ({_number(details.get('limit'))} s)")
        return
    if kind not in OUTCOMES:
        return
    _close(item, now, kind, _detail(event))
    running[item.event.worker or ""].pop(item.attempt, None)


def _close(item: _Open, now: float, outcome: str, detail: str | None) -> None:
    item.end = now
    item.outcome = outcome
    item.detail = detail


def _detail(event: Event) -> str | None:
    details = event.details
    kind = event.kind
    if kind in ("requeued", "lost", "cancelled", "revoked") and details.get("reason"):
        return f"reason: {details['reason']}"
    if kind in ("child-lost", "child-killed"):
        return f"exit code {details.get('exitcode')}"
    if kind == "time-limit":
        return f"{details.get('which', 'hard')} time limit ({_number(details.get('limit'))} s)"
    if kind == "retried" and details.get("when") is not None:
        when = details["when"]
        return (
            f"retry in {_number(when)} s" if isinstance(when, (int, float)) else f"retry at {when}"
        )
    if kind == "declined":
        return f"requeue: {bool(details.get('requeue'))}"
    return None


def _bar(item: _Open, last: float) -> Bar:
    event = item.event
    detail = "; ".join([*item.notes, *([item.detail] if item.detail else [])]) or None
    return Bar(
        attempt=item.attempt,
        task_id=event.task_id or "",
        task=str(event.details.get("task", "?")),
        message_id=event.message_id or "",
        worker=event.worker or "",
        lane=item.lane,
        start=item.start,
        end=item.end if item.end is not None else last,
        outcome=item.outcome or RUNNING,
        retries=int(event.details.get("retries") or 0),
        redelivered=item.redelivered,
        previous=item.previous,
        previous_via=item.previous_via,
        exception=item.exception,
        detail=detail,
        seq=item.seq,
    )


def describe_exception(value: Any) -> str:
    """An exception as recorded (Celery's ``{"exc_type", "exc_message"}``) in one line."""
    if isinstance(value, dict) and "exc_type" in value:
        message = value.get("exc_message")
        if isinstance(message, (list, tuple)):
            message = ", ".join(str(part) for part in message)
        return f"{value['exc_type']}: {message}" if message else str(value["exc_type"])
    return str(value)


def markers(history: History) -> list[Marker]:
    """The faults of ``history`` (kinds in :data:`FAULTS`), in order."""
    if not len(history):
        return []
    origin = history.first().time
    events = list(history)
    out = []
    for index, event in enumerate(events):
        if event.kind not in FAULTS:
            continue
        until = _until(events, index)
        out.append(
            Marker(
                kind=event.kind,
                time=event.time - origin,
                worker=event.worker,
                task_id=event.task_id,
                attempt=event.details.get("attempt"),
                label=_label(event),
                until=None if until is None else until - origin,
                seq=index,
            )
        )
    return out


def _until(events: Sequence[Event], index: int) -> float | None:
    event = events[index]
    closer = _UNTIL.get(event.kind)
    if closer is None or event.worker is None:
        return None
    for later in _after(events, index):
        if later.kind == closer and later.worker == event.worker:
            return later.time
    return None


def _after(events: Sequence[Event], index: int) -> Iterable[Event]:
    return (events[n] for n in range(index + 1, len(events)))


def _label(event: Event) -> str:
    details = event.details
    kind = event.kind
    extra = ""
    if kind == "worker-crashed" and details.get("restart_after") is not None:
        extra = f" (restart after {_number(details['restart_after'])} s)"
    elif kind == "worker-offline" and details.get("reason"):
        extra = f" ({details['reason']})"
    elif kind == "shutdown":
        extra = " (warm)" if details.get("warm", True) else " (cold)"
    elif kind == "broker-restarted":
        extra = f" ({details.get('lost', 0)} messages lost)"
    elif kind in ("child-killed", "revoke") and event.task_id:
        extra = f" (task {event.task_id[:8]}"
        if kind == "revoke" and details.get("terminate"):
            extra += ", terminate"
        extra += ")"
    elif kind == "fault-skipped":
        extra = f" ({details.get('fault', '?')})"
    where = f" {event.worker}" if event.worker else ""
    return f"{kind}{where}{extra}"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _workers(history: History, bars: Sequence[Bar]) -> list[WorkerRow]:
    concurrency: dict[str, int] = {}
    for event in history:
        if event.worker is None:
            continue
        if event.kind == "worker-online":
            known = concurrency.get(event.worker, 0)
            concurrency[event.worker] = max(known, int(event.details.get("concurrency") or 1))
        else:
            concurrency.setdefault(event.worker, 0)
    lanes: dict[str, int] = collections.Counter()
    for bar in bars:
        lanes[bar.worker] = max(lanes[bar.worker], bar.lane + 1)
        concurrency.setdefault(bar.worker, 0)
    return [
        WorkerRow(name, count, max(count, lanes[name], 1)) for name, count in concurrency.items()
    ]
