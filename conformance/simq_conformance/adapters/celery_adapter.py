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

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import attrs

from simq_conformance.adapter import (
    PROBES,
    BaseAdapter,
    Capabilities,
    Deviation,
    Fault,
    RunResult,
    Workload,
)
from simq_conformance.adapters import _brokers
from simq_conformance.adapters._celery_recorder import CeleryRecorder
from simq_conformance.adapters._celery_workers import InProcessWorkers, ProcessWorkers
from simq_conformance.probes import SINK_SETTING, register_probes
from simq_conformance.sink import Record, Sink, SinkReader, collect

__all__ = ["CeleryAdapter", "celery_memory", "celery_rabbitmq", "celery_redis"]

TRANSPORTS = ("redis", "amqp", "memory")

#: Event kinds a real worker's history contains (see ``_celery_recorder``). Broker-side
#: restores (``requeued``) happen inside the broker: they show only as a redelivery.
_OBSERVES_REAL = frozenset({
    "worker-online", "published", "delivered", "started", "acked", "rejected",
    "ack-failed", "state", "state-discarded", "succeeded", "failed", "retried", "ignored",
    "declined", "revoked", "unregistered", "time-limit", "child-lost", "child-killed",
    "cancelled", "worker-crashed", "worker-offline", "shutdown", "connection-lost",
    "connection-restored", "revoke",
})
_OBSERVES_MEMORY = _OBSERVES_REAL - {
    "time-limit", "child-lost", "child-killed", "cancelled", "worker-crashed",
    "worker-offline", "shutdown", "connection-lost", "connection-restored", "revoke",
}
_REAL_FAULTS = frozenset({"kill_worker", "kill_child", "cut_connection", "revoke",
                          "terminate", "warm_shutdown", "cold_shutdown"})

_SHARED_BROKER = ("the broker at {where} is shared with every test running on this machine; "
                  "restarting it would break them")

#: Settings the adapter adds unless the workload sets them: shorter latencies only.
_DEFAULT_CONF: dict[str, Any] = {
    # How long the parent waits for a dead child's result before WorkerLostError;
    # Celery's 10 s makes every G3 run slow and changes no outcome.
    "worker_lost_wait": 1.0,
    "broker_connection_retry_on_startup": True,
}

#: Event kinds that end one attempt (a ``started``) on a worker.
_ENDS = frozenset({"succeeded", "failed", "retried", "ignored", "declined", "child-lost",
                   "revoked", "cancelled"})

#: Seconds until a killed worker is replaced, or a shut-down one: the reference
#: adapter's RECOVERY, so both deployments recover alike.
RECOVERY = 1.0


