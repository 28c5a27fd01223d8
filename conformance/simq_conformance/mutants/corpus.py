"""The planted bugs: each one a fault a broker, a transport or a worker could really have.

Where the bug lives in Celery's own code (ack decisions, retries, limits, revoke,
expiry), one set of patches plants it wherever Celery runs: in the simulator's process
(simq runs Celery's Request and tracer) and in every real worker process. Where it lives
outside Celery (the broker, the transport, the consumer's prefetch, the simulator's
model of the worker's ETA holding), each deployment has its own patches: simq's broker
and worker model, kombu's Redis transport.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from simq_conformance.mutants._patch import Patch

__all__ = ["CORPUS", "Mutant"]

_REQUEST = "celery.worker.request:Request"
_TASK = "celery.app.task:Task"
_BROKER = "simq.world.broker:Broker"
_REDIS_QOS = "kombu.transport.redis:QoS"


@attrs.frozen
class Mutant:
    """A planted bug and how to plant it in each deployment.

    Attributes:
        name: Its name (``--conformance-mutant=NAME``).
        title: The bug, in a few words.
        layer: Where it lives: ``"celery"`` (Celery's worker code), ``"consumer"``
            (the worker's consumer), ``"transport"`` (the broker and its client).
        expect: The guarantees written to catch it (on the simulator at least one of
            them fails; on a real broker some guarantee must).
        celery: Patches of Celery's code, planted in the simulator's process and in
            every real worker.
        simq: Patches of simq's model, planted in the simulator's process only.
        worker: Patches planted in real worker processes only, on any transport.
        transports: Patches planted in real worker processes on one kombu driver
            (``"redis"``, ...).
    """

    name: str
    title: str
    layer: str
    expect: tuple[str, ...]
    celery: tuple[Patch, ...] = ()
    simq: tuple[Patch, ...] = ()
    worker: tuple[Patch, ...] = ()
    transports: dict[str, tuple[Patch, ...]] = attrs.field(factory=dict)

    def patches(self, where: str) -> tuple[Patch, ...]:
        """Its patches for ``where``: ``"simq"`` or a real worker's kombu driver; empty
        when it cannot be planted there (a broker bug on a broker simq cannot patch)."""
        own = self.simq if where == "simq" else (*self.worker, *self.transports.get(where, ()))
        if not own and (self.layer != "celery" or not self.celery):
            return ()
        return (*self.celery, *own)

    def plantable(self, where: str) -> bool:
        """Whether it can be planted in ``where`` (``"simq"`` or a kombu driver)."""
        return bool(self.patches(where))


# -- patch builders -----------------------------------------------------------------------


def _after_init(adjust: Callable[[Any], None]) -> Patch:
    """Patch ``Request.__init__`` to adjust the request it built."""

    def make(original: Callable[..., None]) -> Callable[..., None]:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            adjust(self)

        return __init__

    return Patch(_REQUEST, "__init__", make)


def _bound_acks_late(value: bool) -> Patch:
    """Every task class bound to an app acks ``late`` (True) or early, whatever the
    configuration says (the worker misreads ``task_acks_late``)."""

    def make(original: Any) -> Any:
        def bind(cls: Any, app: Any) -> Any:
            result = original.__func__(cls, app)
            cls.acks_late = value
            return result

        return classmethod(bind)

    return Patch(_TASK, "bind", make)


def _retry_options(adjust: Callable[[Any, dict[str, Any]], None]) -> Patch:
    """Patch ``Task.signature_from_request`` on the retry path (it passes ``retries``)."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def signature_from_request(self: Any, request: Any = None, *args: Any, **extra: Any) -> Any:
            if "retries" in extra:
                adjust(self.request if request is None else request, extra)
            return original(self, request, *args, **extra)

        return signature_from_request

    return Patch(_TASK, "signature_from_request", make)


def _same_retries(request: Any, extra: dict[str, Any]) -> None:
    extra["retries"] = request.retries


def _new_id(request: Any, extra: dict[str, Any]) -> None:
    extra["task_id"] = str(uuid.uuid4())


def _soft_ignored(request: Any) -> None:
    hard, _soft = request.time_limits
    request.time_limits = (hard, None)


def _hard_ignored(request: Any) -> None:
    _hard, soft = request.time_limits
    request.time_limits = (None, soft)


def _no_eta(request: Any) -> None:
    request._eta = None


def _no_expires(request: Any) -> None:
    request._expires = None


class _Deaf(set):  # type: ignore[type-arg]
    """A revoked-ids set that never holds anything."""

    def add(self, item: Any) -> None:
        pass

    def update(self, *items: Any) -> None:
        pass


def _ack_at_start(original: Callable[..., Any]) -> Callable[..., Any]:
    def on_accepted(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        self.acknowledge()
        return result

    return on_accepted


def _reject_acks(original: Callable[..., Any]) -> Callable[..., Any]:
    def reject(self: Any, requeue: bool = False) -> Any:
        if requeue:
            return self.acknowledge()
        return original(self, requeue)

    return reject


def _nothing(_original: Any) -> Callable[..., None]:
    def nothing(*_args: Any, **_kwargs: Any) -> None:
        return None

    return nothing


# simq's model


def _drop_on(reasons: frozenset[str]) -> Patch:
    """The simulated broker forgets an unacked message whose channel closed for one of
    ``reasons``: it is neither returned nor recorded lost."""

    def make(original: Callable[..., None]) -> Callable[..., None]:
        def channel_closed(self: Any, envelope: Any, reason: str) -> None:
            if reason not in reasons:
                return original(self, envelope, reason)
            self._settled(envelope)  # no visibility timeout will bring it back either
            envelope.holder = None
            return None

        return channel_closed

    return Patch(_BROKER, "channel_closed", make)


def _publish_twice(original: Callable[..., Any]) -> Callable[..., Any]:
    def publish(self: Any, message: Any) -> Any:
        envelope = original(self, message)
        twin = type(envelope)(message, seq=envelope.seq)
        self.copies.append(twin)
        self.queue(message.queue).push(twin)
        return envelope

    return publish


def _ack_forgotten_once(original: Callable[..., Any]) -> Callable[..., Any]:
    def ack(self: Any, envelope: Any) -> Any:
        result = original(self, envelope)
        message = envelope.message
        seen = self.__dict__.setdefault("_simq_mutant_redelivered", set())
        if message.message_id not in seen:
            seen.add(message.message_id)
            again = type(envelope)(message, redelivered=True, seq=envelope.seq)
            self.copies.append(again)
            self.queue(message.queue).push(again, front=True)
            self.dispatch(message.queue)
        return result

    return ack


def _eta_dropped(original: Callable[..., Any]) -> Callable[..., Any]:
    def on_delivery(self: Any, envelope: Any) -> Any:
        if envelope.message.eta is not None:
            envelope.message = attrs.evolve(envelope.message, eta=None)
        return original(self, envelope)

    return on_delivery


# kombu's Redis transport (real workers)


def _restore_visible_drops(original: Callable[..., Any]) -> Callable[..., Any]:
    def restore_visible(self: Any, *args: Any, **kwargs: Any) -> Any:
        def drop(tag: Any, client: Any = None, leftmost: bool = False) -> None:
            self._remove_from_indices(tag).execute()

        self.restore_by_tag = drop
        try:
            return original(self, *args, **kwargs)
        finally:
            del self.restore_by_tag

    return restore_visible


def _restore_unacked_drops(_original: Callable[..., Any]) -> Callable[..., Any]:
    def restore_unacked(self: Any, client: Any = None) -> None:
        for tag in list(self._delivered):
            self._remove_from_indices(tag).execute()
        self._delivered.clear()

    return restore_unacked


def _deliver_twice(original: Callable[..., Any]) -> Callable[..., Any]:
    def _deliver(self: Any, message: Any, queue: Any) -> Any:
        headers = message.get("headers") if isinstance(message, dict) else None
        twin = copy.deepcopy(message) if headers and headers.get("task") else None
        result = original(self, message, queue)
        if twin is not None:
            original(self, twin, queue)
        return result

    return _deliver


def _redis_ack_forgotten_once(original: Callable[..., Any]) -> Callable[..., Any]:
    seen: set[Any] = set()

    def ack(self: Any, delivery_tag: Any) -> Any:
        if delivery_tag in seen:
            return original(self, delivery_tag)
        seen.add(delivery_tag)
        self.restore_by_tag(delivery_tag, leftmost=True)
        # kombu's virtual QoS forgets the delivery; the message is back in its queue.
        return super(type(self), self).ack(delivery_tag)

    return ack


def _unbounded_prefetch(original: Callable[..., Any]) -> Callable[..., Any]:
    def start(self: Any, c: Any) -> Any:
        c.initial_prefetch_count = 0
        return original(self, c)

    return start


def _unbounded_window(_original: Any) -> property:
    return property(lambda self: 0)


#: The corpus, in the order of the kill matrix.
CORPUS: tuple[Mutant, ...] = (
    Mutant(
        "lost-unacked-on-kill",
        "a killed worker's unacked messages are never returned",
        "transport",
        expect=("G4", "L2"),
        simq=(_drop_on(frozenset({"worker-crashed"})),),
        transports={"redis": (Patch(_REDIS_QOS, "restore_visible", _restore_visible_drops),)},
    ),
    Mutant(
        "no-restore-on-connection-loss",
        "unacked messages are not returned when the connection drops",
        "transport",
        expect=("G7", "L2"),
        simq=(_drop_on(frozenset({"connection-lost", "broker-restart"})),),
        transports={"redis": (Patch(_REDIS_QOS, "restore_unacked", _restore_unacked_drops),)},
    ),
    Mutant(
        "double-delivery",
        "every task message is delivered twice",
        "transport",
        expect=("G1", "G2"),
        simq=(Patch(_BROKER, "publish", _publish_twice),),
        transports={
            "redis": (Patch("kombu.transport.virtual.base:Transport", "_deliver", _deliver_twice),)
        },
    ),
    Mutant(
        "early-ack-for-acks-late",
        "acks_late tasks are acked when they start",
        "celery",
        expect=("G2",),
        celery=(Patch(_REQUEST, "on_accepted", _ack_at_start),),
    ),
    Mutant(
        "late-ack-for-early",
        "tasks are acked late although task_acks_late is off",
        "celery",
        expect=("G1",),
        celery=(_bound_acks_late(True),),
    ),
    Mutant(
        "retries-not-incremented",
        "a retry's message carries the same retries count",
        "celery",
        expect=("G13", "G18"),
        celery=(_retry_options(_same_retries),),
    ),
    Mutant(
        "new-id-on-retry",
        "a retry is published under a new task id",
        "celery",
        expect=("G13", "G18"),
        celery=(_retry_options(_new_id),),
    ),
    Mutant(
        "eta-ignored",
        "a countdown or ETA is ignored: the task starts at once",
        "celery",
        expect=("G16",),
        celery=(_after_init(_no_eta),),
        simq=(Patch("simq.world.worker:Worker", "on_delivery", _eta_dropped),),
    ),
    Mutant(
        "soft-limit-ignored",
        "the soft time limit never fires",
        "celery",
        expect=("G11",),
        celery=(_after_init(_soft_ignored),),
    ),
    Mutant(
        "hard-limit-ignored",
        "the hard time limit never fires",
        "celery",
        expect=("G12",),
        celery=(_after_init(_hard_ignored),),
    ),
    Mutant(
        "revoke-ignored",
        "revoke and terminate are ignored",
        "celery",
        expect=("G10",),
        celery=(
            Patch("celery.worker.request", "revoked_tasks", lambda _orig: _Deaf()),
            Patch(_REQUEST, "terminate", _nothing),
        ),
    ),
    Mutant(
        "reject-requeue-acked",
        "Reject(requeue=True) acks the message instead of requeueing it",
        "celery",
        expect=("G8",),
        celery=(Patch(_REQUEST, "reject", _reject_acks),),
    ),
    Mutant(
        "prefetch-unbounded",
        "the worker prefetches without limit",
        "consumer",
        expect=("G5",),
        simq=(Patch("simq.world.worker:Worker", "window", _unbounded_window),),
        worker=(Patch("celery.worker.consumer.tasks:Tasks", "start", _unbounded_prefetch),),
    ),
    Mutant(
        "expires-ignored",
        "an expired task runs anyway",
        "celery",
        expect=("G9",),
        celery=(_after_init(_no_expires),),
    ),
    Mutant(
        "redelivery-after-success",
        "an acked message comes back once: the task runs again after its SUCCESS",
        "transport",
        expect=("G1", "G2", "G15"),
        simq=(Patch(_BROKER, "ack", _ack_forgotten_once),),
        transports={"redis": (Patch(_REDIS_QOS, "ack", _redis_ack_forgotten_once),)},
    ),
)
