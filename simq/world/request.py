"""A worker's record of one delivered message, and its rate bucket.

Internal. :class:`Delivery` follows one lifecycle table (received -> ETA-held ->
rate-wait -> reserved -> active -> done); the ack decision itself is Celery's
(``Request.on_success``/``on_failure``); :class:`TokenBucket` is kombu's bucket with
capacity 1 (§6).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs

from simq.exceptions import SimqError
from simq.message import Message
from simq.world.broker import Envelope

if TYPE_CHECKING:
    from simq.engine.loop import Timer

__all__ = ["Delivery", "RequestState", "TokenBucket"]


class RequestState(enum.Enum):
    RECEIVED = "received"
    ETA_HELD = "eta-held"
    RATE_WAIT = "rate-wait"
    RESERVED = "reserved"
    ACTIVE = "active"
    DONE = "done"


_NEXT: dict[RequestState, frozenset[RequestState]] = {
    RequestState.RECEIVED: frozenset(
        {RequestState.ETA_HELD, RequestState.RATE_WAIT, RequestState.RESERVED, RequestState.DONE}
    ),
    RequestState.ETA_HELD: frozenset(
        {RequestState.RATE_WAIT, RequestState.RESERVED, RequestState.DONE}
    ),
    RequestState.RATE_WAIT: frozenset({RequestState.RESERVED, RequestState.DONE}),
    RequestState.RESERVED: frozenset({RequestState.ACTIVE, RequestState.DONE}),
    RequestState.ACTIVE: frozenset({RequestState.DONE}),
    RequestState.DONE: frozenset(),
}

# The same table by value: string hashes are cached, enum hashes are not (hot path).
_ALLOWED = {old.value: frozenset(n.value for n in new) for old, new in _NEXT.items()}


@attrs.define(eq=False, slots=True)
class Delivery:
    """The worker's live record of one delivered message and its Celery Request."""

    envelope: Envelope
    worker: Any
    celery: Any = None  # the celery.worker.request.Request made for this delivery
    state: RequestState = RequestState.RECEIVED
    acked: bool = False
    timer: Timer | None = None
    orphaned: bool = False  # its channel closed: an ack or reject can no longer land
    tag: str | None = None  # the attempt id: the delivery tag of its kombu Message
    # Handed on by the worker's timer (an ETA that fired, a rate limit), not by the
    # consumer; with ``eta_held``, its ETA hold still widens the window until it starts.
    by_timer: bool = False
    eta_held: bool = False

    @property
    def message(self) -> Message:
        return self.envelope.message

    @property
    def id(self) -> str:
        return self.envelope.message.task_id

    @property
    def task_name(self) -> str:
        return self.envelope.message.task

    @property
    def task(self) -> Any:
        return self.celery.task

    @property
    def acks_late(self) -> bool:
        return bool(self.celery.task.acks_late)

    def move(self, new: RequestState) -> None:
        if new._value_ not in _ALLOWED[self.state._value_]:
            raise SimqError(
                f"illegal request transition {self.state.value} -> {new.value} "
                f"for task {self.task_name}[{self.id}]"
            )
        self.state = new


class TokenBucket:
    """kombu's TokenBucket with capacity 1: starts full, refills at ``rate`` per second."""

    __slots__ = ("rate", "stamp", "tokens", "waiting")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = 1.0
        self.stamp = now
        self.waiting: deque[Delivery] = deque()

    def can_consume(self, now: float) -> bool:
        self.tokens = min(1.0, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        # Epoch seconds near 2030 carry ~2.4e-7 s of float resolution, so a refill of
        # exactly 1/rate can read slightly short. Tolerate a few ulps of the clock;
        # otherwise the retry delay rounds to zero and the bucket never refills.
        if self.tokens >= 1.0 - 1e-9 - 4 * math.ulp(now) * self.rate:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False

    def expected_time(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)
