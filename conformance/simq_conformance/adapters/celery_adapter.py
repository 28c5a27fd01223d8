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

Built in: :func:`celery_redis`, :func:`celery_rabbitmq` (results in Redis),
:func:`celery_memory` (``memory://`` cannot cross processes, so its worker runs inside
the test process and no fault can be injected) and :func:`celery_by_url`, any kombu
transport by URL (``pytest --conformance=celery --conformance-url=filesystem://``), its
capabilities read from kombu's transport class.

Isolation: each pytest-xdist worker gets its own Redis database and RabbitMQ virtual
host, and each run its own queue, so runs never see each other's messages.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from simq_conformance.adapter import (
    PROBES,
    BaseAdapter,
    Capabilities,
    Deviation,
    RunError,
    RunResult,
    Workload,
)
from simq_conformance.adapters import _brokers
from simq_conformance.adapters._celery_run import RECOVERY, Run
from simq_conformance.adapters._celery_workers import WorkersNotReady
from simq_conformance.adapters._transport import (
    TransportTraits,
    inspect_transport,
    prepare,
    scratch_dir,
)

__all__ = [
    "CeleryAdapter",
    "celery_by_url",
    "celery_memory",
    "celery_rabbitmq",
    "celery_redis",
    "detect_capabilities",
]

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

#: The slack of a deployment not calibrated yet (seconds), as before calibration existed.
_UNCALIBRATED = 2.0
#: Tolerance on the transport's own timing (seconds): see detect_capabilities.
_TRANSPORT_SLACK = 2.0
#: The in-process worker of memory:// is not calibrated (one process, one clock, no pool
#: children, no time limits): a declared slack for its ETA and expiry bounds.
_MEMORY_SLACK = 0.5

_SHARED_BROKER = (
    "the broker at {where} is shared with every test running on this machine; "
    "restarting it would break them"
)

#: Models the checkers know (``Capabilities.transport``), for ``model=``.
MODELS = ("amqp", "redis", "sqs", "memory")
#: The old ``transport=`` argument's values (it named both the broker and the model).
TRANSPORTS = ("redis", "amqp", "memory")


