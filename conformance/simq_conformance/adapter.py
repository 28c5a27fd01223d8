"""The adapter interface: what a broker + worker deployment must offer the suite.

A narrow required core (:class:`Adapter`: ``capabilities`` and ``run``), optional hooks
with defaults (``setup``/``teardown``), and capabilities as data: skips and documented
deviations are generated from :class:`Capabilities`, never hand-written.

An adapter runs a :class:`Workload` (probe calls, worker settings, a fault schedule) on
its deployment and hands back a :class:`RunResult` whose history uses simq's event
vocabulary (``simq.history``), so the same checkers judge the simulator and the real
thing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from simq.history import History

__all__ = [
    "FAULTS",
    "PROBES",
    "Adapter",
    "Capabilities",
    "Deviation",
    "Fault",
    "ProbeCall",
    "RunError",
    "RunResult",
    "RunSettings",
    "Workload",
]

#: Faults an adapter may support (a capability each). ``revoke``/``terminate`` send
#: ``revoke(task_id, terminate=...)`` for a probe call; the shutdowns stop a worker (warm:
#: running tasks finish; cold: they are cancelled) and start a fresh one in its place.
FAULTS = (
    "kill_worker",
    "kill_child",
    "cut_connection",
    "restart_broker",
    "revoke",
    "terminate",
    "warm_shutdown",
    "cold_shutdown",
)

#: Probe task names (short names; the probe app registers them as ``probes.<name>``).
PROBES = (
    "ret",          # (value) -> value
    "fail_n",       # (key, n, value) fails n times (autoretry, countdown 0.2 s), then value
    "retry",        # (key, times, countdown) self.retry(countdown=...) `times` times, then "ok"
    "sleep",        # (seconds) sleeps, returns seconds
    "die",          # (key, times) the child exits (os._exit(1)) the first `times` runs
    "exceed",       # (seconds) sleeps past its time limit (call with time_limit=...)
    "reject",       # (key, times, requeue) raises Reject(requeue) the first `times` runs
    "ignore",       # () raises Ignore
    "fail",         # (message) raises ValueError(message)
)  # fmt: skip


@attrs.frozen
class Deviation:
    """A documented difference between an adapter and Celery's guarantees."""

    guarantee: str
    reason: str


@attrs.frozen
class Capabilities:
    """What an adapter can do and observe; the suite skips what it cannot.

    Attributes:
        adapter: The adapter's name (``"simq"``, ``"celery-redis"``, ...).
        transport: ``"amqp"``, ``"redis"``, ``"sqs"`` or ``"memory"``.
        faults: The subset of :data:`FAULTS` it can inject.
        time_limits: Whether hard and soft time limits are enforced (prefork).
        observes: Event kinds its histories contain (``"delivered"``, ``"acked"``, ...).
        visibility_timeout: Seconds before an unacked message is restored, if any.
        deviations: Documented differences, by guarantee. A missing capability's reason
            is a deviation named after it (``"fault:restart_broker"``, ``"probe:die"``),
            which :meth:`missing` quotes.
        probes: The subset of :data:`PROBES` it can run (a worker inside the test
            process cannot let ``die`` end its process).
        slack: Seconds of tolerance on time bounds (a start against its ETA or expiry,
            a time limit against its limit, a prefork ack against the child's start):
            the recording's timing jitter. A simulator needs none; the Celery adapter
            measures it at setup (:mod:`simq_conformance.calibrate`); another adapter
            declares it (2 s by default).
        transport_slack: Seconds of tolerance on what the broker and the worker's
            consumer loop do in their own time (visibility-timeout restores, redelivery
            after a fault, the consumer's next turn): transport behaviour, not jitter.
            None: the same as ``slack``.
        slack_source: Where ``slack`` comes from, for reports: ``"declared"``, or what
            the calibration measured (``"measured: ..."``).
        simulated: Runs in virtual time, fast and exact: the suite runs more examples
            and shrinks failures to a minimal workload.
        delayed_delivery: Where a countdown or ETA waits until it is due: ``"worker"``
            (Celery holds the message in the worker, which widens its prefetch window)
            or ``"broker"`` (native delayed delivery, RabbitMQ quorum queues).
        sync_loop: The workers run Celery's synchronous consumer loop (a transport
            kombu marks not asynchronous: ``filesystem://``, SQLAlchemy, ...), where the
            consumer hands every received task to the prefork pool, waiting for a free
            child.
        reproduce: Command-line options, beyond ``--conformance=NAME``, the seed and the
            number of examples, that select this same deployment again
            (``--conformance-url=...``, ``--conformance-transport-options=...``): a
            failure's ``reproduce:`` line carries them.
    """

    adapter: str
    transport: str
    faults: frozenset[str] = frozenset()
    time_limits: bool = False
    observes: frozenset[str] = frozenset()
    visibility_timeout: float | None = None
    deviations: tuple[Deviation, ...] = ()
    slack: float = 2.0
    transport_slack: float | None = None
    slack_source: str = "declared"
    simulated: bool = False
    probes: frozenset[str] = frozenset(PROBES)
    delayed_delivery: str = "worker"
    sync_loop: bool = False
    reproduce: tuple[str, ...] = ()

    @property
    def slack_measured(self) -> bool:
        """Whether ``slack`` was measured on the deployment (``slack_source``)."""
        return self.slack_source.startswith("measured")

    def missing(
        self,
        *,
        faults: tuple[str, ...] = (),
        observes: tuple[str, ...] = (),
        time_limits: bool = False,
        probes: tuple[str, ...] = (),
    ) -> str | None:
        """Why this adapter cannot run a check needing these, or None if it can."""
        for fault in faults:
            if fault not in self.faults:
                return f"{self.adapter}: capability fault {fault!r} not supported" + (
                    self._why(f"fault:{fault}")
                )
        for probe in probes:
            if probe not in self.probes:
                return f"{self.adapter}: capability probe {probe!r} not supported" + (
                    self._why(f"probe:{probe}")
                )
        for kind in observes:
            if kind not in self.observes:
                return f"{self.adapter}: capability observes {kind!r} not available"
        if time_limits and not self.time_limits:
            return f"{self.adapter}: capability time_limits not supported"
        return None

    def _why(self, name: str) -> str:
        dev = self.deviation(name)
        return f" ({dev.reason})" if dev is not None else ""

    def deviation(self, guarantee: str) -> Deviation | None:
        for dev in self.deviations:
            if dev.guarantee == guarantee:
                return dev
        return None


