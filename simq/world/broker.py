"""The simulated broker: queues, consumers, unacked messages, ack/reject/requeue.

Internal. Each published message gets an :class:`Envelope` whose lifecycle is one
transition table (READY -> UNACKED -> ACKED | REJECTED | READY again | LOST). Delivery
is push-based, like AMQP ``basic.consume``: a queue's messages go round-robin to the
consumers that have room in their prefetch window. kombu's polling transports
(``transport="polling"``) are :class:`simq.world.polling.PollingBroker`, where each
consumer fetches its messages itself.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from simq.exceptions import InvalidArgument, SimqError
from simq.message import Message
from simq.validate import did_you_mean

__all__ = [
    "DEFAULT_VISIBILITY_TIMEOUT",
    "TRANSPORTS",
    "Broker",
    "Consumer",
    "Envelope",
    "MessageState",
    "Queue",
]

TRANSPORTS = ("amqp", "redis", "sqs", "polling")
#: kombu's defaults: redis.py (3600 s) and SQS (1800 s); amqp has no visibility timeout.
DEFAULT_VISIBILITY_TIMEOUT: dict[str, float] = {"redis": 3600.0, "sqs": 1800.0}


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


# A visibility-timeout copy says so in its `delivered` event; other deliveries do not.
_COPY = {"copy": True}


def _timelimit(value: Any) -> list[Any] | None:
    """Celery's ``timelimit`` header ``(hard, soft)`` as JSON; None when neither is set."""
    if not isinstance(value, list | tuple) or not any(v is not None for v in value):
        return None
    return list(value)


@attrs.define(eq=False, slots=True)
class Envelope:
    """The broker's live record of one message: where it is and who holds it."""

    message: Message
    state: MessageState = MessageState.READY
    holder: str | None = None
    redelivered: bool = False
    deliveries: int = 0
    copy: bool = False
    delivered_at: float | None = None
    vt_timer: Any = None  # the visibility-timeout restore pending for this delivery
    seq: int = 0  # publication order: where a requeued message goes back to
    tag: str | None = None  # the attempt id of its current (or last) delivery
    returning: bool = False  # requeued; deliverable again at the broker's next step

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
    """A named queue with the transport's priority semantics.

    ``mode`` "fifo": priorities ignored (RabbitMQ without ``x-max-priority``, SQS);
    "amqp": higher priority first, capped at ``max_priority``; "redis": kombu's priority
    steps 0/3/6/9, lower number first, no priority counting as 0.
    """

    __slots__ = ("_levels", "consumers", "count", "max_priority", "mode", "name", "rr")

    def __init__(self, name: str, max_priority: int | None = None, mode: str = "fifo") -> None:
        self.name = name
        self.max_priority = max_priority
        self.mode = mode
        self._levels: dict[int, deque[Envelope]] = {}
        self.consumers: list[Consumer] = []
        self.rr = 0
        self.count = 0

    def _level(self, envelope: Envelope) -> int:
        mode = self.mode
        if mode == "fifo":
            return 0
        priority = envelope.message.priority or 0
        if mode == "redis":
            # kombu's redis transport: lists for steps [0, 3, 6, 9]; a priority goes to the
            # step at or below it (Channel.priority: steps[bisect(steps, n) - 1]). What
            # int() cannot read counts as the default, 0 (_get_message_priority).
            try:
                priority = int(priority)
            except (TypeError, ValueError):
                priority = 0
            return max(step for step in (0, 3, 6, 9) if step <= min(max(priority, 0), 9))
        # RabbitMQ: higher is more urgent, capped at the queue's x-max-priority.
        return -min(max(priority, 0), self.max_priority or 0)

    def push(self, envelope: Envelope, front: bool = False) -> None:
        level = self._level(envelope)
        dq = self._levels.get(level)
        if dq is None:
            dq = self._levels[level] = deque()
        if front:
            # RabbitMQ requeues a message to its original position: ahead of everything
            # published after it, so messages requeued together keep their order.
            seq = envelope.seq
            i = 0
            for other in dq:
                if other.seq > seq:
                    break
                i += 1
            dq.insert(i, envelope)
        else:
            dq.append(envelope)
        self.count += 1

    def unpop(self, envelope: Envelope) -> None:
        """Put back the envelope :meth:`pop` just returned, where it was."""
        level = self._level(envelope)
        self._levels[level].appendleft(envelope)
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

    def clear(self) -> list[Envelope]:
        out = self.envelopes()
        self._levels.clear()
        self.count = 0
        return out

    def __len__(self) -> int:
        return self.count

    def envelopes(self) -> list[Envelope]:
        return [e for level in sorted(self._levels) for e in self._levels[level]]


