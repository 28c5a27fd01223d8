"""A simulated worker node: consumer, prefetch window, ETA timer, rate limits. Internal.

What happens inside Celery's worker process is Celery's code: each delivery becomes a
Celery ``Request`` (``celery.worker.request``), which decides revokes and expiry,
starts the task in the pool (:mod:`simq.seams.pool`), runs Celery's tracer there and
makes the ack decision of CELERY_SEMANTICS.md §3.1 through its ``on_ack``/``on_reject``
callbacks. What stays modelled here is the consumer around it, following Celery's
``consumer.py`` and ``strategy.py``: unknown tasks and undecodable messages, the
prefetch window, ETA holding (outside the window, for any message with an ETA header,
due or not) and rate limits (a token bucket of capacity 1 per task,
``worker_disable_rate_limits``). The conformance suite's differential check compares
this model with real workers.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionWithTraceback
from celery import signals
from celery.exceptions import Ignore, NotRegistered, Reject, Retry, TaskRevokedError
from celery.utils.imports import symbol_by_name
from celery.utils.time import rate as parse_rate
from celery.worker import state as celery_state
from kombu.exceptions import ContentDisallowed
from kombu.message import Message as KombuMessage
from kombu.serialization import prepare_accept_content

from simq.checkers.base import ACKS_AT_ONCE_ON_SYNLOOP
from simq.exceptions import SimqError
from simq.seams.pool import Pool, Slot
from simq.world.broker import Envelope, MessageState
from simq.world.polling import PollingBroker
from simq.world.request import Delivery, RequestState, TokenBucket

if TYPE_CHECKING:
    from simq.engine.loop import Loop
    from simq.world.broker import Broker

__all__ = ["Delivery", "RequestState", "Worker"]


class _Recorded:
    """Mixed into a task's Request class: the worker hears what Celery announces."""

    _simq: Any = None

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        delivery = self._simq
        if delivery is not None:
            delivery.worker.note(
                "revoked", delivery, reason=reason, expired=bool(expired), terminated=terminated
            )
        super()._announce_revoked(reason, terminated, signum, expired)  # type: ignore[misc]


_REQUEST_CLASSES: dict[type, type] = {}


def request_class(task: Any) -> type:
    """The task's Request class (``Task.Request``) with simq's recording mixed in."""
    base = task.Request
    if isinstance(base, str):
        base = symbol_by_name(base)
    cls = _REQUEST_CLASSES.get(base)
    if cls is None:
        cls = _REQUEST_CLASSES[base] = type(base.__name__, (_Recorded, base), {})
    return cls


