"""The simulated broker: queues, consumers, unacked messages, ack/reject/requeue.

Internal. Each published message gets an :class:`Envelope` whose lifecycle is one
transition table (READY -> UNACKED -> ACKED | REJECTED | READY again | LOST). Delivery
is push-based, like AMQP ``basic.consume``: a queue's messages go round-robin to the
consumers that have room in their prefetch window.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from simq.exceptions import SimqError
from simq.message import Message

__all__ = ["Broker", "Consumer", "Envelope", "MessageState", "Queue"]


class MessageState(enum.Enum):
    READY = "ready"
    UNACKED = "unacked"
    ACKED = "acked"
    REJECTED = "rejected"
    LOST = "lost"


_TRANSITIONS: dict[MessageState, frozenset[MessageState]] = {
    MessageState.READY: frozenset({MessageState.UNACKED, MessageState.LOST}),
    MessageState.UNACKED: frozenset(
        {MessageState.ACKED, MessageState.REJECTED, MessageState.READY, MessageState.LOST}
    ),
    MessageState.ACKED: frozenset(),
    MessageState.REJECTED: frozenset(),
    MessageState.LOST: frozenset(),
}


# The same table by value: string hashes are cached, enum hashes are not (hot path).
_ALLOWED = {old.value: frozenset(n.value for n in new) for old, new in _TRANSITIONS.items()}


@attrs.define(eq=False, slots=True)
class Envelope:
    """The broker's live record of one message: where it is and who holds it."""

    message: Message
    state: MessageState = MessageState.READY
    holder: str | None = None
    redelivered: bool = False
    deliveries: int = 0

    def move(self, new: MessageState) -> None:
        if new._value_ not in _ALLOWED[self.state._value_]:
            raise SimqError(
                f"illegal message transition {self.state.value} -> {new.value} for {self!r}"
            )
        self.state = new

    def __repr__(self) -> str:
        m = self.message
        return f"<Envelope {m.message_id} task={m.task}[{m.task_id}] {self.state.value}>"


class Consumer(Protocol):
    """A worker's consuming side, as the broker sees it."""

    name: str

    def capacity(self) -> int:
        """How many more messages it may be sent now (prefetch window)."""

    def on_delivery(self, envelope: Envelope) -> None:
        """Take a delivered message."""


class Queue:
    """A named queue. ``max_priority`` None: FIFO; else higher priority first (AMQP)."""

    __slots__ = ("_levels", "consumers", "count", "max_priority", "name", "rr")

    def __init__(self, name: str, max_priority: int | None = None) -> None:
        self.name = name
        self.max_priority = max_priority
        self._levels: dict[int, deque[Envelope]] = {}
        self.consumers: list[Consumer] = []
        self.rr = 0
        self.count = 0

    def _level(self, envelope: Envelope) -> int:
        if self.max_priority is None:
            return 0
        priority = envelope.message.priority or 0
        # RabbitMQ: higher is more urgent, capped at the queue's x-max-priority.
        return -min(max(priority, 0), self.max_priority)

    def push(self, envelope: Envelope, front: bool = False) -> None:
        level = self._level(envelope)
        dq = self._levels.get(level)
        if dq is None:
            dq = self._levels[level] = deque()
        if front:
            dq.appendleft(envelope)
        else:
            dq.append(envelope)
        self.count += 1

    def pop(self) -> Envelope | None:
        if not self.count:
            return None
        levels = self._levels
        for level in sorted(levels) if len(levels) > 1 else levels:
            dq = levels[level]
            if dq:
                self.count -= 1
                return dq.popleft()
        return None

    def __len__(self) -> int:
        return self.count

    def envelopes(self) -> list[Envelope]:
        return [e for level in sorted(self._levels) for e in self._levels[level]]


