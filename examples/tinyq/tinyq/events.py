"""The events tinyq records, in simq's vocabulary, and how they reach the sink.

Every write a process makes to Redis (a publication, an ack, a state) logs the event
that records it in the same transaction (:mod:`tinyq.broker`), and the process then
records the event in its sink. A process killed between the two leaves the event in the
log, and the adapter records it from there (:func:`record`), stamped as it was: the
history then says what really happened, even when a process dies between two lines.
"""

from __future__ import annotations

import time
from typing import Any

from simq_conformance.sink import Sink
from tinyq.broker import Broker, Event

__all__ = ["event", "publish", "record"]


def event(kind: str, task_id: str | None, message_id: str | None, worker: str | None,
          **details: Any) -> Event:  # fmt: skip
    """An event stamped now (before the write it records: another process may react)."""
    return {
        "kind": kind, "at": time.time(), "task_id": task_id, "message_id": message_id,
        "worker": worker, "details": details,
    }  # fmt: skip


def record(sink: Sink, e: Event) -> None:
    sink.record(e["kind"], e["task_id"], e["message_id"], e["worker"], at=e["at"], **e["details"])


def publish(broker: Broker, sink: Sink, msg: dict[str, Any], *, publisher: str) -> None:
    """Publish ``msg`` and record ``published``, with the details Celery's headers carry."""
    e = event(
        "published", msg["task_id"], msg["id"], None, task=msg["task"], queue="queue",
        retries=msg["retries"], eta=msg.get("eta"), expires=msg.get("expires"), priority=None,
        parent_id=None, root_id=msg["task_id"], ignore_result=False, timelimit=None,
    )  # fmt: skip
    broker.publish(msg, publisher, e)
    record(sink, e)
