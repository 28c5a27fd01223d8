"""A simulated worker node: consumer, prefetch window, ETA timer, rate limits, pool.

Internal. The worker follows Celery's ``strategy.py`` / ``request.py`` / ``consumer.py``:

* receipt: unknown task -> FAILURE(NotRegistered) and reject; revoked or expired ->
  REVOKED and ack; ETA in the future -> held on a timer (still unacked, outside the
  prefetch window); rate limited -> token bucket; else reserved for the pool;
* start (a child slot is free): revoked/expired re-check, early ack unless ``acks_late``,
  then the task body runs in the slot's fiber;
* end: the ack decision table of CELERY_SEMANTICS.md §3.1 (:func:`ack_decision`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from simq import states
from simq.engine.fibers import SUSPENDED, Exited, Fiber
from simq.exceptions import (
    NotRegistered,
    Reject,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
)
from simq.message import Message
from simq.rates import parse_rate
from simq.runtime import (
    LOST,
    Context,
    Outcome,
    lost_error,
    mark_as_failure,
    run_parent_hooks,
    trace,
)
from simq.serialization import encode_exception, loads
from simq.world.broker import Envelope, MessageState
from simq.world.request import (
    ACK,
    NONE,
    Decision,
    Request,
    RequestState,
    TokenBucket,
    ack_decision,
)

if TYPE_CHECKING:
    from simq.engine.loop import Loop, Timer
    from simq.world.backend import Backend
    from simq.world.broker import Broker

__all__ = ["Request", "RequestState", "Worker", "ack_decision"]


# Protocol-2 header names; any other header is a custom one (``request.headers``).
_PROTOCOL_HEADERS = frozenset(
    {
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
    }
)


class Slot:
    """A child process slot: a fiber, the request it runs and that run's timers."""

    __slots__ = ("fiber", "index", "request", "timers", "token", "worker")

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker = worker
        self.index = index
        self.fiber = Fiber(f"{worker.name}/child-{index + 1}", owner=self)
        self.request: Request | None = None
        self.timers: list[Timer] = []
        self.token = 0  # bumped when the child is replaced: stale timers do nothing

    def sleep(self, seconds: float) -> None:
        """Called inside the fiber: suspend the task for ``seconds`` of virtual time."""
        timer = self.worker.loop.call_later(seconds, self.wake, self.token)
        self.timers.append(timer)
        try:
            self.fiber.suspend()
        finally:
            # An interrupted sleep (soft time limit) must not wake the task's next one.
            timer.cancel()
            if timer in self.timers:
                self.timers.remove(timer)

    def wake(self, token: int) -> None:
        """Resume the task suspended in this slot (end of a virtual sleep)."""
        if token == self.token and self.request is not None:
            self.worker.switched(self, self.fiber.resume())

    def throw(self, exc: BaseException) -> None:
        """Raise ``exc`` in the task at its suspension point (a soft time limit)."""
        self.worker.switched(self, self.fiber.throw(exc))

    def replace_child(self) -> None:
        """The child died: its code stops where it is; a fresh child takes the slot."""
        self.token += 1
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        if self.fiber.busy:
            self.fiber.abandon()
        self.request = None


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
        self.eager = False
        self.concurrency = concurrency
        self.queues = list(queues)
        self.prefetch_multiplier = prefetch_multiplier
        self.app = sim.app
        self.loop: Loop = sim.loop
        self.broker: Broker = sim.broker
        self.backend: Backend = sim.backend
        self._record: Callable[..., None] = sim.record
        self.slots = [Slot(self, i) for i in range(concurrency)]
        self.reserved: deque[Request] = deque()
        self.requests: dict[Envelope, Request] = {}  # live requests by delivery
        self.revoked: set[str] = set()
        self.successful: set[str] = set()  # successful_requests (dedup cache)
        self.buckets: dict[str, TokenBucket] = {}
        self._held = 0  # ETA-held messages (outside the prefetch window)
        self._live_unacked = 0  # every message delivered here and not yet acked/rejected
        self._pump_scheduled = False
        self._pumping = False
        self.online = False  # consuming: up and connected
        self.alive = True  # the process exists (False after a crash)
        self.stopping = False  # warm shutdown in progress
        self.on_idle: Callable[[], None] | None = None  # called when no child is busy

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
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
        args, kwargs, embed = loads(message.body, message.serializer)
        request = Request(envelope, task, self._context(message, args, kwargs, embed, envelope))
        self.requests[envelope] = request
        if self._revoked_or_expired(request):
            return
        eta = message.eta
        if eta is not None and eta > self.loop.now:
            request.move(RequestState.ETA_HELD)
            self._held += 1
            request.timer = self.loop.call_at(eta, self._eta_fired, request)
            return
        self._ready(request)

    def _context(
        self, message: Message, args: Any, kwargs: Any, embed: dict[str, Any], envelope: Envelope
    ) -> Context:
        headers = message.headers
        extra = headers.keys() - _PROTOCOL_HEADERS
        custom = {k: headers[k] for k in headers if k in extra} if extra else None
        return Context(
            headers,
            id=message.task_id,
            task=message.task,
            args=args,
            kwargs=kwargs,
            retries=headers.get("retries") or 0,
            is_eager=False,
            called_directly=False,
            delivery_info={
                "exchange": message.exchange,
                "routing_key": message.routing_key,
                "priority": message.priority,
                "redelivered": envelope.redelivered,
            },
            hostname=self.hostname,
            callbacks=embed.get("callbacks"),
            errbacks=embed.get("errbacks"),
            chain=embed.get("chain"),
            chord=embed.get("chord"),
            correlation_id=message.task_id,
            reply_to=headers.get("reply_to"),
            headers=custom,
            properties={"correlation_id": message.task_id, "priority": message.priority},
        )

    def _unknown_task(self, envelope: Envelope) -> None:
        # consumer.py on_unknown_task: store FAILURE(NotRegistered), reject without requeue.
        message = envelope.message
        exc = NotRegistered(message.task)
        self._record(
            "unregistered",
            task_id=message.task_id,
            message_id=message.message_id,
            worker=self.name,
            task=message.task,
        )
        self.backend.store(message.task_id, states.FAILURE, exc, None, None, worker=self.name)
        self._live_unacked -= 1
        self.broker.reject(envelope, requeue=False)
        self.broker.dispatch(*self.queues)

    def _revoked_or_expired(self, request: Request) -> bool:
        message = request.message
        expired = message.expires is not None and self.loop.now > message.expires
        if expired:
            self.revoked.add(request.id)
        if not expired and request.id not in self.revoked:
            return False
        reason = "expired" if expired else "revoked"
        self._announce_revoked(request, reason)
        return True

    def _announce_revoked(self, request: Request, reason: str, terminated: bool = False) -> None:
        self._note(
            "revoked",
            request,
            reason=reason,
            expired=reason == "expired",
            terminated=terminated,
        )
        ctx = request.context
        if not ctx.ignore_result or request.task.store_errors_even_if_ignored:
            self.backend.store(
                request.id, states.REVOKED, TaskRevokedError(reason), ctx, None, worker=self.name
            )
        if not request.acked:
            self._ack(request)
        self._done(request)

    def _eta_fired(self, request: Request) -> None:
        request.timer = None
        if request.state is not RequestState.ETA_HELD:
            return
        self._held -= 1
        if self._revoked_or_expired(request):
            return
        self._ready(request)

    def _ready(self, request: Request) -> None:
        task = request.task
        rate = task.rate_limit
        if rate and not self.app.conf.worker_disable_rate_limits:
            bucket = self.buckets.get(task.name)
            if bucket is None:
                bucket = self.buckets[task.name] = TokenBucket(parse_rate(rate), self.loop.now)
            if bucket.waiting or not bucket.can_consume(self.loop.now):
                request.move(RequestState.RATE_WAIT)
                bucket.waiting.append(request)
                if len(bucket.waiting) == 1:
                    self.loop.call_later(bucket.expected_time(), self._drain_bucket, bucket)
                return
        request.move(RequestState.RESERVED)
        self.reserved.append(request)
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
            head.move(RequestState.RESERVED)
            self.reserved.append(head)
            self._schedule_pump()

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
            for slot in self.slots:
                while slot.request is None and reserved:
                    request = reserved.popleft()
                    if request.state is RequestState.RESERVED:
                        self._start(slot, request)
        finally:
            self._pumping = False

    def _start(self, slot: Slot, request: Request) -> None:
        # execute_using_pool re-checks revoked() (which includes expiry) before starting.
        if self._revoked_or_expired(request):
            return
        request.move(RequestState.ACTIVE)
        slot.request = request
        ctx = request.context
        self._note(
            "started",
            request,
            task=ctx.task,
            retries=ctx.retries,
        )
        if not request.acks_late:
            self._ack(request)
        elif request.envelope.redelivered and self._already_succeeded(request):
            # worker_deduplicate_successful_tasks (G14): the tracer returns at once.
            slot.request = None
            self._note(
                "succeeded",
                request,
                deduplicated=True,
            )
            self._dispose(request, ACK)
            return
        task = request.task
        hard, soft = self.time_limits(request)
        if soft:
            slot.timers.append(self.loop.call_later(soft, self._soft_limit, slot, request, soft))
        if hard:
            slot.timers.append(self.loop.call_later(hard, self._hard_limit, slot, request, hard))
        self.switched(slot, slot.fiber.run(lambda: trace(task, ctx, self)))

    def _already_succeeded(self, request: Request) -> bool:
        if not self.app.conf.worker_deduplicate_successful_tasks:
            return False
        return request.id in self.successful or self.backend.state(request.id) == states.SUCCESS

    def time_limits(self, request: Request) -> tuple[float | None, float | None]:
        """(hard, soft) in seconds: the message's ``timelimit``, else the task's."""
        hard, soft = request.context.timelimit or (None, None)
        task = request.task
        return (
            hard if hard is not None else task.time_limit,
            soft if soft is not None else task.soft_time_limit,
        )

    def switched(self, slot: Slot, result: Any) -> None:
        """The engine regained control from ``slot``'s fiber; finish the job if it ended."""
        self.sim.vtime.ensure()
        if result is SUSPENDED:
            return
        request = slot.request
        if isinstance(result, Exited):
            slot.replace_child()
            if request is not None:
                self._child_lost(request, Outcome(LOST, exitcode=result.code))
        else:
            for timer in slot.timers:
                timer.cancel()
            slot.timers.clear()
            slot.request = None
            if request is not None:
                self._finish(request, result)
        if self.reserved and not self._pumping:
            self._pump()
        if self.on_idle is not None:
            self.maybe_idle()

    def maybe_idle(self) -> None:
        """Tell a shutdown waiting for the running tasks that the last one ended."""
        if self.on_idle is not None and all(slot.request is None for slot in self.slots):
            self.on_idle()

    def _note(self, kind: str, request: Request, **details: Any) -> None:
        """Record an event about ``request`` on this worker."""
        self._record(
            kind,
            task_id=request.id,
            message_id=request.message.message_id,
            worker=self.name,
            **details,
        )

    # -- time limits (G11, G12) --------------------------------------------------------

    def _soft_limit(self, slot: Slot, request: Request, limit: float) -> None:
        if slot.request is not request:
            return
        self._note(
            "time-limit",
            request,
            which="soft",
            limit=limit,
        )
        slot.throw(SoftTimeLimitExceeded())

    def _hard_limit(self, slot: Slot, request: Request, limit: float) -> None:
        if slot.request is not request:
            return
        self._note(
            "time-limit",
            request,
            which="hard",
            limit=limit,
        )
        slot.replace_child()
        self._timed_out(request, TimeLimitExceeded(limit))
        if self.reserved:
            self._schedule_pump()
        self.maybe_idle()

    def _timed_out(self, request: Request, exc: TimeLimitExceeded) -> None:
        """Celery 5.7's hard-timeout path, run in the parent (§1.11, G12)."""
        task, ctx = request.task, request.context
        self._note(
            "failed",
            request,
            exception=encode_exception(exc),
        )
        requeue = task.acks_late and not request.acked and not task.acks_on_timeout
        # on_failure(return_ok=False) stores FAILURE and calls errbacks unless requeued;
        # on_timeout then does it again: errbacks fire twice in 5.7.0 (exp15).
        if not requeue:
            mark_as_failure(task, ctx, exc, None, self)
        mark_as_failure(task, ctx, exc, None, self)
        run_parent_hooks(task, ctx, exc)
        if request.acked:
            self._done(request)
        elif task.acks_on_timeout or not task.acks_late:
            self._dispose(request, ACK)
        else:
            self._dispose(request, Decision("reject", True))

    # -- Env for the tracer: how long the body takes -----------------------------------

    def work(self, task: Any) -> None:
        """Called in the fiber before the body: take the task's configured duration."""
        if not self.sim.durations:
            return
        duration = self.sim.duration_for(task.name)
        if duration:
            current = self.slot_running()
            if current is not None:
                current.sleep(duration)

    def slot_running(self) -> Slot | None:
        from simq.engine.fibers import current_fiber

        fiber = current_fiber()
        owner = fiber.owner if fiber is not None else None
        return owner if isinstance(owner, Slot) else None

    def _finish(self, request: Request, outcome: Outcome) -> None:
        task, ctx = request.task, request.context
        message_id = request.message.message_id
        state = outcome.state
        if state == states.REJECTED:
            self._record(
                "declined",
                task_id=request.id,
                message_id=message_id,
                worker=self.name,
                requeue=outcome.requeue,
            )
            if not outcome.requeue:
                # 5.7: Reject(requeue=False) stores FAILURE, errbacks included (#4222).
                mark_as_failure(task, ctx, outcome.exc or Reject(), outcome.traceback, self)
        elif state == LOST:
            self._child_lost(request, outcome)
            return
        else:
            if state == states.SUCCESS and request.acks_late:
                self.successful.add(request.id)
            self._record(
                _OUTCOME_KINDS[state],
                task_id=request.id,
                message_id=message_id,
                worker=self.name,
                **_outcome_details(outcome),
            )
        self._dispose(request, ack_decision(task, outcome, request.acked))

    def _child_lost(self, request: Request, outcome: Outcome) -> None:
        task, ctx = request.task, request.context
        exc = lost_error(outcome.exitcode, outcome.exc)
        self._note(
            "child-lost",
            request,
            exitcode=outcome.exitcode,
        )
        if self.backend.state(request.id) == states.SUCCESS:
            self._dispose(request, NONE if request.acked else ACK)
            return
        exhausted = False
        if task.retry_on_worker_lost:
            if task.max_retries is None or ctx.retries < task.max_retries:
                task.retry_on_lost(ctx, exc, self)
                self._dispose(request, NONE if request.acked else ACK)
                return
            exhausted = True
        # request.py: reject_on_worker_lost is not applied once retries are exhausted.
        lost = Outcome(states.FAILURE if exhausted else LOST, exc=exc)
        decision = ack_decision(task, lost, request.acked)
        if not (decision.action == "reject" and decision.requeue):
            mark_as_failure(task, ctx, exc, None, self)
        self._dispose(request, decision)

    def _dispose(self, request: Request, decision: Decision) -> None:
        if decision.action == "ack":
            self._ack(request)
        elif decision.action == "reject":
            self._reject(request, decision.requeue)
        self._done(request)

    def _ack(self, request: Request) -> None:
        request.acked = True
        if request.orphaned:
            # The delivery tag belonged to a closed channel (G7): the ack cannot land.
            self._note(
                "ack-failed",
                request,
            )
            return
        self._live_unacked -= 1
        self.broker.ack(request.envelope)
        self.broker.dispatch(*self.queues)

    def _reject(self, request: Request, requeue: bool) -> None:
        request.acked = True
        if request.orphaned:
            self._note(
                "ack-failed",
                request,
                requeue=requeue,
            )
            return
        self._live_unacked -= 1
        self.broker.reject(request.envelope, requeue)
        self.broker.dispatch(*self.queues)

    def _done(self, request: Request) -> None:
        if request.state is not RequestState.DONE:
            request.move(RequestState.DONE)
        # A requeued message may already be back here as a new request under the same
        # envelope (reject_on_worker_lost, Reject(requeue=True)): leave that one alone.
        if self.requests.get(request.envelope) is request:
            del self.requests[request.envelope]

    # -- Env for the tracer ------------------------------------------------------------

    def store(
        self, task_id: str, state: str, result: Any, request: Context, traceback: str | None
    ) -> None:
        self.backend.store(task_id, state, result, request, traceback, worker=self.name)

    def get_state(self, task_id: str) -> str:
        return self.backend.state(task_id)

    # -- control -----------------------------------------------------------------------

    def revoke(self, task_id: str) -> None:
        self.revoked.add(task_id)

    def active(self) -> list[Request]:
        return [s.request for s in self.slots if s.request is not None]

    def held(self) -> list[Request]:
        return [r for r in self.requests.values() if r.envelope.state is MessageState.UNACKED]

    def __repr__(self) -> str:
        return f"<Worker {self.name} c={self.concurrency} queues={self.queues}>"


_OUTCOME_KINDS = {
    states.SUCCESS: "succeeded",
    states.FAILURE: "failed",
    states.RETRY: "retried",
    states.IGNORED: "ignored",
}


def _outcome_details(outcome: Outcome) -> dict[str, Any]:
    if outcome.state == states.SUCCESS:
        return {}
    exc = outcome.exc
    if outcome.state == states.RETRY:
        inner = getattr(exc, "exc", None)
        when = getattr(exc, "when", None)
        return {
            "exception": encode_exception(inner) if inner is not None else None,
            "when": when if isinstance(when, int | float) or when is None else str(when),
        }
    return {"exception": encode_exception(exc) if exc is not None else None}
