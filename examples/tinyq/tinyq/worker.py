"""One tinyq worker process: ``python -m tinyq.worker URL PREFIX NAME SINK CONF``.

It takes one message at a time (concurrency 1, prefetch 1), runs its probe, and acks as
Celery does: at the start by default, after the outcome with ``task_acks_late``. Every
step is recorded in the run's sink, in simq's event vocabulary, with one ``attempt`` id
per delivery. SIGTERM is a warm shutdown: the running task finishes, nothing new starts.

``TINYQ_BUG`` plants a bug, to show that the conformance suite catches it:
``early-ack`` acks every message at its start even with ``task_acks_late`` (G2 fails);
``no-reclaim`` never takes back a dead worker's unacked messages (the run never ends:
L1 fails).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
import time
import uuid
from typing import Any

from simq_conformance.sink import Sink
from tinyq import probes
from tinyq.broker import Broker, iso, parse_iso
from tinyq.events import event, publish, record

#: The bugs ``TINYQ_BUG`` can plant.
BUGS = ("early-ack", "no-reclaim")
_RECLAIM_EVERY = 0.25
_CELERY = "celery.exceptions"


def _exception(exc_type: str, message: str, module: str = "builtins") -> dict[str, Any]:
    """An exception as Celery's JSON backends store it."""
    return {"exc_type": exc_type, "exc_module": module, "exc_message": [message]}


