"""A worker's record of one delivered message, its ack decision and its rate bucket.

Internal. :class:`Request` follows one lifecycle table (received -> ETA-held ->
rate-wait -> reserved -> active -> done); :func:`ack_decision` is CELERY_SEMANTICS.md
§3.1; :class:`TokenBucket` is kombu's bucket with capacity 1 (§6).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs

from simq import states
from simq.exceptions import SimqError
from simq.message import Message
from simq.runtime import LOST, Context, Outcome
from simq.world.broker import Envelope

if TYPE_CHECKING:
    from simq.engine.loop import Timer

__all__ = ["ACK", "NONE", "Decision", "Request", "RequestState", "TokenBucket", "ack_decision"]


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
class Request:
    """The worker's live record of one delivered message."""

    envelope: Envelope
    task: Any
    context: Context
    state: RequestState = RequestState.RECEIVED
    acked: bool = False
    timer: Timer | None = None
    orphaned: bool = False  # its channel closed: an ack or reject can no longer land
    cancelled: bool = False

    @property
    def message(self) -> Message:
        return self.envelope.message

    @property
    def id(self) -> str:
        return self.envelope.message.task_id

    @property
    def acks_late(self) -> bool:
        return bool(self.task.acks_late)

    def move(self, new: RequestState) -> None:
        if new._value_ not in _ALLOWED[self.state._value_]:
            raise SimqError(
                f"illegal request transition {self.state.value} -> {new.value} "
                f"for task {self.context.task}[{self.id}]"
            )
        self.state = new


@attrs.frozen(slots=True)
class Decision:
    """What the parent does with the message after an attempt."""

    action: str  # "ack" | "reject" | "none" (already acked at start)
    requeue: bool = False


NONE = Decision("none")
ACK = Decision("ack")


def ack_decision(task: Any, outcome: Outcome, acked: bool) -> Decision:
    """The disposition of the message for ``outcome`` (CELERY_SEMANTICS.md §3.1)."""
    if acked:
        return NONE
    if not task.acks_late:
        return NONE
    state = outcome.state
    if state in (states.SUCCESS, states.RETRY, states.IGNORED):
        return ACK
    if state == states.REJECTED:
        return Decision("reject", outcome.requeue)
    if state == states.FAILURE:
        return ACK if task.acks_on_failure else Decision("reject", False)
    if state == LOST:
        if task.reject_on_worker_lost:
            return Decision("reject", True)
        return ACK if task.acks_on_failure else Decision("reject", False)
    raise SimqError(f"no ack decision for outcome {outcome.state!r}")


class TokenBucket:
    """kombu's TokenBucket with capacity 1: starts full, refills at ``rate`` per second."""

    __slots__ = ("rate", "stamp", "tokens", "waiting")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = 1.0
        self.stamp = now
        self.waiting: deque[Request] = deque()

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