class Broker:
    """Queues and deliveries for one simulation, with a transport's semantics.

    ``transport`` "amqp": an unacked message returns to its queue as soon as its
    channel closes (consumer crash, connection loss). "redis" and "sqs": it returns only
    when its visibility timeout (counted from delivery) runs out, and then even if its
    first holder still has it (kombu #337): the documented duplicate execution.
    """

    #: Whether consumers fetch their messages themselves (kombu's polling transports).
    polling = False

    def __init__(
        self,
        record: Callable[..., None],
        loop: Any,
        *,
        transport: str = "amqp",
        visibility_timeout: float | None = None,
        max_priority: int | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise SimqError(
                f"unknown transport {transport!r}; use one of {', '.join(TRANSPORTS)}"
                f"{did_you_mean(transport, TRANSPORTS)}"
            )
        self._record = record
        self.loop = loop
        self.transport = transport
        # Only redis and sqs emulate acks with a visibility timeout (G6); kombu's amqp
        # transport ignores a visibility_timeout in broker_transport_options.
        default_timeout = DEFAULT_VISIBILITY_TIMEOUT.get(transport)
        self.visibility_timeout = (
            None
            if default_timeout is None
            else visibility_timeout
            if visibility_timeout is not None
            else default_timeout
        )
        if self.visibility_timeout is not None and not self.visibility_timeout > 0:
            # kombu's Redis restores every unacked message older than the timeout, and
            # SQS makes a message visible again when it runs out: at 0 (or below) every
            # delivered message is handed out again at once, for ever.
            raise InvalidArgument(
                "Simulation(): app.conf.broker_transport_options['visibility_timeout'] must "
                f"be a number of seconds > 0 on the {transport} transport, got "
                f"{visibility_timeout!r}: the broker would hand every unacked message out "
                "again at once, for ever; pass the longest a task may run before its "
                f"message is redelivered (kombu's default: {default_timeout:g})"
            )
        if transport == "redis":
            self._mode = "redis"
        elif transport == "amqp" and max_priority is not None:
            self._mode = "amqp"
        else:
            self._mode = "fifo"
        self._max_priority = max_priority
        self.queues: dict[str, Queue] = {}
        self.envelopes: dict[str, Envelope] = {}
        self.copies: list[Envelope] = []  # visibility-timeout copies (not in ``envelopes``)
        self._dispatching = False
        self._pending: dict[str, None] = {}
        self._dispatch_soon = False
        self._returning: list[Envelope] = []  # requeued, back in their queues next step
        # Deliveries so far per message id, copies included: the next delivery's tag.
        self._delivered: dict[str, int] = {}

    @property
    def acks_emulated(self) -> bool:
        """Whether unacked messages return by visibility timeout (redis, sqs)."""
        return self.visibility_timeout is not None

    def queue(self, name: str) -> Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = Queue(name, self._max_priority, self._mode)
        return q

    # -- producing ---------------------------------------------------------------------

    def publish(self, message: Message) -> Envelope:
        envelope = Envelope(message, seq=len(self.envelopes))
        # Into the queue first: a message that cannot be queued raises here, before it is
        # recorded, so nothing is ever recorded published and then silently missing.
        self.queue(message.queue).push(envelope)
        self.envelopes[message.message_id] = envelope
        self._record_published(message, message.queue)
        # Delivery is the broker's own step, after the publisher's call returns (as on a
        # real broker): Celery's after_task_publish comes before any worker's receipt,
        # and a task that publishes never runs consumer code inside its own child.
        self._pending[message.queue] = None
        if not self._dispatch_soon:
            self._dispatch_soon = True
            self.loop.call_soon(self._dispatch_pending)
        return envelope

    def _dispatch_pending(self) -> None:
        self._dispatch_soon = False
        returning, self._returning = self._returning, []
        for envelope in returning:
            envelope.returning = False
            self._pending[envelope.message.queue] = None
        self.dispatch()

    def _record_published(self, message: Message, queue: str | None) -> None:
        headers = message.headers
        self._record(
            "published",
            task_id=message.task_id,
            message_id=message.message_id,
            task=message.task,
            queue=queue,
            retries=headers.get("retries", 0),
            eta=headers.get("eta"),
            expires=headers.get("expires"),
            priority=message.priority,
            parent_id=headers.get("parent_id"),
            root_id=headers.get("root_id"),
            # Per-call options the worker reads from the message, not the task: checkers
            # must judge each message by them (apply_async(ignore_result=, time_limit=)).
            ignore_result=headers.get("ignore_result"),
            timelimit=_timelimit(headers.get("timelimit")),
            # Group, chord, chain and link membership, only for canvas messages (the
            # canvas checkers, simq/checkers/canvas.py, read them).
            **message.canvas(),
        )

    def unroutable(self, message: Message, exchange: str, routing_key: str) -> None:
        """A message no queue is bound for: published, then lost, as on a real broker."""
        self._record_published(message, None)
        self._record(
            "lost",
            task_id=message.task_id,
            message_id=message.message_id,
            reason="unroutable",
            exchange=exchange,
            routing_key=routing_key,
        )

    def purge(self, name: str) -> int:
        """Drop every ready message of queue ``name`` (``app.control.purge``)."""
        q = self.queues.get(name)
        if q is None:
            return 0
        dropped = q.clear()
        for envelope in dropped:
            self.lose(envelope, "purged")
        return len(dropped)

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
            if envelope.returning:
                q.unpop(envelope)  # the broker's next step delivers it (see restore)
                return
            expires = envelope.message.expires
            if expires is not None and self.transport == "amqp" and self.loop.now >= expires:
                # RabbitMQ enforces the per-message TTL Celery sets from ``expires``
                # (celery/app/amqp.py): the message is dropped in the broker, no worker
                # sees it and its state stays PENDING (CELERY_SEMANTICS.md §3.2 G9).
                self.lose(envelope, "expired")
                continue
            self.deliver(envelope, consumer, name)
            consumers = q.consumers

    def deliver(self, envelope: Envelope, consumer: Consumer, queue: str) -> None:
        """Hand ``envelope``, just taken from ``queue``, to ``consumer``; record it."""
        envelope.move(MessageState.UNACKED)
        envelope.holder = consumer.name
        envelope.deliveries += 1
        envelope.delivered_at = self.loop.now
        message = envelope.message
        # The attempt id (the delivery tag the worker's kombu Message carries): the
        # message id and its delivery number, copies counted with the original, so
        # every event of this attempt names it and two live attempts stay apart.
        number = self._delivered[message.message_id] = (
            self._delivered.get(message.message_id, 0) + 1
        )
        envelope.tag = f"{message.message_id}.{number}"
        self._attempt_event(
            "delivered",
            envelope,
            consumer.name,
            queue=queue,
            redelivered=envelope.redelivered,
            **_COPY if envelope.copy else {},
        )
        if self.visibility_timeout is not None:
            envelope.vt_timer = self.loop.call_later(
                self.visibility_timeout, self._visibility_expired, envelope, envelope.deliveries
            )
        consumer.on_delivery(envelope)

    # -- dispositions ------------------------------------------------------------------

    def _attempt_event(
        self, kind: str, envelope: Envelope, worker: str | None, **details: Any
    ) -> None:
        """Record ``kind`` about ``envelope``, naming its attempt (its delivery tag)."""
        message = envelope.message
        self._record(
            kind,
            task_id=message.task_id,
            message_id=message.message_id,
            worker=worker,
            **details,
            attempt=envelope.tag,
        )

    def _settled(self, envelope: Envelope) -> None:
        # A settled delivery has no visibility timeout left to run out.
        if envelope.vt_timer is not None:
            envelope.vt_timer.cancel()
            envelope.vt_timer = None

    def ack(self, envelope: Envelope) -> None:
        self._settled(envelope)
        envelope.move(MessageState.ACKED)
        self._attempt_event("acked", envelope, envelope.holder)
        envelope.holder = None

    def reject(self, envelope: Envelope, requeue: bool) -> None:
        self._settled(envelope)
        self._attempt_event("rejected", envelope, envelope.holder, requeue=requeue)
        if requeue:
            self.restore(envelope, front=True, record=False)
        else:
            envelope.move(MessageState.REJECTED)
            envelope.holder = None

    def restore(
        self,
        envelope: Envelope,
        *,
        front: bool = True,
        record: bool = True,
        reason: str = "restored",
    ) -> None:
        """Put an unacked message back in its queue, flagged redelivered."""
        message = self._take_back(envelope, record, reason)
        envelope.redelivered = True
        self.queue(message.queue).push(envelope, front=front)
        # Redelivery is the broker's own step after the reject or the channel close, as
        # delivery is after a publish: RabbitMQ, and kombu's Redis and SQS, put a requeued
        # message back at once, with no delay, but never inside the consumer's call. As
        # its own step a poison message's loop shows in the event loop, where the
        # max_instant_steps guard stops it; no virtual delay is added.
        envelope.returning = True
        self._returning.append(envelope)
        if not self._dispatch_soon:
            self._dispatch_soon = True
            self.loop.call_soon(self._dispatch_pending)

    def _take_back(self, envelope: Envelope, record: bool, reason: str) -> Message:
        """The broker has ``envelope`` again, ready (``requeued`` [reason] if ``record``)."""
        self._settled(envelope)
        envelope.move(MessageState.READY)
        message = envelope.message
        if record:
            self._attempt_event("requeued", envelope, envelope.holder, reason=reason)
        envelope.holder = None
        return message

    def channel_closed(self, envelope: Envelope, reason: str) -> None:
        """The holder's channel closed with ``envelope`` unacked.

        amqp returns it now; redis and sqs leave it to the visibility timeout.
        """
        if envelope.state is not MessageState.UNACKED:
            return
        if self.visibility_timeout is None:
            self.restore(envelope, front=True, reason=reason)
        else:
            envelope.holder = None

    def _visibility_expired(self, envelope: Envelope, delivery: int) -> None:
        if envelope.state is not MessageState.UNACKED or envelope.deliveries != delivery:
            return
        message = envelope.message
        if envelope.holder is None:
            self.restore(envelope, front=True, reason="visibility-timeout")
            return
        # restore_visible re-queues a copy while the first holder still has the message.
        copy = Envelope(message, redelivered=True, copy=True, seq=envelope.seq)
        self.copies.append(copy)
        # The attempt named is the delivery copied: its holder keeps it.
        self._attempt_event(
            "requeued", envelope, envelope.holder, reason="visibility-timeout", copy=True
        )
        self.queue(message.queue).push(copy, front=True)
        self.dispatch(message.queue)

    def restart(self) -> int:
        """The broker restarts: what the transport keeps survives; return the count lost."""
        lost = 0
        if self.transport == "redis":
            # This Redis keeps nothing on disk: queued and unacked messages are gone.
            for name in sorted(self.queues):
                for envelope in self.queues[name].clear():
                    self.lose(envelope, "broker-restart")
                    lost += 1
            for envelope in [*self.envelopes.values(), *self.copies]:
                if envelope.state is MessageState.UNACKED:
                    self.lose(envelope, "broker-restart")
                    lost += 1
        return lost

    def lose(self, envelope: Envelope, reason: str) -> None:
        self._settled(envelope)
        held = envelope.state is MessageState.UNACKED
        envelope.move(MessageState.LOST)
        message = envelope.message
        self._record(
            "lost",
            task_id=message.task_id,
            message_id=message.message_id,
            worker=envelope.holder,
            reason=reason,
            # An unacked message is lost from its delivery; a queued one from no attempt.
            **{"attempt": envelope.tag} if held else {},
        )
        envelope.holder = None

    def ready(self) -> list[Envelope]:
        """Messages waiting in queues, in queue-name order."""
        return [e for name in sorted(self.queues) for e in self.queues[name].envelopes()]

    def unconsumed(self) -> dict[str, int]:
        """Queues that hold messages and have no consumer: ``{name: count}``."""
        return {n: len(q) for n, q in sorted(self.queues.items()) if len(q) and not q.consumers}

    def describe(self, envelope: Envelope) -> dict[str, Any]:
        return {"message_id": envelope.message.message_id, "state": envelope.state.value}
