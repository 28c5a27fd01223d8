"""A kombu transport whose channel publishes into the simulated broker. Internal.

Celery publishes through its own code: ``send_task`` builds the protocol-2 message,
routes it, serializes it with kombu and hands it to a producer. The producer's channel
is this module's :class:`Channel`, a kombu virtual channel (exchanges, bindings and
routing are kombu's) whose ``basic_publish`` gives the encoded message to the
simulation instead of a socket. Consuming is the simulated workers' job, so ``_get``
never returns anything. Broadcasts on the control exchange (``app.control.revoke``,
``AsyncResult.revoke``) reach the simulated workers as control commands.

A connection to this transport exists only inside a simulation; outside one, creating
it raises :class:`~simq.exceptions.NoActiveSimulation` naming the fix.
"""

from __future__ import annotations

import contextlib
import struct
import warnings
from queue import Empty
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.utils.time import maybe_iso8601
from kombu import Connection, Producer
from kombu.serialization import loads
from kombu.transport import TRANSPORT_ALIASES, virtual

from simq import validate
from simq.exceptions import NoActiveSimulation

__all__ = ["Channel", "ProducerPool", "SimProducer", "Transport", "check_publication", "connect"]


class Channel(virtual.Channel):
    """A virtual channel over the simulation's broker."""

    do_restore = False
    body_encoding = None

    def basic_publish(
        self, message: dict[str, Any], exchange: str, routing_key: str, **kwargs: Any
    ) -> None:
        sim = self.connection.simulation
        if exchange and exchange == sim.control_exchange:
            body = loads(message["body"], message["content-type"], message["content-encoding"])
            sim.control(body.get("method"), body.get("arguments") or {}, body.get("destination"))
            return
        check_publication(sim, message)
        if exchange:
            queues = self._lookup(exchange, routing_key)
        else:
            queues = [routing_key] if self._has_queue(routing_key) else []
        sim.receive(message, exchange, routing_key, queues)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self.connection.simulation.broker.queue(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return queue in self.connection.simulation.broker.queues

    def _size(self, queue: str) -> int:
        q = self.connection.simulation.broker.queues.get(queue)
        return len(q) if q is not None else 0

    def _purge(self, queue: str) -> int:
        return int(self.connection.simulation.broker.purge(queue))

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self._purge(queue)

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        # The simulated workers consume; nothing else reads a queue.
        raise Empty()

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        check_publication(self.connection.simulation, message)
        self.connection.simulation.receive(message, "", queue, [queue])


def check_publication(sim: Any, message: dict[str, Any]) -> None:
    """Refuse a task message the real broker or Celery's worker could not take.

    It raises at the call, before anything is recorded, what the real thing raises:
    py-amqp's ``struct.error`` for a priority it cannot encode, Celery's
    ``InvalidTaskError`` for an ETA or expiry its worker cannot read, and
    :class:`~simq.exceptions.InvalidArgument` for a time limit no pool can keep, a task
    id that is not a str or a retry count that is not a count.
    A message recorded ``published`` is always in a queue or reported lost.
    """
    headers = message.get("headers") or {}
    if "task" not in headers or "id" not in headers:
        return
    task = f"task {headers['task']!r}"
    if not isinstance(headers["id"], str):
        # py-amqp cannot encode it (TypeError); a worker cannot store its result.
        raise validate.invalid(
            task, "task_id", "a str", headers["id"], "; omit task_id= to let Celery make one"
        )
    retries = headers.get("retries") or 0
    validate.whole(task, "retries", retries, minimum=0)
    priority = (message.get("properties") or {}).get("priority")
    if priority is not None:
        _check_priority(sim.broker.transport, task, priority)
    limits = headers.get("timelimit") or (None, None)
    for name, value in zip(("time_limit", "soft_time_limit"), limits, strict=False):
        validate.seconds(task, name, value, none=True, fix=_limit_fix(name, value))
    for name in ("eta", "expires"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            maybe_iso8601(value)
        except (AttributeError, ValueError, TypeError) as exc:
            # celery/worker/request.py: the worker rejects the message as invalid.
            label = "ETA" if name == "eta" else name
            raise InvalidTaskError(
                f"{task}: invalid {label} value {value!r}: {exc}; Celery's worker rejects "
                f"such a message: pass {name}= a datetime"
                + (" (or countdown= seconds)" if name == "eta" else " (or seconds)")
            ) from exc


def _limit_fix(name: str, value: Any) -> str:
    where = f"the call's {name}= or the task's {name} attribute"
    hint = validate.number_hint(name, value)
    return f"{hint} ({where})" if hint else f"; set {where} to a number of seconds, or None"


def _check_priority(transport: str, task: str, priority: Any) -> None:
    if transport == "amqp":
        if isinstance(priority, int) and 0 <= priority <= 255:
            return
        # py-amqp packs the priority as one unsigned byte (amqp/serialization.py).
        raise struct.error(
            f"{task}: priority must be an int from 0 to 255 on amqp, got "
            f"{validate.shown(priority)}; RabbitMQ's client (py-amqp) cannot encode it. "
            "Pass an int: higher runs first, up to the queue's x-max-priority "
            "(task_queue_max_priority)"
        )
    if transport == "redis":
        try:
            int(priority)
        except (TypeError, ValueError):
            # kombu's redis transport (_get_message_priority) falls back to the default.
            warnings.warn(
                f"{task}: priority {priority!r} is not a number; kombu's redis transport "
                "gives the message the default priority 0, and so does simq",
                UserWarning,
                stacklevel=2,
            )


class Transport(virtual.Transport):
    """kombu transport ``simq``: the simulated broker of the active simulation."""

    Channel = Channel
    driver_type = "simq"
    driver_name = "simq"
    default_port = 0

    def __init__(self, client: Any, **kwargs: Any) -> None:
        sim = client.transport_options.get("simulation")
        if sim is None:
            # A connection made from the app's simq:// URL (app.connection_for_write() in
            # user code, ...) while a simulation is active reaches that simulation.
            from simq.simulation import _ACTIVE  # here: simq.simulation imports this module

            sim = _ACTIVE[0]
        if sim is None:
            raise NoActiveSimulation(
                "this app's broker is simq's simulated broker, which exists only inside a "
                "simulation; use `with simq.Simulation(app) as sim:` around the call, or "
                "configure a real broker_url for use outside simq"
            )
        super().__init__(client, **kwargs)
        self.simulation = sim
        self.state = sim.exchange_state
        self.driver_type = sim.broker.transport

    def driver_version(self) -> str:
        return "1"


class SimProducer(Producer):
    """kombu's Producer, minus what a simulated broker has no use for.

    Serialization, compression, headers and properties are kombu's own. Two things are
    skipped: the retry wrapper (``Connection.ensure``: the simulated connection never
    drops mid-publish; a broker fault is the simulation's business) and re-declaring on
    every publish the entities this connection already declared (kombu's
    ``maybe_declare`` binds a copy of each before finding it in its cache).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._declared: dict[int, Any] = {}  # id -> entity (kept alive: ids stay unique)

    def publish(self, body: Any, *args: Any, **kwargs: Any) -> Any:
        declare = kwargs.get("declare")
        if declare:
            declared = self._declared
            todo = [entity for entity in declare if id(entity) not in declared]
            kwargs["declare"] = todo
        else:
            todo = []
        kwargs["retry"] = False
        result = super().publish(body, *args, **kwargs)
        for entity in todo:
            self._declared[id(entity)] = entity
        return result


class ProducerPool:
    """Stands in for ``app.amqp.producer_pool``: one producer on the simulation."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.connections = self  # Celery reads producer_pool.connections.connection
        self.limit = 1
        self.producer = SimProducer(connection.default_channel)

    def acquire(self, block: bool = True, timeout: float | None = None) -> Any:
        return _Lease(self.producer)

    def force_close_all(self) -> None:
        self.connection.release()


class _Lease(contextlib.AbstractContextManager[Any]):
    __slots__ = ("producer",)

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def __enter__(self) -> Producer:
        return self.producer

    def __exit__(self, *exc_info: object) -> None:
        return None

    def release(self) -> None:
        return None


def connect(sim: Any) -> Connection:
    """A kombu connection to ``sim``'s broker."""
    return Connection("simq://", transport=Transport, transport_options={"simulation": sim})


# kombu resolves transports by alias: ``broker_url="simq://"`` (what simq.App sets) names
# this transport, which refuses to connect outside a simulation with a clear error.
TRANSPORT_ALIASES.setdefault("simq", "simq.seams.transport:Transport")