class Worker:
    """One simulated worker node (``celery worker -c N -Q ...``)."""

    def __init__(
        self,
        sim: Any,
        name: str,
        *,
        concurrency: int,
        queues: list[str],
        prefetch_multiplier: int,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"worker {name!r}: concurrency must be >= 1, got {concurrency}")
        if prefetch_multiplier < 0:
            raise ValueError(
                f"worker {name!r}: prefetch_multiplier must be >= 0, got {prefetch_multiplier}"
            )
        self.sim = sim
        self.name = name
        self.hostname = name
        self.concurrency = concurrency
        self.queues = list(queues)
        self.prefetch_multiplier = prefetch_multiplier
        self.app = sim.app
        self.loop: Loop = sim.loop
        self.broker: Broker = sim.broker
        self._record: Callable[..., None] = sim.record
        self.pool = Pool(self, concurrency)
        self.reserved: deque[Delivery] = deque()
        self.requests: dict[Envelope, Delivery] = {}  # live deliveries
        self.revoked: set[str] = set()
        self.buckets: dict[str, TokenBucket] = {}
        self.starting: Delivery | None = None  # the delivery handed to the pool now
        self._held = 0  # ETA-held messages (outside the prefetch window)
        self._live_unacked = 0  # every message delivered here and not yet acked/rejected
        # Acks and rejects asked for by the parent-process callback running now, sent when
        # it returns (:meth:`one_turn`); None when they go out at once.
        self.deferred_acks: list[Callable[[], None]] | None = None
        self.acks_wait_for_turn = sim.broker.polling and not ACKS_AT_ONCE_ON_SYNLOOP
        self._pump_scheduled = False
        self._pumping = False
        self.online = False  # consuming: up and connected
        self.alive = True  # the process exists (False after a crash)
        self.stopping = False  # warm shutdown in progress
        self.terminating = False  # a cold shutdown began (Celery's state.should_terminate)
        self.on_idle: Callable[[], None] | None = None  # called when no child is busy
        # Attempt ids for writes Celery's Request makes in this worker's main process, by
        # the id of that Request's delivery_info (its _context carries the same dict);
        # ``writing`` names the attempt of a write no Request makes (an unknown task).
        self._attempts: dict[int, Delivery] = {}
        self.writing: str | None = None

    @property
    def slots(self) -> list[Slot]:
        return self.pool.slots

    @functools.cached_property
    def accept(self) -> set[str]:
        return set(prepare_accept_content(self.app.conf.accept_content))

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._check_rate_limits()
        self.sim.declare_queues(self.queues)
        self.online = True
        self._record(
            "worker-online",
            worker=self.name,
            concurrency=self.concurrency,
            queues=self.queues,
            prefetch_multiplier=self.prefetch_multiplier,
        )
        for queue in self.queues:
            self.broker.consume(queue, self)
        signals.worker_ready.send(sender=self)

    def _check_rate_limits(self) -> None:
        # Celery's consumer parses every task's rate_limit as it starts
        # (consumer.py reset_rate_limits): a malformed one stops the worker there.
        if self.app.conf.worker_disable_rate_limits:
            return
        for name, task in sorted(self.app.tasks.items()):
            if not task.rate_limit:
                continue
            try:
                limit = parse_rate(task.rate_limit)
            except (KeyError, ValueError, TypeError) as exc:
                raise SimqError(
                    f"worker {self.name!r} cannot start: task {name!r} has rate_limit "
                    f"{task.rate_limit!r}, which Celery's worker rejects at startup "
                    f"({type(exc).__name__}: {exc}); use a number of tasks per second, or "
                    "a string like '10/s', '10/m' or '10/h'"
                ) from exc
            if math.isnan(limit) or limit < 0:
                # Celery's worker takes these and then misbehaves: kombu's TokenBucket
                # reads a NaN refill as a full bucket (no limit at all), and with a
                # negative rate it never refills while the consumer's timer spins.
                what = (
                    "is not a number: Celery's worker would take it and never limit the task"
                    if math.isnan(limit)
                    else "is negative: Celery's worker would run the task once and then never again"
                )
                raise SimqError(
                    f"worker {self.name!r} cannot start: task {name!r} has rate_limit "
                    f"{task.rate_limit!r}, which {what}; use a positive number of tasks per "
                    "second, or a string like '10/s', '10/m' or '10/h' (None: no limit)"
                )

    # -- consumer side -----------------------------------------------------------------

    @property
    def window(self) -> int:
        """Prefetch count: concurrency x multiplier; 0 means unlimited."""
        return self.concurrency * self.prefetch_multiplier

    def unacked(self) -> int:
        """Unacked messages held, not counting ETA-held ones: what prefetch bounds (G5)."""
        return self._live_unacked - self._held

    def capacity(self) -> int:
        if not self.online:
            return 0
        window = self.window
        if window == 0:
            return 1 << 30
        return window - (self._live_unacked - self._held)

    def on_delivery(self, envelope: Envelope) -> None:
        message = envelope.message
        self._live_unacked += 1
        task = self.app.tasks.get(message.task)
        if task is None:
            self._unknown_task(envelope)
            return
        kmsg = KombuMessage(
            body=message.body,
            delivery_tag=envelope.tag,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_info={
                "exchange": message.exchange,
                "routing_key": message.routing_key,
                "redelivered": envelope.redelivered,
            },
            properties=message.properties,
            headers=message.headers,
            accept=self.accept,
        )
        delivery = Delivery(envelope, self, tag=envelope.tag)
        try:
            kmsg.payload  # noqa: B018 - Celery's consumer decodes here (on_decode_error)
        except Exception as exc:
            self._undecodable(delivery, exc)
            return
        req = request_class(task)(
            kmsg,
            on_ack=partial(self._on_ack, delivery),
            on_reject=partial(self._on_reject, delivery),
            app=self.app,
            hostname=self.hostname,
            eventer=None,
            task=task,
            connection_errors=(),
        )
        req._simq = delivery
        delivery.celery = req
        self.requests[envelope] = delivery
        self._attempts[id(req.delivery_info)] = delivery
        self.load_revoked()
        if (req.expires or req.id in celery_state.revoked) and self._revoked(delivery):
            return
        signals.task_received.send(sender=self, request=req)
        if message.eta is not None:
            self._hold_for_eta(delivery, message.eta)
            return
        self._ready(delivery)

    def _hold_for_eta(self, delivery: Delivery, eta: float) -> None:
        """Hold a message with an ETA header outside the prefetch window until its timer fires.

        Celery's strategy (``task_message_handler``, ``if req.eta:``) does this for every
        message with an ETA header, even one already due: it raises the prefetch count
        (``qos.increment_eventually``) and puts the request on the timer
        (``call_at(eta, apply_eta_task)``), whose ``apply_eta_task`` hands it to the pool
        and lowers the count again (``decrement_eventually``). Until the timer fires the
        window is one wider, so the broker may send one more message, even for a due ETA
        (G5). Here a due ETA's timer fires later in the same virtual instant, after what
        is already scheduled for it: a plain message delivered meanwhile is reserved first.
        """
        delivery.move(RequestState.ETA_HELD)
        delivery.eta_held = True
        self._held += 1
        delivery.timer = self.loop.call_at(max(eta, self.loop.now), self._eta_fired, delivery)

    def _unknown_task(self, envelope: Envelope) -> None:
        # consumer.py on_unknown_task: reject without requeue, store FAILURE(NotRegistered).
        message = envelope.message
        self._record(
            "unregistered",
            task_id=message.task_id,
            message_id=message.message_id,
            worker=self.name,
            task=message.task,
            attempt=envelope.tag,
        )
        self._live_unacked -= 1
        self.broker.reject(envelope, requeue=False)
        sim = self.sim
        acting, sim.acting_worker = sim.acting_worker, self.name
        writing, self.writing = self.writing, envelope.tag
        try:
            self.app.backend.mark_as_failure(message.task_id, NotRegistered(message.task))
        finally:
            sim.acting_worker = acting
            self.writing = writing
        signals.task_unknown.send(
            sender=self,
            message=None,
            exc=NotRegistered(message.task),
            name=message.task,
            id=message.task_id,
        )
        self.broker.dispatch(*self.queues)

    def _undecodable(self, delivery: Delivery, exc: Exception) -> None:
        self.note("undecodable", delivery, error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, ContentDisallowed):
            # consumer.py on_task_received -> on_invalid_task: a content type the worker
            # does not accept is rejected without requeue (signal task_rejected).
            self._on_reject(delivery, None, (), False)
            delivery.state = RequestState.DONE
            signals.task_rejected.send(sender=self, message=delivery.envelope.message, exc=exc)
            return
        # consumer.py on_decode_error: the message is acked and dropped, with a log line.
        self._on_ack(delivery)
        delivery.state = RequestState.DONE

    def _eta_fired(self, delivery: Delivery) -> None:
        delivery.timer = None
        if delivery.state is not RequestState.ETA_HELD:
            return
        delivery.by_timer = True
        # Celery's apply_eta_task lowers the count after it handed the task to the pool.
        # On an event loop that is at once. Without one (kombu's polling transports) the
        # pool guards its queue with a semaphore of one place per child, and the timer
        # thread waits there for a free child: the hold ends when the task starts.
        if not self.broker.polling:
            self._end_eta_hold(delivery)
        self.load_revoked()
        if self._revoked(delivery):
            self._end_eta_hold(delivery)
            return
        self._ready(delivery)

    def _end_eta_hold(self, delivery: Delivery) -> None:
        if delivery.eta_held:
            delivery.eta_held = False
            self._held -= 1
            if isinstance(self.broker, PollingBroker):
                self.broker.narrowed(self)

    def blocked(self) -> bool:
        """Whether the consumer waits to hand a task to a full pool (polling transports).

        Without an event loop billiard's pool takes one job per child
        (``putlocks``: ``Pool.apply_async`` waits on a semaphore of ``processes``), so
        the consumer thread that received a task while every child is busy waits there,
        and fetches nothing, until a child is free.
        """
        return any(r.state is RequestState.RESERVED and not r.by_timer for r in self.reserved)

    def _revoked(self, delivery: Delivery) -> bool:
        """Celery's ``Request.revoked()``: skip (REVOKED, ack) a revoked or expired task."""
        sim = self.sim
        # Restored, not cleared: this may run inside a callback of another request of
        # this worker (an ack dispatches the next message) whose writes follow.
        acting, sim.acting_worker = sim.acting_worker, self.name
        try:
            revoked = bool(delivery.celery.revoked())
        finally:
            sim.acting_worker = acting
        if revoked:
            self._done(delivery)
        return revoked

    def _ready(self, delivery: Delivery) -> None:
        task = delivery.celery.task
        rate = task.rate_limit
        if rate and not self.app.conf.worker_disable_rate_limits:
            bucket = self.buckets.get(task.name)
            if bucket is None:
                bucket = self.buckets[task.name] = TokenBucket(parse_rate(rate), self.loop.now)
            # A rate of 0 ("0/s") is no limit: Celery's consumer makes no bucket for it
            # (bucket_for_task: ``TokenBucket(limit) if limit else None``).
            if bucket.rate and (bucket.waiting or not bucket.can_consume(self.loop.now)):
                delivery.move(RequestState.RATE_WAIT)
                bucket.waiting.append(delivery)
                if len(bucket.waiting) == 1:
                    self.loop.call_later(bucket.expected_time(), self._drain_bucket, bucket)
                return
        delivery.move(RequestState.RESERVED)
        self.reserved.append(delivery)
        self._schedule_pump()

    def _drain_bucket(self, bucket: TokenBucket) -> None:
        if not self.alive:
            return
        now = self.loop.now
        while bucket.waiting:
            head = bucket.waiting[0]
            if head.state is not RequestState.RATE_WAIT:
                bucket.waiting.popleft()
                continue
            if not bucket.can_consume(now):
                self.loop.call_later(bucket.expected_time(), self._drain_bucket, bucket)
                return
            bucket.waiting.popleft()
            head.by_timer = True
            head.move(RequestState.RESERVED)
            self.reserved.append(head)
            self._schedule_pump()

    def load_revoked(self) -> None:
        """Make Celery's process-wide revoked set this worker's before its code runs."""
        sim = self.sim
        owner = sim.revoked_owner
        if owner is self:
            return
        revoked = celery_state.revoked
        if owner is not None and len(revoked):
            owner.revoked = set(revoked)  # keep what Celery added there (maybe_expire)
        if len(revoked) or self.revoked:
            revoked.clear()
            revoked.update(self.revoked)
        sim.revoked_owner = self

    # -- pool side ---------------------------------------------------------------------

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if not self.alive:
            return
        self._pumping = True
        try:
            reserved = self.reserved
            while reserved:
                slot = self.pool.free_slot()
                if slot is None:
                    break
                delivery = reserved.popleft()
                if delivery.state is RequestState.RESERVED:
                    self._start(slot, delivery)
        finally:
            self._pumping = False

    def _start(self, slot: Slot, delivery: Delivery) -> None:
        delivery.move(RequestState.ACTIVE)
        if delivery.eta_held:
            self._end_eta_hold(delivery)
        elif not delivery.by_timer and isinstance(self.broker, PollingBroker):
            self.broker.unblocked(self)
        self.load_revoked()
        self.pool.next_slot = slot
        self.starting = delivery
        sim = self.sim
        acting, sim.acting_worker = sim.acting_worker, self.name
        try:
            delivery.celery.execute_using_pool(self.pool)
        except TaskRevokedError:
            # execute_using_pool re-checks revoked() (expiry included) before starting.
            self.pool.next_slot = None
            self._done(delivery)
        finally:
            self.starting = None
            sim.acting_worker = acting

    def outcome(self, delivery: Delivery, retval: Any) -> None:
        """Record how the tracer ended an attempt (before Celery's ack decision)."""
        failed, value, runtime = retval
        if not failed:
            extra = {"deduplicated": True} if runtime is None else {}
            self.note("succeeded", delivery, **extra)
            return
        exc = getattr(value, "exception", value)
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, Retry):
            inner, when = exc.exc, exc.when
            self.note(
                "retried",
                delivery,
                exception=self.encode_exception(inner)
                if isinstance(inner, BaseException)
                else None,
                when=when if isinstance(when, int | float) or when is None else str(when),
            )
            if delivery.task_name == "celery.chord_unlock":
                self.sim.chords.retried(delivery.id)
        elif isinstance(exc, Reject):
            self.note("declined", delivery, requeue=bool(exc.requeue))
        elif isinstance(exc, Ignore):
            self.note("ignored", delivery, exception=self.encode_exception(exc))
        else:
            self.note("failed", delivery, exception=self.encode_exception(exc))

    def encode_exception(self, exc: BaseException) -> Any:
        """Celery's json form of ``exc`` (type, module, message), as the history shows it."""
        from simq.seams.backend import jsonable

        return jsonable(self.app.backend.prepare_exception(exc, "json"))

    def finished(self, delivery: Delivery | None) -> None:
        """The pool is done with ``delivery``: forget it, start the next, maybe go idle."""
        if delivery is not None:
            self._done(delivery)
        if self.reserved and not self._pumping:
            self._pump()
        if self.on_idle is not None:
            self.maybe_idle()

    def maybe_idle(self) -> None:
        """Tell a shutdown waiting for the running tasks that the last one ended."""
        if (
            self.on_idle is not None
            and all(slot.job is None for slot in self.slots)
            and not self.pool.lingering
        ):
            self.on_idle()

    def note(self, kind: str, delivery: Delivery, **details: Any) -> None:
        """Record an event about ``delivery`` on this worker, naming its attempt."""
        message = delivery.envelope.message
        self._record(
            kind,
            task_id=message.task_id,
            message_id=message.message_id,
            worker=self.name,
            **details,
            attempt=delivery.tag,
        )

    def attempt_of(self, task_id: str, request: Any) -> str | None:
        """The attempt whose parent-side code writes ``task_id``'s state now, if any.

        Celery's Request writes with ``request=self._context``, whose ``delivery_info``
        is that Request's own dict: it names the delivery even when two attempts of one
        message run here side by side (a visibility-timeout copy, a redelivery after a
        lost connection).
        """
        if self.writing is not None:
            return self.writing
        info = getattr(request, "delivery_info", None)
        delivery = self._attempts.get(id(info)) if info is not None else None
        if delivery is None or delivery.celery.delivery_info is not info:
            return None
        return delivery.tag if delivery.id == task_id else None

    def forget_attempt(self, delivery: Delivery) -> None:
        """``delivery`` is over: no later write of this worker's main process is its."""
        req = delivery.celery
        if req is not None and self._attempts.get(id(req.delivery_info)) is delivery:
            del self._attempts[id(req.delivery_info)]

    # -- the ack callbacks Celery's Request calls --------------------------------------

    def _on_ack(self, delivery: Delivery, *_: Any) -> None:
        self._send(partial(self._ack_now, delivery))

    def _on_reject(self, delivery: Delivery, logger: Any, errors: Any, requeue: bool) -> None:
        self._send(partial(self._reject_now, delivery, requeue))

    def _send(self, op: Callable[[], None]) -> None:
        """An ack or reject, sent as Celery's consumer sends it (:meth:`one_turn`)."""
        if self.deferred_acks is not None:
            self.deferred_acks.append(op)
        elif self.acks_wait_for_turn:
            # Celery 5.5 without an event loop: Consumer.call_soon queues it for synloop's
            # next turn (perform_pending_operations), which runs the queue newest first.
            assert isinstance(self.broker, PollingBroker)
            self.broker.at_next_turn(self, op)
        else:
            op()

    def _ack_now(self, delivery: Delivery) -> None:
        delivery.acked = True
        if delivery.orphaned:
            # The delivery tag belonged to a closed channel (G7): the ack cannot land.
            self.note("ack-failed", delivery)
            return
        self._live_unacked -= 1
        self.broker.ack(delivery.envelope)
        self.broker.dispatch(*self.queues)

    def _reject_now(self, delivery: Delivery, requeue: bool) -> None:
        delivery.acked = True
        if delivery.orphaned:
            self.note("ack-failed", delivery, requeue=requeue)
            return
        self._live_unacked -= 1
        self.broker.reject(delivery.envelope, requeue)
        self.broker.dispatch(*self.queues)

    def one_turn(self, run: Callable[[], None]) -> None:
        """Run ``run`` as one turn of this worker's parent process: acks wait until it ends.

        Celery's Request acks through ``Consumer.call_soon_ack``: with an event loop
        (amqp, redis, sqs) that is ``hub.call_soon``, so the ack goes out after the pool
        callback that asked for it has returned. ``Request.on_failure`` acks an acks_late
        task *before* it stores FAILURE (a hard time limit, a lost child), so on those
        brokers FAILURE lands first (recorded on Redis: the ack 0.1 s after). Without an
        event loop (kombu's polling transports, Celery 5.7's synloop) the ack is sent at
        once, before FAILURE. A turn inside a turn joins it: the outermost sends what was deferred, and a
        signal (Ctrl-C) that ends the run drops it.
        """
        if self.deferred_acks is not None or self.broker.polling:
            run()
            return
        self.deferred_acks = []
        try:
            run()
        except BaseException:
            self.deferred_acks = None
            raise
        self.send_acks(close=True)

    def send_acks(self, *, close: bool) -> None:
        """Send the deferred acks now (a process that died sends none: call drop_acks)."""
        pending = self.deferred_acks
        if pending is None:
            return
        if close:
            self.deferred_acks = None
        while pending:
            pending.pop(0)()

    def drop_acks(self) -> None:
        """The process ended before its event loop ran again: the deferred acks are lost."""
        if self.deferred_acks is not None:
            self.deferred_acks.clear()

    def _done(self, delivery: Delivery) -> None:
        if delivery.state is not RequestState.DONE:
            delivery.move(RequestState.DONE)
        self.forget_attempt(delivery)
        # A requeued message may already be back here as a new delivery under the same
        # envelope (reject_on_worker_lost, Reject(requeue=True)): leave that one alone.
        if self.requests.get(delivery.envelope) is delivery:
            del self.requests[delivery.envelope]

    # -- control -----------------------------------------------------------------------

    def revoke(self, task_id: str) -> None:
        self.revoked.add(task_id)
        if self.sim.revoked_owner is self:
            celery_state.revoked.add(task_id)

    def active(self) -> list[Delivery]:
        return [s.request for s in self.slots if s.request is not None]

    def held(self) -> list[Delivery]:
        return [r for r in self.requests.values() if r.envelope.state is MessageState.UNACKED]

    def __repr__(self) -> str:
        return f"<Worker {self.name} c={self.concurrency} queues={self.queues}>"