class Broker:
    """Queues and deliveries for one simulation."""

    def __init__(self, record: Callable[..., None], max_priority: int | None = None) -> None:
        self._record = record
        self._max_priority = max_priority
        self.queues: dict[str, Queue] = {}
        self.envelopes: dict[str, Envelope] = {}
        self._dispatching = False
        self._pending: dict[str, None] = {}

    def queue(self, name: str) -> Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = Queue(name, self._max_priority)
        return q

    # -- producing ---------------------------------------------------------------------

    def publish(self, message: Message) -> Envelope:
        envelope = Envelope(message)
        self.envelopes[message.message_id] = envelope
        headers = message.headers
        self._record(
            "published",
            task_id=message.task_id,
            message_id=message.message_id,
            task=message.task,
            queue=message.queue,
            retries=headers.get("retries", 0),
            eta=headers.get("eta"),
            expires=headers.get("expires"),
            priority=message.priority,
            parent_id=headers.get("parent_id"),
            root_id=headers.get("root_id"),
        )
        self.queue(message.queue).push(envelope)
        self.dispatch(message.queue)
        return envelope

    # -- consuming ---------------------------------------------------------------------

    def consume(self, queue: str, consumer: Consumer) -> None:
        q = self.queue(queue)
        if consumer not in q.consumers:
            q.consumers.append(consumer)
        self.dispatch(queue)

    def cancel(self, queue: str, consumer: Consumer) -> None:
        q = self.queues.get(queue)
        if q is not None and consumer in q.consumers:
            q.consumers.remove(consumer)

    def dispatch(self, *queues: str) -> None:
        """Deliver ready messages of ``queues`` to consumers with room, round-robin."""
        pending = self._pending
        for name in queues:
            pending[name] = None
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while pending:
                name = next(iter(pending))
                del pending[name]
                self._dispatch_one(name)
        finally:
            self._dispatching = False

    def _dispatch_one(self, name: str) -> None:
        q = self.queues.get(name)
        if q is None or not q.consumers:
            return
        consumers = q.consumers
        while q.count:
            n = len(consumers)
            for i in range(n):
                consumer = consumers[(q.rr + i) % n]
                if consumer.capacity() > 0:
                    q.rr = (q.rr + i + 1) % n
                    break
            else:
                return
            envelope = q.pop()
            if envelope is None:
                return
            envelope.move(MessageState.UNACKED)
            envelope.holder = consumer.name
            envelope.deliveries += 1
            message = envelope.message
            self._record(
                "delivered",
                task_id=message.task_id,
                message_id=message.message_id,
                worker=consumer.name,
                queue=name,
                redelivered=envelope.redelivered,
            )
            consumer.on_delivery(envelope)
            consumers = q.consumers

    # -- dispositions ------------------------------------------------------------------

    def ack(self, envelope: Envelope) -> None:
        envelope.move(MessageState.ACKED)
        message = envelope.message
        self._record("acked", task_id=message.task_id, message_id=message.message_id,
                     worker=envelope.holder)
        envelope.holder = None

    def reject(self, envelope: Envelope, requeue: bool) -> None:
        message = envelope.message
        self._record("rejected", task_id=message.task_id, message_id=message.message_id,
                     worker=envelope.holder, requeue=requeue)
        if requeue:
            self.restore(envelope, front=True, record=False)
        else:
            envelope.move(MessageState.REJECTED)
            envelope.holder = None

    def restore(self, envelope: Envelope, *, front: bool = True, record: bool = True,
                reason: str = "restored") -> None:
        """Put an unacked message back in its queue, flagged redelivered."""
        envelope.move(MessageState.READY)
        message = envelope.message
        if record:
            self._record("requeued", task_id=message.task_id, message_id=message.message_id,
                         worker=envelope.holder, reason=reason)
        envelope.holder = None
        envelope.redelivered = True
        self.queue(message.queue).push(envelope, front=front)
        self.dispatch(message.queue)

    def lose(self, envelope: Envelope, reason: str) -> None:
        envelope.move(MessageState.LOST)
        message = envelope.message
        self._record("lost", task_id=message.task_id, message_id=message.message_id,
                     worker=envelope.holder, reason=reason)
        envelope.holder = None

    def ready(self) -> list[Envelope]:
        """Messages waiting in queues, in queue-name order."""
        return [e for name in sorted(self.queues) for e in self.queues[name].envelopes()]

    def unconsumed(self) -> dict[str, int]:
        """Queues that hold messages and have no consumer: ``{name: count}``."""
        return {n: len(q) for n, q in sorted(self.queues.items()) if len(q) and not q.consumers}

    def describe(self, envelope: Envelope) -> dict[str, Any]:
        return {"message_id": envelope.message.message_id, "state": envelope.state.value}