@attrs.frozen
class ProbeCall:
    """One call of a probe task: ``probes.<probe>.apply_async(args, **options)``.

    ``key`` names the call in the run (probes that count attempts use it).
    """

    probe: str
    args: tuple[Any, ...] = ()
    options: Mapping[str, Any] = attrs.field(factory=dict)
    key: str = ""

    def __attrs_post_init__(self) -> None:
        if self.probe not in PROBES:
            raise ValueError(f"unknown probe {self.probe!r}; probes: {', '.join(PROBES)}")


@attrs.frozen
class Fault:
    """A fault to inject ``at`` seconds after the workload was published.

    ``target`` is a worker index for kill_worker, cut_connection and the shutdowns, a
    probe call's key for kill_child (the child running it), revoke and terminate, unused
    for restart_broker.
    """

    kind: str
    at: float
    target: int | str | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"unknown fault {self.kind!r}; faults: {', '.join(FAULTS)}")


@attrs.frozen
class RunSettings:
    """The deployment for one run: workers and Celery settings (``app.conf`` names)."""

    workers: int = 1
    concurrency: int = 1
    prefetch_multiplier: int = 1
    conf: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Workload:
    """Everything one run does: settings, probe calls, faults.

    ``to_json``/``from_json`` store it (``pytest --conformance-replay=FILE`` reruns a
    stored workload exactly).
    """

    settings: RunSettings = RunSettings()
    calls: tuple[ProbeCall, ...] = ()
    faults: tuple[Fault, ...] = ()
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (probe arguments must be JSON values, as on the wire)."""
        s = self.settings
        return {
            "settings": {
                "workers": s.workers,
                "concurrency": s.concurrency,
                "prefetch_multiplier": s.prefetch_multiplier,
                "conf": dict(s.conf),
            },
            "calls": [
                {"probe": c.probe, "args": list(c.args), "options": dict(c.options), "key": c.key}
                for c in self.calls
            ],
            "faults": [{"kind": f.kind, "at": f.at, "target": f.target} for f in self.faults],
            "seed": self.seed,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workload:
        """The workload ``to_dict`` gave.

        Raises:
            ValueError: a field is missing or has the wrong shape (the message names it).
        """
        try:
            s = data["settings"]
            return cls(
                RunSettings(
                    int(s["workers"]), int(s["concurrency"]), int(s["prefetch_multiplier"]),
                    dict(s["conf"]),
                ),
                tuple(
                    ProbeCall(c["probe"], tuple(c["args"]), dict(c["options"]), c["key"])
                    for c in data["calls"]
                ),
                tuple(Fault(f["kind"], float(f["at"]), f["target"]) for f in data["faults"]),
                int(data["seed"]),
            )  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"not a stored workload (Workload.to_json): {type(exc).__name__}: {exc}"
            ) from None

    @classmethod
    def from_json(cls, text: str) -> Workload:
        return cls.from_dict(json.loads(text))


@attrs.frozen
class RunResult:
    """What a run recorded. ``complete``: every probe reached a final state in time.

    ``task_ids`` maps each probe call's key to its task id, when the adapter knows it.
    ``stopped_at``: when the adapter stopped an incomplete run (``time.time()``, the
    history's clock), so that liveness says how long a message was waited for; None: the
    last event's time.
    """

    history: History
    complete: bool
    capabilities: Capabilities
    workload: Workload
    notes: tuple[str, ...] = ()
    task_ids: Mapping[str, str] = attrs.field(factory=dict)
    stopped_at: float | None = None


class RunError(Exception):
    """The deployment could not carry a run out (workers never came online, ...).

    Not a verdict on any guarantee: an adapter raises it when a run could not happen
    (after retrying, if it retries), and the campaign counts an errored run, lists it
    in the report and goes on with the next workload. Any other exception from
    ``run`` is a bug of the adapter and ends the campaign.
    """


@runtime_checkable
class Adapter(Protocol):
    """A deployment the suite can certify."""

    capabilities: Capabilities

    def run(self, workload: Workload) -> RunResult:
        """Start workers, publish the calls, inject the faults, wait, stop, record."""
        ...


class BaseAdapter:
    """Optional hooks with defaults; subclass and implement ``run``."""

    capabilities: Capabilities

    def setup(self) -> None:
        """Called once before the first run (connect, check the broker is reachable)."""

    def teardown(self) -> None:
        """Called once after the last run."""

    def run(self, workload: Workload) -> RunResult:
        raise NotImplementedError