def _capabilities(adapter: CeleryAdapter) -> Capabilities:
    if adapter.transport == "memory":
        reason = ("celery-memory runs its worker inside the test process (memory:// "
                  "cannot cross processes)")
        no_fault = f"{reason}: it has no process to kill or signal"
        return Capabilities(
            adapter=adapter.name, transport="memory", time_limits=False,
            observes=_OBSERVES_MEMORY, visibility_timeout=None,
            probes=frozenset(PROBES) - {"die"},
            deviations=(
                Deviation("G3", f"{reason}: no pool child can die (no die probe, no "
                                "kill_child)"),
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
        deviations.append(Deviation(
            "G6", f"visibility_timeout is {adapter.visibility_timeout} s (not kombu's 3600 s) "
                  "so that G4 redelivery happens within a run; a countdown, ETA or acks_late "
                  "run longer than that is delivered twice, as documented"))
    return Capabilities(
        adapter=adapter.name, transport=adapter.transport, faults=_REAL_FAULTS,
        time_limits=True, observes=_OBSERVES_REAL,
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
        return _Run(self, workload).execute()

    def _validate(self, workload: Workload) -> None:
        caps = self.capabilities
        for fault in workload.faults:
            if fault.kind not in caps.faults:
                raise ValueError(
                    caps.missing(faults=(fault.kind,)) + "; check capabilities.faults "
                    "before running (simq_conformance.workloads does)")
        for call in workload.calls:
            if call.probe not in caps.probes:
                raise ValueError(
                    caps.missing(probes=(call.probe,)) + "; check capabilities.probes "
                    "before running")


class _Run:
    """One run's live state: directory, queue, workers, pending faults."""

    def __init__(self, adapter: CeleryAdapter, workload: Workload) -> None:
        self.adapter = adapter
        self.workload = workload
        self.run_id = uuid.uuid4().hex[:10]
        self.directory = Path(tempfile.mkdtemp(prefix=f"simq-{adapter.name}-"))
        self.queue = f"simq.{self.run_id}"
        self.sink = Sink(self.directory)
        self.reader = SinkReader(self.directory)
        self.notes: list[str] = []
        self.task_ids: dict[str, str] = {}
        self.complete = False
        self.conf = self._conf()
        self.workers = (InProcessWorkers(self) if adapter.transport == "memory"
                        else ProcessWorkers(self))

    # -- settings ----------------------------------------------------------------------

    def _conf(self) -> dict[str, Any]:
        adapter, settings = self.adapter, self.workload.settings
        conf: dict[str, Any] = {"broker_url": adapter.broker_url,
                                "result_backend": adapter.backend_url}
        conf.update(_DEFAULT_CONF)
        for name in ("broker_url", "result_backend", "task_default_queue"):
            if name in settings.conf:
                self.notes.append(f"the workload's {name} is replaced by the adapter's")
        conf.update(settings.conf)
        remote = any(f.kind in ("revoke", "terminate") for f in self.workload.faults)
        conf.update({
            "broker_url": adapter.broker_url,
            "result_backend": adapter.backend_url,
            "task_default_queue": self.queue,
            "worker_prefetch_multiplier": settings.prefetch_multiplier,
            "worker_concurrency": settings.concurrency,
            # Remote control only for revokes: otherwise it adds pidbox queues and
            # connections the run does not need.
            "worker_enable_remote_control": remote,
            SINK_SETTING: str(self.directory),
        })
        options = dict(conf.get("broker_transport_options") or {})
        if adapter.transport == "redis":
            if adapter.visibility_timeout is not None:
                options.setdefault("visibility_timeout", adapter.visibility_timeout)
            # Sweep for expired unacked messages every 0.5 s (kombu: every 100 s), so
            # redelivery follows the visibility timeout closely.
            options.setdefault("unacked_restore_interval", 0.5)
            options.setdefault("unacked_restore_throttle", 1)
        elif adapter.transport == "memory":
            options.setdefault("polling_interval", 0.05)  # kombu polls memory:// every 1 s
        conf["broker_transport_options"] = options
        return conf

    def worker_conf(self, slot: int) -> dict[str, Any]:
        """The settings of the worker in ``slot``: its broker connections carry a label."""
        conf = dict(self.conf)
        if self.adapter.transport == "redis":
            options = dict(conf["broker_transport_options"])
            options["client_name"] = self.connection_name(slot)
            conf["broker_transport_options"] = options
        return conf

    def connection_name(self, slot: int) -> str:
        return f"simq-{self.run_id}-slot{slot}"

    # -- the run -----------------------------------------------------------------------

    def execute(self) -> RunResult:
        recorder = CeleryRecorder(self.sink, publish_only=self.adapter.transport != "memory")
        history = None
        try:
            recorder.install()
            probes = register_probes(self.workers.client())
            for slot in range(self.workload.settings.workers):
                self.workers.start_slot(slot)
            self.workers.wait_online(self.adapter.startup_timeout)
            self._publish(probes)
            self._drive()
            history = collect(self.directory)
        finally:
            with contextlib.suppress(Exception):
                self.workers.stop_all()
            recorder.uninstall()
            self._cleanup()
        return RunResult(history=history, complete=self.complete,
                         capabilities=self.adapter.capabilities, workload=self.workload,
                         notes=tuple(self.notes), task_ids=dict(self.task_ids))

    def _publish(self, probes: dict[str, Any]) -> None:
        for i, call in enumerate(self.workload.calls):
            options = dict(call.options)
            task_id = str(options.pop("task_id", None) or uuid.uuid4())
            probes[call.probe].apply_async(tuple(call.args), task_id=task_id, **options)
            self.task_ids.setdefault(call.key or f"call-{i + 1}", task_id)

    def _drive(self) -> None:
        """Inject faults at their times; stop once every call is settled (or at timeout)."""
        start = time.monotonic()
        deadline = start + self.adapter.timeout
        pending = sorted(self.workload.faults, key=lambda f: f.at)
        quiet_since: float | None = None
        while True:
            self.reader.poll()
            now = time.monotonic()
            pending = [f for f in pending
                       if not (f.at <= now - start and self._inject(f, now - start))]
            self.workers.tick()
            busy = self._busy()
            if not pending and not busy and self.workers.settled():
                # Settled twice, 0.3 s apart: a restored duplicate may still be in flight.
                if quiet_since is None:
                    quiet_since = now
                elif now - quiet_since >= 0.3:
                    self.complete = True
                    return
            else:
                quiet_since = None
            if now > deadline:
                self.notes.append(
                    f"timed out after {self.adapter.timeout} s; unsettled calls: "
                    f"{', '.join(sorted(busy)) or 'none'}; faults not injected: "
                    f"{', '.join(f'{f.kind}@{f.at}' for f in pending) or 'none'}; "
                    f"files kept in {self.directory}")
                self.notes.extend(self.workers.log_tails())
                return
            time.sleep(0.05)

    def _busy(self) -> set[str]:
        """Keys of calls with a message not yet acked or dropped, or an attempt running."""
        keys_by_task = {tid: key for key, tid in self.task_ids.items()}
        unsettled: dict[str | None, str | None] = {}
        running: dict[tuple[str | None, str | None], str | None] = {}
        for record in sorted(self.reader.records, key=lambda r: r.order):
            e = record.event
            ref = e.message_id or e.task_id
            if e.kind in ("published", "delivered"):
                unsettled[ref] = e.task_id
            elif e.kind == "acked" or (e.kind == "rejected" and not e.details.get("requeue")):
                unsettled.pop(ref, None)
            elif e.kind == "started":
                running[(ref, e.worker)] = e.task_id
            elif e.kind in _ENDS:
                running.pop((ref, e.worker), None)
            elif e.kind == "worker-crashed":
                running = {k: v for k, v in running.items() if k[1] != e.worker}
        tids = set(unsettled.values()) | set(running.values())
        return {keys_by_task[t] for t in tids if t in keys_by_task}

    # -- faults ------------------------------------------------------------------------

    def _inject(self, fault: Fault, elapsed: float) -> bool:
        """Inject ``fault`` now; False if it must wait (its target is not running yet)."""
        workers = self.workers
        kind = fault.kind
        if kind == "kill_worker":
            workers.kill(fault.target, self.adapter.restart_killed_after)
        elif kind == "cut_connection":
            workers.cut(fault.target)
        elif kind in ("warm_shutdown", "cold_shutdown"):
            workers.shutdown(fault.target, warm=kind == "warm_shutdown",
                             replace_after=RECOVERY)
        elif kind in ("revoke", "terminate"):
            task_id = self.task_ids.get(str(fault.target))
            if task_id is None:
                self.notes.append(f"{kind}: no call has key {fault.target!r}; fault skipped")
            else:
                workers.revoke(task_id, terminate=kind == "terminate")
        elif kind == "kill_child":
            return self._kill_child(str(fault.target), late=elapsed - fault.at)
        else:  # _validate refused it
            raise AssertionError(kind)
        return True

    def _kill_child(self, key: str, late: float) -> bool:
        task_id = self.task_ids.get(key)
        if task_id is None:
            self.notes.append(f"kill_child: no call has key {key!r}; fault skipped")
            return True
        attempt = self._running_attempt(task_id)
        if attempt is None:
            # Real latency: a call published at 0 may start a little after the fault's
            # time; wait up to the capability's slack, then do what the reference does
            # when nothing runs it (nothing).
            if key in self._busy() and late < self.adapter.capabilities.slack:
                return False
            self.notes.append(f"kill_child {key!r}: no child was running it; fault skipped")
            return True
        e = attempt.event
        if not self.workers.is_child(attempt.pid):
            self.notes.append(f"kill_child {key!r}: pid {attempt.pid} is not a live pool "
                              "child of this run; fault skipped")
            return True
        self.sink.record("child-killed", task_id=task_id, message_id=e.message_id,
                         worker=e.worker, exitcode=-signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(attempt.pid, signal.SIGKILL)
        return True

    def _running_attempt(self, task_id: str) -> Record | None:
        """The newest ``started`` of ``task_id`` with no end yet."""
        open_starts: dict[tuple[str | None, str | None], Record] = {}
        for record in sorted(self.reader.records, key=lambda r: r.order):
            e = record.event
            if e.task_id != task_id:
                continue
            ref = (e.message_id, e.worker)
            if e.kind == "started":
                open_starts[ref] = record
            elif e.kind in _ENDS:
                open_starts.pop(ref, None)
            elif e.kind == "worker-crashed":
                open_starts = {k: v for k, v in open_starts.items() if k[1] != e.worker}
        return max(open_starts.values(), key=lambda r: r.order, default=None)

    # -- cleanup -----------------------------------------------------------------------

    def _cleanup(self) -> None:
        adapter = self.adapter
        task_ids = list(self.task_ids.values())
        try:
            if adapter.transport == "redis":
                _brokers.redis_purge(adapter.broker_url, self.queue, task_ids)
            elif adapter.transport == "amqp":
                _brokers.amqp_delete_queue(adapter.broker_url, self.queue)
                if adapter.backend_url.startswith("redis"):
                    _brokers.redis_purge(adapter.backend_url, self.queue, task_ids)
        except Exception as exc:  # cleanup must not hide the run's own outcome
            self.notes.append(f"cleanup failed: {exc!r}")
        if self.complete:
            shutil.rmtree(self.directory, ignore_errors=True)


def worker_command(run: _Run, name: str, log: Path) -> list[str]:
    """The ``celery worker`` command line of worker ``name``."""
    settings = run.workload.settings
    return [
        sys.executable, "-m", "celery", "-A", "simq_conformance.adapters._worker_boot",
        "worker", "-P", "prefork", "-c", str(settings.concurrency),
        "--prefetch-multiplier", str(settings.prefetch_multiplier),
        "-n", f"{name}@%h", "-Q", run.queue,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-l", "warning", "--logfile", str(log),
    ]


def worker_env(run: _Run, name: str, slot: int) -> dict[str, str]:
    """The environment of worker ``name``: the run's settings as JSON."""
    config = {"conf": run.worker_conf(slot), "sink": str(run.directory), "worker": name}
    try:
        payload = json.dumps(config)
    except TypeError as exc:
        raise ValueError(
            f"the workload's settings must be JSON values to reach a worker process: {exc}"
        ) from exc
    return {**os.environ, "SIMQ_CONFORMANCE_WORKER": payload}


# -- factories ---------------------------------------------------------------------------


def celery_redis(url: str | None = None, *, visibility_timeout: float = 5.0,
                 **options: Any) -> CeleryAdapter:
    """Celery on the machine's Redis (broker and results), a database per xdist worker."""
    url = url or f"{_brokers.REDIS_URL}/{_brokers.redis_db()}"
    return CeleryAdapter("celery-redis", url, url, "redis",
                         visibility_timeout=visibility_timeout, **options)


def celery_rabbitmq(url: str | None = None, *, backend_url: str | None = None,
                    **options: Any) -> CeleryAdapter:
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
