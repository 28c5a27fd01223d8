"""Closing the recorder's gaps from what the deployment itself kept (internal).

The recorder writes each step from the process that takes it, a moment after the step:
a process killed in that moment takes the record with it. Two such gaps are closed
here, each from the deployment's own ground truth, and every event recorded for them
carries ``reconciled``, a sentence saying what was read and why the event was missing:

* **A final state written by a process that died before recording it.** A pool child
  stores SUCCESS (or FAILURE) in the result backend, then is killed before its
  ``state`` event is written; Celery's parent finds the state stored and acts on it
  (5.7 keeps a SUCCESS stored before a child was lost). After the run, the result
  backend's stored state and ``date_done`` of each task whose attempt died are read
  back (:func:`read_stored`), and a state the history lacks is recorded at its
  ``date_done``, on the dying attempt (:func:`missing_states`).
* **A publication that nobody received, and that is not in the broker's store.** Two
  deaths leave one. A pool child records ``published`` (Celery's ``before_task_publish``
  signal) a moment before kombu writes the message: killed in between, it never sends
  it. And kombu's virtual transports take a message out of the store when a worker
  fetches it (the SQLAlchemy transport hides the row, ``filesystem://`` moves the file
  away) while the worker's QoS holds it in memory until the ack: a worker killed
  between the fetch and the recorder's ``delivered`` loses it unseen (the documented
  G4 deviation). While the run waits, such a message, absent from the store
  (:func:`stored_message_ids`) at two reads a second apart, is recorded ``lost``
  [publisher-died] or [fetched-by-killed-worker] (:func:`unreceived_loss`); without
  one of those deaths nothing is recorded, and the run waits on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from celery import states

from simq.checkers.index import OUTCOMES
from simq.history import Event
from simq_conformance.sink import Record

__all__ = [
    "ATTEMPT_ENDS",
    "FETCHED_BY_KILLED_WORKER",
    "PUBLISHER_DIED",
    "WORKER_GONE",
    "Dying",
    "Reconciled",
    "StoredState",
    "crashes_after",
    "death_of_publisher",
    "dying_attempts",
    "missing_states",
    "read_stored",
    "stored_message_ids",
    "unreceived_loss",
]

#: The ``lost`` reason of a message a killed worker fetched before it recorded it.
FETCHED_BY_KILLED_WORKER = "fetched-by-killed-worker"
#: The ``lost`` reason of a message whose publisher died before kombu wrote it.
PUBLISHER_DIED = "publisher-died"
#: A worker's events after which it holds none of its messages (the broker no longer
#: counts its deliveries as held).
WORKER_GONE = frozenset({"worker-offline", "worker-crashed", "connection-lost"})
#: Events after which an attempt no longer runs: its outcome (the checkers' OUTCOMES),
#: a revoke, a cancel, or its loss with its worker. The adapter's one definition.
ATTEMPT_ENDS = OUTCOMES | frozenset({"revoked", "cancelled", "lost"})


@attrs.frozen
class StoredState:
    """A task's final state as the result backend keeps it.

    Attributes:
        task_id: The task.
        state: ``SUCCESS``, ``FAILURE`` or ``REVOKED``.
        result: The stored value in the form the recorder records (an exception in
            Celery's json form).
        done: ``date_done`` in epoch seconds.
    """

    task_id: str
    state: str
    result: Any
    done: float


@attrs.frozen
class Dying:
    """An attempt whose process died while it ran: its last records may be missing.

    Attributes:
        task_id: Its task.
        message_id: Its message.
        attempt: Its attempt id.
        worker: The worker it ran on.
        started: When it started (epoch seconds).
        died: When the death was recorded (``child-lost``, or the worker's crash).
        how: ``"child-lost"`` or ``"worker-crashed"``.
    """

    task_id: str
    message_id: str | None
    attempt: str
    worker: str | None
    started: float
    died: float
    how: str


@attrs.frozen
class Reconciled:
    """An event to record that the recorder could not: :meth:`record` writes it."""

    kind: str
    at: float
    task_id: str | None
    message_id: str | None
    worker: str | None
    details: Mapping[str, Any]

    @property
    def event(self) -> Event:
        """The history event it becomes."""
        return Event(
            self.kind, self.at, self.task_id, self.message_id, self.worker, dict(self.details)
        )

    def record(self, sink: Any) -> None:
        """Append this event to ``sink`` (a :class:`~simq_conformance.sink.Sink`)."""
        sink.record(
            self.kind,
            task_id=self.task_id,
            message_id=self.message_id,
            worker=self.worker,
            at=self.at,
            **dict(self.details),
        )


# -- final states ------------------------------------------------------------------------


def dying_attempts(events: Iterable[Event]) -> list[Dying]:
    """Attempts that started and then died with their process, in order of start.

    A ``child-lost`` ends an attempt with its child; a ``worker-crashed`` ends every
    attempt still running on that worker (the whole process group was killed).
    """
    started: dict[str, Event] = {}
    ended: set[str] = set()
    out: dict[str, Dying] = {}
    for e in sorted(events, key=lambda e: e.time):
        attempt = e.details.get("attempt")
        if e.kind == "started" and attempt is not None and e.task_id is not None:
            started[str(attempt)] = e
        elif e.kind == "child-lost" and attempt is not None and str(attempt) in started:
            out[str(attempt)] = _dying(started[str(attempt)], e.time, "child-lost")
        elif e.kind in ATTEMPT_ENDS and attempt is not None:
            ended.add(str(attempt))
        elif e.kind == "worker-crashed":
            for key, s in started.items():
                if s.worker == e.worker and key not in ended and key not in out:
                    out[key] = _dying(s, e.time, "worker-crashed")
    return sorted(out.values(), key=lambda d: d.started)


def _dying(start: Event, died: float, how: str) -> Dying:
    return Dying(
        task_id=str(start.task_id),
        message_id=start.message_id,
        attempt=str(start.details["attempt"]),
        worker=start.worker,
        started=start.time,
        died=died,
        how=how,
    )


def missing_states(events: Sequence[Event], stored: Mapping[str, StoredState]) -> list[Reconciled]:
    """``state`` events the history lacks though the backend holds them.

    A task's stored final state is missing when the history's last state write of the
    task records another state (or none), and an attempt of the task that died explains
    the gap: it started before the state's ``date_done`` and died after it. The event
    is recorded at ``date_done`` (kept between the attempt's start and its death, so
    the checkers read it before the death, where it happened), on that attempt.
    A gap no dying attempt explains is not filled: it is the recorder's to fix.
    """
    last: dict[str, str | None] = {}
    for e in events:
        if e.kind in ("state", "state-discarded") and e.task_id is not None:
            last[e.task_id] = e.details.get("state") if e.kind == "state" else last.get(e.task_id)
    out: list[Reconciled] = []
    dying = dying_attempts(events)
    for task_id, kept in stored.items():
        if last.get(task_id) == kept.state:
            continue
        writer = next(
            (
                d
                for d in reversed(dying)
                if d.task_id == task_id and d.started <= kept.done <= d.died
            ),
            None,
        )
        if writer is None:
            continue
        at = min(kept.done, writer.died - 1e-6)
        why = (
            f"read back from the result backend after the run: {kept.state} stored at "
            f"{_iso(kept.done)}, while attempt {writer.attempt} ran on {writer.worker}; its "
            f"process died ({writer.how}) before the recorder wrote the state"
        )
        out.append(
            Reconciled(
                "state",
                at,
                task_id,
                writer.message_id,
                writer.worker,
                {
                    "state": kept.state,
                    "result": kept.result,
                    "attempt": writer.attempt,
                    "reconciled": why,
                },
            )
        )
    return out


def read_stored(backend: Any, task_ids: Iterable[str]) -> dict[str, StoredState]:
    """The final states ``backend`` (a Celery result backend) holds for ``task_ids``.

    Tasks with no final state stored (pending, started, retrying) are left out, and so
    is one the backend cannot read: the reconciliation then adds nothing for it.
    """
    from simq_conformance.adapters._celery_recorder import _safe

    out: dict[str, StoredState] = {}
    for task_id in task_ids:
        try:
            meta = backend.get_task_meta(task_id)
        except Exception:  # an unreadable result: nothing to reconcile from
            continue
        state, done = meta.get("status"), _epoch(meta.get("date_done"))
        if state not in states.READY_STATES or done is None:
            continue
        try:
            value = _safe(backend.encode_result(meta.get("result"), state))
        except Exception:
            value = _safe(meta.get("result"))
        out[task_id] = StoredState(task_id, str(state), value, done)
    return out


def _epoch(value: Any) -> float | None:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:  # Celery stores UTC
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="milliseconds")


# -- messages nobody received --------------------------------------------------------------


def death_of_publisher(published: Record, records: Sequence[Record]) -> Event | None:
    """The death of the process that published ``published``, if it died right after.

    A pool child records ``published`` from Celery's ``before_task_publish`` signal, a
    moment before kombu writes the message to the broker: a child killed in between
    (found in sqla+sqlite: killed 12 ms after it recorded a retry's publication, while
    it waited for SQLite's write lock) never sends it. The child is known by its pid:
    its own ``started`` before the publication names its attempt, and the death is the
    ``child-lost`` of that attempt or the crash of its worker, with no record of the
    child after the publication.
    """
    mine = [r for r in records if r.pid == published.pid]
    if any(r.order > published.order for r in mine):
        return None  # it lived on (sent it, or recorded more)
    starts = [r.event for r in mine if r.event.kind == "started" and r.order < published.order]
    if not starts:
        return None  # the test process, or a worker's parent: they are not killed mid-send
    start = starts[-1]
    attempt = start.details.get("attempt")
    for r in sorted(records, key=lambda r: r.order):
        e = r.event
        if r.order <= published.order:
            continue
        if e.kind == "child-lost" and attempt is not None and e.details.get("attempt") == attempt:
            return e
        if e.kind == "worker-crashed" and e.worker == start.worker:
            return e
    return None


def crashes_after(published: Record, records: Sequence[Record]) -> list[Event]:
    """Workers killed since the message was last seen: any of them may have fetched it.

    Last seen: the latest event naming the message (its publication, a delivery, a
    requeue), or the moment its holder went away (a shutdown puts its unacked
    messages back in the store).
    """
    key = published.event.message_id
    since = published.event.time
    holder: str | None = None
    for r in sorted(records, key=lambda r: r.order):
        e = r.event
        if key is not None and e.message_id == key:
            since = max(since, e.time)
            holder = e.worker if e.kind == "delivered" else holder
        elif holder is not None and e.worker == holder and e.kind in WORKER_GONE:
            since, holder = max(since, e.time), None
    return [r.event for r in records if r.event.kind == "worker-crashed" and r.event.time > since]


def unreceived_loss(
    published: Record, records: Sequence[Record], gone_since: float
) -> Reconciled | None:
    """``lost`` for a message no live worker recorded, missing from the store, if a death
    explains it (None if none does: that gap is the recorder's to fix).

    Two deaths do: its publisher's right after it recorded the publication (the message
    was never written to the broker: ``lost`` [publisher-died]), or a worker killed
    since (it fetched the message, kombu's virtual QoS held it in the killed process's
    memory: ``lost`` [fetched-by-killed-worker], the G4 deviation). The event is stamped
    at that death.
    """
    p = published.event
    missing = (
        f"not in the broker's store since {_iso(gone_since)} (read again a second later) "
        "and never recorded as delivered"
    )
    died = death_of_publisher(published, records)
    if died is not None:
        why = (
            f"{missing}: its publisher, a pool child of {died.worker}, died ({died.kind}) "
            "after Celery's before_task_publish and before kombu wrote the message"
        )
        if died.kind == "worker-crashed":
            why = (
                f"{missing}: its publisher, a pool child of {died.worker}, was killed with "
                "its worker right after Celery's before_task_publish: kombu never wrote "
                f"the message, or {died.worker} fetched it and lost it with its memory "
                "(the G4 deviation)"
            )
        return Reconciled(
            "lost",
            died.time,
            p.task_id,
            p.message_id,
            None,
            {"reason": PUBLISHER_DIED, "reconciled": why},
        )
    crashes = crashes_after(published, records)
    if not crashes:
        return None
    first = min(crashes, key=lambda e: e.time)
    killed = sorted({str(e.worker) for e in crashes})
    who = killed[0] if len(killed) == 1 else f"one of {', '.join(killed)}"
    why = (
        f"{missing}: fetched by {who}, killed before its recorder wrote the delivery; "
        "kombu's virtual QoS held it in the killed process's memory (the G4 deviation)"
    )
    return Reconciled(
        "lost",
        first.time,
        p.task_id,
        p.message_id,
        killed[0] if len(killed) == 1 else None,
        {"reason": FETCHED_BY_KILLED_WORKER, "reconciled": why},
    )


def stored_message_ids(
    driver: str, url: str, transport_options: Mapping[str, Any], queue: str
) -> frozenset[str] | None:
    """simq message ids of the messages waiting in ``queue`` (not fetched by anyone).

    Read in kombu's own store: the SQLAlchemy transport's visible rows, the
    ``filesystem://`` data folder's files. Any other transport answers only when its
    queue is empty (kombu's message count); otherwise None: it cannot tell.
    """
    from kombu import Connection

    from simq_conformance.adapters._celery_recorder import HEADER

    conn = Connection(url, transport_options=dict(transport_options), connect_timeout=5)
    try:
        channel = conn.default_channel
        if driver == "sqlalchemy":
            model = channel.message_cls
            rows = channel._query_all(queue).filter(model.visible == True)  # noqa: E712
            payloads = [_payload(row.payload) for row in rows]
            channel.session.commit()
        elif driver == "filesystem":
            payloads = list(_folder_payloads(Path(channel.data_folder_in), queue))
        else:
            count = channel.queue_declare(queue=queue, passive=True).message_count
            return frozenset() if count == 0 else None
    finally:
        conn.release()
    return frozenset(
        str(p["headers"][HEADER]) for p in payloads if p and (p.get("headers") or {}).get(HEADER)
    )


def _payload(raw: Any) -> dict[str, Any] | None:
    try:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _folder_payloads(folder: Path, queue: str) -> Iterable[dict[str, Any] | None]:
    suffix = f".{queue}.msg"
    for name in os.listdir(folder):
        if not name.endswith(suffix):
            continue
        try:
            raw = (folder / name).read_bytes()
        except OSError:  # fetched meanwhile
            continue
        yield _payload(raw)