def _memory_capabilities(name: str) -> Capabilities:
    reason = (
        "celery-memory runs its worker inside the test process (memory:// cannot cross processes)"
    )
    no_fault = f"{reason}: it has no process to kill or signal"
    return Capabilities(
        adapter=name,
        transport="memory",
        time_limits=False,
        observes=_OBSERVES_MEMORY,
        visibility_timeout=None,
        probes=frozenset(PROBES) - {"die"},
        slack=_MEMORY_SLACK,
        slack_source="declared: one process, one clock, no pool children (not calibrated)",
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


def detect_capabilities(
    name: str,
    traits: TransportTraits,
    *,
    model: str,
    visibility_timeout: float | None = None,
    conf: Mapping[str, Any] | None = None,
) -> Capabilities:
    """The capabilities of real Celery workers on the transport ``traits`` describe.

    Every missing fault and every deviation comes from what kombu says of the
    transport (see ``_transport``), with its reason.
    """
    if traits.driver == "memory":
        return _memory_capabilities(name)
    kombu_name = f"kombu's {traits.driver_name} transport ({traits.scheme}://)"
    faults = set(_REAL_FAULTS)
    deviations: list[Deviation] = []
    if traits.network:
        deviations.append(
            Deviation("fault:restart_broker", _SHARED_BROKER.format(where=traits.location))
        )
    else:
        deviations.append(
            Deviation("fault:restart_broker", f"{kombu_name} has no broker process to restart")
        )
        faults.discard("cut_connection")
        deviations.append(
            Deviation("fault:cut_connection", f"{kombu_name} has no network connection to cut")
        )
    if not traits.fanout:
        types = ", ".join(sorted(traits.exchange_types)) or "none"
        why = (
            f"{kombu_name} implements no fanout exchange (Transport.implements.exchange_type: "
            f"{types}): Celery's broadcast commands (revoke, terminate, remote control) "
            "never reach the workers"
        )
        for kind in ("revoke", "terminate"):
            faults.discard(kind)
            deviations.append(Deviation(f"fault:{kind}", why))
    if traits.loses_unacked_on_kill:
        why = (
            f"{kombu_name} is a virtual transport without a visibility timeout: a "
            "delivered message waits for its ack only in the consuming process (kombu's "
            "virtual QoS), which puts it back when the channel closes; a worker killed "
            "with SIGKILL never closes it, so its unacked messages are lost (the adapter "
            "records them lost)"
        )
        deviations += [Deviation("G4", why), Deviation("L2", why)]
        if "cut_connection" not in faults:
            deviations.append(
                Deviation(
                    "G14",
                    f"its premise, a task that already succeeded delivered again, needs a "
                    f"fault that takes an unacked message back; on {kombu_name} a killed "
                    "worker's messages are lost and there is no connection to cut",
                )
            )
    if traits.driver == "redis":
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
    if traits.driver == "amqp":
        # RabbitMQ drops a message whose TTL (Celery's expires) ran out in the queue.
        observes = observes | {"lost"}
    if traits.loses_unacked_on_kill:
        observes = observes | {"lost"}
    quorum = (conf or {}).get("task_default_queue_type") == "quorum"
    # slack (timing jitter) is measured at setup (CeleryAdapter.setup); until then the
    # old blanket 2 s. transport_slack is transport behaviour, not jitter: real Redis
    # restores an unacked message only from a worker's poll, so a restore is recorded up
    # to a poll late, and a copy's delivery is judged against an earlier unacked one; a
    # polling transport's consumer takes its next turn (lowering the prefetch count after
    # an ETA task) only after its next poll.
    return Capabilities(
        adapter=name,
        transport=model,
        faults=frozenset(faults),
        time_limits=True,
        observes=observes,
        visibility_timeout=visibility_timeout if traits.visibility_timeout else None,
        deviations=tuple(deviations),
        delayed_delivery="broker" if traits.driver == "amqp" and quorum else "worker",
        sync_loop=not traits.asynchronous,
        slack=_UNCALIBRATED,
        transport_slack=_TRANSPORT_SLACK,
    )


_SPLIT = (
    "CeleryAdapter's transport argument was split in three: the broker is its URL (kombu "
    "picks the transport from the scheme), transport options go in transport_options=, "
    "and the checkers' model (amqp, redis, sqs, memory) is model=, detected from the URL "
    "when omitted"
)


@attrs.define(eq=False, init=False)
class CeleryAdapter(BaseAdapter):
    """Real Celery workers on any kombu transport, named by its URL.

    Workers are ``celery worker`` processes (prefork), except on ``memory://``, which
    cannot cross processes: there the worker runs inside the test process and no fault
    can be injected. What the transport supports (fanout for revoke, a visibility
    timeout, a connection to cut) is read from kombu (``capabilities``).

    Args:
        name: The adapter's name in reports (``"celery-redis"``, ...).
        url: The broker URL, any kombu transport (``redis://``, ``amqp://``,
            ``filesystem://``, ``sqla+sqlite:///PATH``, ...); its database, virtual host
            or folders should belong to this test process alone.
        backend_url: The result backend. Default: the broker itself for Redis,
            ``cache+memory://`` for memory, otherwise a ``file://`` folder of the
            adapter's own (it needs no service).
        transport_options: kombu transport options (``broker_transport_options``) for
            every run; a workload's own override them. ``filesystem://`` folders not
            given are created (and removed at teardown).
        model: How the checkers read histories: ``"amqp"`` (unacked messages return when
            the channel closes, flagged redelivered), ``"redis"``/``"sqs"`` (after the
            visibility timeout) or ``"memory"`` (when the channel closes, not flagged:
            kombu's virtual transports). Detected from the URL when None.
        conf: Extra Celery settings for every run (a workload's own override them).
        timeout: Seconds a run may take after publishing before it is cut short
            (``RunResult.complete`` is then False).
        startup_timeout: Seconds workers may take to come online. A run whose workers
            do not is retried once, then raises :class:`~simq_conformance.adapter.RunError`.
        restart_killed_after: A worker killed by ``kill_worker`` is replaced by a fresh
            one of the same name after this many seconds (None: never).
        visibility_timeout: Transports with one (Redis, SQS): kombu's visibility timeout
            for the run, unless the transport options or the workload set one.
        transport: Deprecated: ``"redis"``, ``"amqp"`` or ``"memory"``, the old single
            argument; accepted with a DeprecationWarning when it agrees with the URL.
    """

    name: str
    url: str
    backend_url: str
    transport_options: dict[str, Any]
    model: str
    conf: dict[str, Any]
    timeout: float
    startup_timeout: float
    restart_killed_after: float | None
    visibility_timeout: float | None
    traits: TransportTraits
    capabilities: Capabilities
    #: A planted bug (``simq_conformance.mutants``) its workers plant as they boot.
    mutant: str | None = None
    _ready: bool = False
    _scratch: Path | None = None
    _created: tuple[Path, ...] = ()
    _given_url: str = ""
    _given_options: dict[str, Any] = attrs.Factory(dict)
    _given_backend: str | None = None

    def __init__(
        self,
        name: str,
        url: str | None = None,
        backend_url: str | None = None,
        *legacy: Any,
        transport_options: Mapping[str, Any] | None = None,
        model: str | None = None,
        conf: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        startup_timeout: float = 30.0,
        restart_killed_after: float | None = RECOVERY,
        visibility_timeout: float | None = None,
        transport: str | None = None,
        broker_url: str | None = None,
    ) -> None:
        if broker_url is not None:
            if url is not None:
                raise TypeError("CeleryAdapter: give url= or broker_url=, not both")
            url = broker_url
        if url is None:
            raise TypeError("CeleryAdapter needs the broker's url (any kombu transport)")
        if legacy:
            if len(legacy) > 1 or transport is not None:
                raise TypeError(
                    f"CeleryAdapter takes 3 positional arguments (name, url, backend_url); "
                    f"the rest are keywords. {_SPLIT}"
                )
            transport = legacy[0]
        traits = inspect_transport(url, transport_options)
        if transport is not None:
            if transport not in TRANSPORTS or _MODEL_OF_DRIVER.get(traits.driver) != transport:
                raise ValueError(
                    f"CeleryAdapter(transport={transport!r}) with url {url!r} (kombu's "
                    f"{traits.driver_name} transport, model {traits.model!r}): {_SPLIT}. "
                    "Drop transport=, or pass model= to override the detected model"
                )
            warnings.warn(
                f"{_SPLIT}; transport={transport!r} agrees with the URL and is ignored",
                DeprecationWarning,
                stacklevel=2,
            )
        if model is not None and model not in MODELS:
            raise ValueError(
                f"CeleryAdapter: model must be one of {', '.join(MODELS)}, got {model!r}"
            )
        self.__attrs_init__(
            name=name,
            url=url,
            backend_url=backend_url or "",
            transport_options=dict(transport_options or {}),
            model=model or traits.model,
            conf=dict(conf or {}),
            timeout=timeout,
            startup_timeout=startup_timeout,
            restart_killed_after=restart_killed_after,
            visibility_timeout=visibility_timeout,
            traits=traits,
            capabilities=Capabilities(adapter=name, transport=model or traits.model),
        )
        self._given_url = url
        self._given_options = dict(transport_options or {})
        self._given_backend = backend_url
        if traits.driver == "memory":
            self.backend_url = backend_url or "cache+memory://"
        elif traits.driver == "redis":
            self.backend_url = backend_url or url
        self.capabilities = detect_capabilities(
            name,
            traits,
            model=self.model,
            visibility_timeout=self.transport_options.get("visibility_timeout", visibility_timeout),
            conf=self.conf,
        )

    # -- compatibility and derived settings ---------------------------------------------

    @property
    def broker_url(self) -> str:
        """The broker URL the workers use (``url``, made absolute where it names files)."""
        return self.url

    @property
    def transport(self) -> str:
        """Deprecated: the checkers' model (``capabilities.transport``)."""
        return self.model

    @property
    def driver(self) -> str:
        """kombu's driver type of the broker (``"redis"``, ``"amqp"``, ``"filesystem"``...)."""
        return self.traits.driver

    @property
    def in_process(self) -> bool:
        """``memory://``: the worker runs in the test process."""
        return self.traits.driver == "memory"

    def setup(self) -> None:
        """Prepare the broker (folders, absolute paths, a RabbitMQ vhost) and check that
        it and the backend answer.

        Raises:
            BrokerUnreachable: a service does not answer.
        """
        if not self._ready:
            self._prepare()
        if self.driver == "redis":
            _brokers.redis_check(self.url)
        elif self.driver == "amqp":
            base, _, vhost = self.url.rpartition("/")
            _brokers.amqp_check(base + "/")
            if vhost:
                _brokers.amqp_ensure_vhost(base, vhost)
        elif not self.in_process:
            # Any other transport: open a channel once (SQLAlchemy creates its tables
            # here, before several workers race to).
            _brokers.kombu_check(self.url, self.transport_options)
        if self.backend_url.startswith("redis"):
            _brokers.redis_check(self.backend_url)
        self._ready = True
        if not self.in_process and not self.capabilities.slack_measured:
            self._calibrate()

    def _calibrate(self) -> None:
        """Measure the deployment's timing jitter once; it becomes ``capabilities.slack``.

        Raises:
            CalibrationError: the deployment is too jittery to certify time bounds.
        """
        from simq_conformance.calibrate import calibrate

        # The slack measures the deployment, not a planted bug: a mutant that ignores
        # ETAs or soft limits would otherwise widen the slack that is to catch it.
        mutant, self.mutant = self.mutant, None
        try:
            calibration = calibrate(self)
        finally:
            self.mutant = mutant
        self.capabilities = attrs.evolve(
            self.capabilities, slack=calibration.slack, slack_source=calibration.describe()
        )

    def _prepare(self) -> None:
        if self.in_process or self.driver in ("redis", "amqp"):
            return
        if self._scratch is None:
            self._scratch = scratch_dir(self.name)
        prepared = prepare(self._given_url, self._given_options, self._scratch)
        self.url = prepared.url
        self.transport_options = prepared.transport_options
        if not self._given_backend:
            results = self._scratch / "results"
            results.mkdir(exist_ok=True)
            self.backend_url = f"file://{results}"

    def teardown(self) -> None:
        """Remove the folders the adapter created (temporary broker and result files)."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        self._ready = False

    def run(self, workload: Workload) -> RunResult:
        """Start workers, publish the calls, inject the faults, wait, stop, record.

        Workers that do not come online in ``startup_timeout`` (a loaded machine) cost
        one retry of the run; a second time the run raises :class:`RunError`.
        """
        self._validate(workload)
        if not self._ready:
            self.setup()
        try:
            return Run(self, workload).execute()
        except WorkersNotReady as first:
            try:
                return Run(self, workload).execute()
            except WorkersNotReady as second:
                raise RunError(
                    f"{self.name}: workers not ready twice (the run was retried once): "
                    f"{first.summary}; then {second.summary}"
                ) from second

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


#: The old ``transport=`` value each kombu driver matches.
_MODEL_OF_DRIVER = {"redis": "redis", "amqp": "amqp", "memory": "memory"}


# -- factories ---------------------------------------------------------------------------


def celery_by_url(
    url: str | None = None,
    *,
    transport_options: Mapping[str, Any] | None = None,
    name: str = "celery",
    visibility_timeout: float = 8.0,
    **options: Any,
) -> CeleryAdapter:
    """Celery on any kombu transport by URL: ``pytest --conformance=celery --conformance-url=URL``.

    ``filesystem://`` and ``sqla+sqlite:///PATH`` need nothing else: folders and the
    result backend are created for the session. Transports with a visibility timeout
    (Redis, SQS) get ``visibility_timeout`` (8 s, as celery-redis) unless the
    transport options set one.
    """
    if not url:
        raise ValueError(
            "--conformance=celery needs --conformance-url=URL, the broker of any kombu "
            "transport (e.g. filesystem://, sqla+sqlite:///conformance.db, "
            "redis://127.0.0.1:6379/5)"
        )
    return CeleryAdapter(
        name,
        url,
        transport_options=transport_options,
        visibility_timeout=visibility_timeout,
        **options,
    )


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
    return CeleryAdapter("celery-redis", url, url, visibility_timeout=visibility_timeout, **options)


def celery_rabbitmq(
    url: str | None = None, *, backend_url: str | None = None, **options: Any
) -> CeleryAdapter:
    """Celery on the machine's RabbitMQ (a vhost per xdist worker), results in Redis."""
    url = url or f"{_brokers.AMQP_URL}/simq-{_brokers.isolation_id()}"
    backend = backend_url or f"{_brokers.REDIS_URL}/{_brokers.redis_db()}"
    return CeleryAdapter("celery-rabbitmq", url, backend, **options)


def celery_memory(url: str | None = None, **options: Any) -> CeleryAdapter:
    """Celery's in-memory broker with an in-process worker (no faults, no time limits).

    ``url`` is accepted for the registry's sake and must be None or ``memory://``.
    """
    if url not in (None, "memory://"):
        raise ValueError(f"celery-memory needs no URL (it is memory://), got {url!r}")
    return CeleryAdapter("celery-memory", "memory://", "cache+memory://", **options)
