"""Real Celery deployments as conformance adapters: Redis, RabbitMQ, in-memory.

:class:`CeleryAdapter` runs a :class:`~simq_conformance.Workload` on real ``celery
worker`` processes (prefork, each in its own process group) against a real broker,
injects the workload's faults for real (SIGKILL, connection cuts, shutdown signals,
revoke broadcasts), and hands back the history the processes recorded through
:mod:`simq_conformance.sink`::

    adapter = celery_redis()
    result = adapter.run(Workload(RunSettings(conf={"task_acks_late": True}),
                                  calls=(ProbeCall("ret", (1,), key="c1"),)))
    assert "acked" in result.history.kinds()

Built in: :func:`celery_redis`, :func:`celery_rabbitmq` (results in Redis) and
:func:`celery_memory` (``memory://`` cannot cross processes, so its worker runs inside
the test process and no fault can be injected).

Isolation: each pytest-xdist worker gets its own Redis database and RabbitMQ virtual
host, and each run its own queue, so runs never see each other's messages.
"""

from __future__ import annotations

from typing import Any

import attrs

from simq_conformance.adapter import (
    PROBES,
    BaseAdapter,
    Capabilities,
    Deviation,
    RunResult,
    Workload,
)
from simq_conformance.adapters import _brokers
from simq_conformance.adapters._celery_run import RECOVERY, Run

__all__ = ["CeleryAdapter", "celery_memory", "celery_rabbitmq", "celery_redis"]

TRANSPORTS = ("redis", "amqp", "memory")

#: Event kinds a real worker's history contains (see ``_celery_recorder``). Broker-side
#: restores (``requeued``) happen inside the broker: they show only as a redelivery.
_OBSERVES_REAL = frozenset(
    {
        "worker-online",
        "published",
        "delivered",
        "started",
        "acked",
        "rejected",
        "ack-failed",
        "state",
        "state-discarded",
        "succeeded",
        "failed",
        "retried",
        "ignored",
        "declined",
        "revoked",
        "unregistered",
        "time-limit",
        "child-lost",
        "child-killed",
        "cancelled",
        "worker-crashed",
        "worker-offline",
        "shutdown",
        "connection-lost",
        "connection-restored",
        "revoke",
    }
)
_OBSERVES_MEMORY = _OBSERVES_REAL - {
    "time-limit",
    "child-lost",
    "child-killed",
    "cancelled",
    "worker-crashed",
    "worker-offline",
    "shutdown",
    "connection-lost",
    "connection-restored",
    "revoke",
}
_REAL_FAULTS = frozenset(
    {
        "kill_worker",
        "kill_child",
        "cut_connection",
        "revoke",
        "terminate",
        "warm_shutdown",
        "cold_shutdown",
    }
)

_SHARED_BROKER = (
    "the broker at {where} is shared with every test running on this machine; "
    "restarting it would break them"
)


def _capabilities(adapter: CeleryAdapter) -> Capabilities:
    if adapter.transport == "memory":
        reason = (
            "celery-memory runs its worker inside the test process (memory:// "
            "cannot cross processes)"
        )
        no_fault = f"{reason}: it has no process to kill or signal"
        return Capabilities(
            adapter=adapter.name,
            transport="memory",
            time_limits=False,
            observes=_OBSERVES_MEMORY,
            visibility_timeout=None,
            probes=frozenset(PROBES) - {"die"},
            deviations=(
                Deviation(
                    "G2",
                    "kombu's memory:// transport returns a rejected or restored message "
                    "without flagging it redelivered",
                ),
                Deviation("G3", f"{reason}: no pool child can die (no die probe, no kill_child)"),
                Deviation("G4", f"{reason}: the worker cannot be killed"),
                Deviation("G7", "memory:// has no connection to cut"),
                Deviation("G10", "no revoke: remote control is off in process"),
                Deviation("G11", "the solo/threads pool enforces no time limits"),
                Deviation("G12", "the solo/threads pool enforces no time limits"),
                Deviation("G17", no_fault),
                Deviation("probe:die", f"{reason}: os._exit would end the test run"),
                *(Deviation(f"fault:{kind}", no_fault) for kind in sorted(_REAL_FAULTS)),
                Deviation("fault:restart_broker", "memory:// has no broker process"),
            ),
        )
    where = "127.0.0.1:6379" if adapter.transport == "redis" else "127.0.0.1:5672"
    deviations = [Deviation("fault:restart_broker", _SHARED_BROKER.format(where=where))]
    if adapter.transport == "redis":
        deviations.append(
            Deviation(
                "G7",
                "a Redis connection killed under the worker (CLIENT KILL) is noticed only "
                "if the consumer was blocked in BRPOP on it; otherwise (a full prefetch "
                "window) redis-py reopens it inside kombu: the consumer does not restart, "
                "keeps its reserved messages, acks them on the new connection, and no "
                "connection-restored is recorded",
            )
        )
    observes = _OBSERVES_REAL
    if adapter.transport == "amqp":
        # RabbitMQ drops a message whose TTL (Celery's expires) ran out in the queue.
        observes = observes | {"lost"}
    return Capabilities(
        adapter=adapter.name,
        transport=adapter.transport,
        faults=_REAL_FAULTS,
        time_limits=True,
        observes=observes,
        visibility_timeout=adapter.visibility_timeout if adapter.transport == "redis" else None,
        deviations=tuple(deviations),
    )