class Worker:
    def __init__(self, broker: Broker, name: str, sink: Sink, conf: dict[str, Any]) -> None:
        self.broker, self.name, self.sink = broker, name, sink
        self.late = bool(conf.get("task_acks_late")) and os.environ.get("TINYQ_BUG") != "early-ack"
        self.acks_on_failure = bool(conf.get("task_acks_on_failure", True))
        self.dedupe = bool(conf.get("worker_deduplicate_successful_tasks"))
        self.reclaims = os.environ.get("TINYQ_BUG") != "no-reclaim"
        self.stopping = False
        self._attempts = itertools.count(1)
        self.attempt = ""  # the current delivery's id, unique in the run

    def record(self, kind: str, msg: dict[str, Any], **details: Any) -> None:
        """Record a step of the current attempt (one message at a time: concurrency 1)."""
        self.sink.record(
            kind, msg["task_id"], msg["id"], self.name, attempt=self.attempt, **details
        )

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._warm_shutdown)
        self.broker.heartbeat(self.name)
        threading.Thread(target=self._beat, daemon=True).start()
        self.reclaim()
        self.sink.record("worker-online", worker=self.name, concurrency=1, prefetch_multiplier=1)
        reclaimed_at = time.monotonic()
        while not self.stopping:
            self.broker.promote_due()
            if time.monotonic() - reclaimed_at > _RECLAIM_EVERY:
                self.reclaim()
                reclaimed_at = time.monotonic()
            raw = self.broker.take(self.name, timeout=0.05)
            if raw is not None:
                self.handle(raw)
        self.broker.leave(self.name)
        self.sink.record("worker-offline", worker=self.name, reason="shutdown")

    def _warm_shutdown(self, *_: Any) -> None:
        # Recorded here, as the worker learns of it: that is when the shutdown begins.
        self.sink.record("shutdown", worker=self.name, warm=True)
        self.stopping = True

    def reclaim(self) -> None:
        if self.reclaims:  # TINYQ_BUG=no-reclaim leaves dead workers' messages where they are
            self.broker.reclaim_dead()

    def _beat(self) -> None:
        while True:
            self.broker.heartbeat(self.name)
            time.sleep(0.2)

    def handle(self, raw: bytes) -> None:
        msg = json.loads(raw)
        self.attempt = f"{self.name}.{next(self._attempts)}"
        self.record("delivered", msg, queue="queue", redelivered=msg["redelivered"])
        # SIGTERM waits while the worker decides to start: a shutdown is recorded either
        # before the start (then nothing starts) or after it, never in between (G17).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            started = self.start(msg, raw)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if not started:
            return
        if self.deduplicates(msg):
            self.record("succeeded", msg, deduplicated=True)
            self.settle(msg, raw, "ack")
            return
        if not self.late:
            self.settle(msg, raw, "ack")
        probe = msg["task"].removeprefix("probes.")
        outcome = probes.run(probe, list(msg["args"] or []), self.broker.count)
        action = self.finish(msg, outcome)
        if self.late:
            self.settle(msg, raw, action)

    def start(self, msg: dict[str, Any], raw: bytes) -> bool:
        """Record the start, or give the message back (shutting down) or revoke it."""
        if self.stopping:  # taken as the warm shutdown began: give it back
            self.record("requeued", msg, reason="shutdown")
            self.broker.requeue(self.name, raw)
            return False
        expires = parse_iso(msg.get("expires"))
        if expires is not None and time.time() > expires:
            self.record("revoked", msg, reason="expired", expired=True, terminated=False)
            self.store(msg, "REVOKED", _exception("TaskRevokedError", "expired", _CELERY))
            self.settle(msg, raw, "ack")
            return False
        self.record("started", msg, task=msg["task"], retries=msg["retries"])
        return True

    def deduplicates(self, msg: dict[str, Any]) -> bool:
        """worker_deduplicate_successful_tasks: skip a redelivered task that succeeded."""
        if not (self.late and self.dedupe and msg["redelivered"]):
            return False
        return self.broker.state(msg["task_id"]) == "SUCCESS"

    def finish(self, msg: dict[str, Any], outcome: probes.Outcome) -> str:
        """Store and record the outcome in Celery's order; the acks_late action it calls for."""
        if isinstance(outcome, probes.Returned):
            self.store(msg, "SUCCESS", outcome.value)
            self.record("succeeded", msg)
            return "ack"
        if isinstance(outcome, probes.Retry):
            # The retry is published before RETRY is stored and before the ack (G13).
            retry = dict(msg, id=uuid.uuid4().hex, retries=msg["retries"] + 1, redelivered=False)
            retry["eta"] = iso(time.time() + outcome.countdown)
            publish(self.broker, self.sink, retry, publisher=self.name)
            cause = outcome.cause
            exc = None if cause is None else _exception(cause.exc_type, cause.message)
            self.store(msg, "RETRY", exc or _exception("Retry", "retry", _CELERY))
            self.record("retried", msg, exception=exc, when=outcome.countdown)
            return "ack"
        if isinstance(outcome, probes.Failed):
            exc = _exception(outcome.exc_type, outcome.message)
            self.store(msg, "FAILURE", exc)
            self.record("failed", msg, exception=exc)
            return "ack" if self.acks_on_failure else "reject"
        if isinstance(outcome, probes.Rejected):
            self.record("declined", msg, requeue=outcome.requeue)
            if outcome.requeue:
                return "requeue"
            self.store(msg, "FAILURE", _exception("Reject", outcome.message, _CELERY))  # 5.7
            return "reject"
        self.record("ignored", msg, exception=None)
        return "ack"

    def store(self, msg: dict[str, Any], state: str, result: Any) -> None:
        e = event("state", msg["task_id"], None, self.name, state=state, result=result,
                  attempt=self.attempt)  # fmt: skip
        if not self.broker.store(msg["task_id"], state, result, e):
            e["kind"] = "state-discarded"
        record(self.sink, e)

    def settle(self, msg: dict[str, Any], raw: bytes, action: str) -> None:
        """Ack, reject (drop) or reject with requeue, recorded as of when it was issued."""
        where = (msg["task_id"], msg["id"], self.name)
        if action == "requeue":
            e = event("rejected", *where, requeue=True, attempt=self.attempt)
            self.broker.requeue(self.name, raw)
        elif action == "ack":
            e = event("acked", *where, attempt=self.attempt)
            self.broker.ack(self.name, raw, e)
        else:
            e = event("rejected", *where, requeue=False, attempt=self.attempt)
            self.broker.ack(self.name, raw, e)  # a reject without requeue drops it too
        record(self.sink, e)


if __name__ == "__main__":
    url, prefix, name, sink, conf = sys.argv[1:]
    Worker(Broker.connect(url, prefix), name, Sink(sink), json.loads(conf)).serve()