@attrs.define(eq=False)
class CeleryAdapter(BaseAdapter):
    """Real Celery workers on a real broker.

    Args:
        name: The adapter's name in reports (``"celery-redis"``, ...).
        broker_url: The broker; its database or virtual host should belong to this test
            process alone (the factories see to it).
        backend_url: The result backend (Redis, or ``cache+memory://`` for memory).
        transport: ``"redis"``, ``"amqp"`` or ``"memory"``.
        timeout: Seconds a run may take after publishing before it is cut short
            (``RunResult.complete`` is then False).
        startup_timeout: Seconds workers may take to come online.
        restart_killed_after: A worker killed by ``kill_worker`` is replaced by a fresh
            one of the same name after this many seconds (None: never).
        visibility_timeout: Redis only: kombu's visibility timeout for the run, unless
            the workload's ``broker_transport_options`` set one.
    """

    name: str
    broker_url: str
    backend_url: str
    transport: str = attrs.field(validator=attrs.validators.in_(TRANSPORTS))
    timeout: float = 30.0
    startup_timeout: float = 30.0
    restart_killed_after: float | None = RECOVERY
    visibility_timeout: float | None = None
    capabilities: Capabilities = attrs.field(init=False)
    _ready: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self.capabilities = _capabilities(self)

    def setup(self) -> None:
        """Check the broker and backend answer (and create the RabbitMQ vhost).

        Raises:
            BrokerUnreachable: a service does not answer.
        """
        if self.transport == "redis":
            _brokers.redis_check(self.broker_url)
        elif self.transport == "amqp":
            base, _, vhost = self.broker_url.rpartition("/")
            _brokers.amqp_check(base + "/")
            if vhost:
                _brokers.amqp_ensure_vhost(base, vhost)
        if self.backend_url.startswith("redis"):
            _brokers.redis_check(self.backend_url)
        self._ready = True

    def run(self, workload: Workload) -> RunResult:
        """Start workers, publish the calls, inject the faults, wait, stop, record."""
        self._validate(workload)
        if not self._ready:
            self.setup()
        return Run(self, workload).execute()

    def _validate(self, workload: Workload) -> None:
        caps = self.capabilities
        for fault in workload.faults:
            if fault.kind not in caps.faults:
                raise ValueError(
                    f"{caps.missing(faults=(fault.kind,))}; check capabilities.faults "
                    "before running (simq_conformance.workloads does)"
                )
        for call in workload.calls:
            if call.probe not in caps.probes:
                raise ValueError(
                    f"{caps.missing(probes=(call.probe,))}; check capabilities.probes "
                    "before running"
                )


# -- factories ---------------------------------------------------------------------------


def celery_redis(
    url: str | None = None, *, visibility_timeout: float = 8.0, **options: Any
) -> CeleryAdapter:
    """Celery on the machine's Redis (broker and results), a database per xdist worker.

    ``visibility_timeout`` (kombu's default is 3600 s) bounds how long a killed worker's
    unacked messages wait before redelivery (G4); a countdown, ETA or acks_late run
    longer than it is delivered twice (G6). A workload may set its own in
    ``broker_transport_options``; ``RunResult.capabilities`` reports the one in force.
    """
    url = url or f"{_brokers.REDIS_URL}/{_brokers.redis_db()}"
    return CeleryAdapter(
        "celery-redis", url, url, "redis", visibility_timeout=visibility_timeout, **options
    )


def celery_rabbitmq(
    url: str | None = None, *, backend_url: str | None = None, **options: Any
) -> CeleryAdapter:
    """Celery on the machine's RabbitMQ (a vhost per xdist worker), results in Redis."""
    url = url or f"{_brokers.AMQP_URL}/simq-{_brokers.isolation_id()}"
    backend = backend_url or f"{_brokers.REDIS_URL}/{_brokers.redis_db()}"
    return CeleryAdapter("celery-rabbitmq", url, backend, "amqp", **options)


def celery_memory(url: str | None = None, **options: Any) -> CeleryAdapter:
    """Celery's in-memory broker with an in-process worker (no faults, no time limits).

    ``url`` is accepted for the registry's sake and must be None or ``memory://``.
    """
    if url not in (None, "memory://"):
        raise ValueError(f"celery-memory needs no URL (it is memory://), got {url!r}")
    return CeleryAdapter("celery-memory", "memory://", "cache+memory://", "memory", **options)
