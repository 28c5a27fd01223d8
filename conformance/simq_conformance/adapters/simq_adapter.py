"""The reference adapter: runs a workload with Celery itself on simq's simulation.

The probes are registered on a plain ``celery.Celery`` app, as on a real deployment;
Celery's own code publishes, runs the tracer, retries and decides acks, while simq
simulates the broker, the workers' consumers and pools, the result store and the clock,
in virtual time.
``SimqAdapter()`` models RabbitMQ (``transport="amqp"``); ``SimqAdapter("redis")`` models
Redis (visibility timeout, restore by timeout), for the differential check against
``celery-redis``; ``SimqAdapter("polling")`` models kombu's polling transports
(``filesystem://``, SQLAlchemy: workers poll, Celery's synchronous loop), for the
differential check against ``celery`` on such a URL. It supports every fault, enforces time limits and records every event
kind, so every guarantee applies to it; a run takes milliseconds.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import celery

import simq
from simq.exceptions import UnknownTarget
from simq_conformance.adapter import (
    FAULTS,
    BaseAdapter,
    Capabilities,
    Deviation,
    Fault,
    ProbeCall,
    RunResult,
    Workload,
)

__all__ = ["OBSERVES", "SimqAdapter"]

#: Every event kind simq records (simq.history's vocabulary).
OBSERVES = frozenset(
    {
        "published",
        "delivered",
        "acked",
        "rejected",
        "requeued",
        "ack-failed",
        "lost",
        "started",
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
        "state",
        "state-discarded",
        "forgotten",
        "worker-online",
        "worker-crashed",
        "worker-offline",
        "shutdown",
        "connection-lost",
        "connection-restored",
        "broker-restarted",
        "revoke",
    }
)

#: Seconds until a crashed worker, a lost connection, a restarted broker or a shut-down
#: worker is back, so the work it held can finish within the run.
RECOVERY = 1.0
#: Virtual seconds a run may take (past a redis visibility timeout) and steps it may
#: make before it counts as incomplete (a workload that loops forever).
HORIZON = 7200.0
MAX_STEPS = 200_000


#: Why a killed worker loses messages on the polling transport (as on the real ones).
_KILL_LOSES = (
    "simq's polling transport models kombu's virtual transports (filesystem://, "
    "SQLAlchemy): a delivered message waits for its ack only in the consuming process "
    "(kombu's virtual QoS), which puts it back when the channel closes; a killed worker "
    "never closes it, so its unacked messages are lost (recorded lost [worker-crashed])"
)


#: Why deduplication never applies there: restored messages come back unflagged.
_NOT_REDELIVERED = (
    "kombu's virtual transports put a restored message back as a new one (Channel._restore "
    "puts it again, and the redelivered flag it sets never reaches delivery_info), so "
    "Celery's worker_deduplicate_successful_tasks, which looks only at messages flagged "
    "redelivered (celery/app/trace.py), never applies: no run can exercise G14"
)


def _capabilities(transport: str, visibility_timeout: float | None) -> Capabilities:
    name = "simq" if transport == "amqp" else f"simq-{transport}"
    polling = transport == "polling"
    return Capabilities(
        adapter=name,
        # The checkers read kombu's virtual transports as "memory" on the synchronous loop.
        transport="memory" if polling else transport,
        faults=frozenset(FAULTS),
        time_limits=True,
        observes=OBSERVES,
        visibility_timeout=visibility_timeout,
        deviations=(
            Deviation("G4", _KILL_LOSES),
            Deviation("L2", _KILL_LOSES),
            Deviation("G14", _NOT_REDELIVERED),
        )
        if polling
        else (),
        slack=0.0,
        simulated=True,
        sync_loop=polling,
    )


class SimqAdapter(BaseAdapter):
    """Runs workloads in :class:`simq.Simulation`: the reference the suite certifies against.

    Args:
        transport: ``"amqp"`` (default), ``"redis"`` / ``"sqs"`` or ``"polling"``: how
            the simulated broker returns unacked messages and whether workers poll
            (``Simulation(transport=...)``).
        visibility_timeout: redis/sqs: seconds before an unacked message is restored,
            unless the workload's ``broker_transport_options`` say otherwise (default:
            kombu's). The differential check matches the real adapter's.
        polling_interval: polling: seconds a worker waits after an empty poll, unless
            the workload's ``broker_transport_options`` say otherwise (default: kombu's
            1.0). The differential check matches the real adapter's.
    """

    #: A planted bug (``simq_conformance.mutants``), planted in this process for each run.
    mutant: str | None = None

    def __init__(
        self,
        transport: str = "amqp",
        visibility_timeout: float | None = None,
        polling_interval: float | None = None,
    ) -> None:
        self.transport = transport
        self.visibility_timeout = visibility_timeout
        self.polling_interval = polling_interval
        self.capabilities = _capabilities(transport, visibility_timeout)

    def __repr__(self) -> str:
        vt, pi = self.visibility_timeout, self.polling_interval
        return (
            f"SimqAdapter(transport={self.transport!r}"
            + (f", visibility_timeout={vt!r}" if vt is not None else "")
            + (f", polling_interval={pi!r}" if pi is not None else "")
            + ")"
        )

    def run(self, workload: Workload) -> RunResult:
        """Publish the calls, inject the faults at their times, run until idle."""
        if self.mutant is None:
            return self._run(workload)
        from simq_conformance.mutants import planted

        with planted(self.mutant, "simq"):
            return self._run(workload)

    def _run(self, workload: Workload) -> RunResult:
        from simq_conformance.probes import register_probes

        settings = workload.settings
        conf = dict(settings.conf)
        defaults = {
            "visibility_timeout": self.visibility_timeout,
            "polling_interval": self.polling_interval,
        }
        if any(v is not None for v in defaults.values()):
            options = dict(conf.get("broker_transport_options") or {})
            for key, value in defaults.items():
                if value is not None:
                    options.setdefault(key, value)
            conf["broker_transport_options"] = options
        # Celery itself on the simulation: the same kind of app a real deployment runs.
        app = celery.Celery("probes")
        app.conf.update(conf)
        tasks = register_probes(app)
        with simq.Simulation(
            app,
            seed=workload.seed,
            workers=settings.workers,
            concurrency=settings.concurrency,
            prefetch_multiplier=settings.prefetch_multiplier,
            transport=self.transport,
        ) as sim:
            t0 = sim.time()
            ids = {call.key: _publish(tasks, call) for call in workload.calls}
            _Injector(sim, ids, settings.concurrency, settings.prefetch_multiplier).run(
                t0, workload.faults
            )
            complete = _drain(sim, t0 + HORIZON)
        return RunResult(
            history=sim.history,
            complete=complete,
            capabilities=self.capabilities,
            workload=workload,
            task_ids=ids,
        )


def _publish(tasks: dict[str, Any], call: ProbeCall) -> str:
    task = tasks.get(call.probe) or tasks[f"probes.{call.probe}"]
    return str(task.apply_async(args=call.args, **dict(call.options)).id)


def _drain(sim: simq.Simulation, deadline: float) -> bool:
    """Run until nothing is left (True) or past ``deadline`` / the step budget (False)."""
    loop = sim.loop
    for _ in range(MAX_STEPS):
        nxt = loop.next_time()
        if nxt is None:
            return True
        if nxt > deadline:
            return False
        loop.step()
    return loop.next_time() is None


class _Injector:
    """Applies a fault plan: runs the simulation to each fault's time, then injects it."""

    def __init__(
        self, sim: simq.Simulation, ids: dict[str, str], concurrency: int, multiplier: int
    ) -> None:
        self.sim = sim
        self.ids = ids
        self.concurrency = concurrency
        self.multiplier = multiplier
        self.names = list(sim.workers)  # worker index -> the name serving it now
        self._seq = itertools.count()
        self._plan: list[tuple[float, int, Callable[[], None]]] = []

    def later(self, at: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._plan, (at, next(self._seq), fn))

    def run(self, t0: float, faults: tuple[Fault, ...]) -> None:
        for fault in faults:
            self.later(t0 + fault.at, lambda f=fault: self.inject(f))  # type: ignore[misc]
        while self._plan:
            at, _, fn = heapq.heappop(self._plan)
            if at > self.sim.time():
                self.sim.run(until=dt.datetime.fromtimestamp(at, dt.timezone.utc))
            fn()

    def worker(self, target: int | str | None) -> str:
        index = int(target or 0) % len(self.names)
        return self.names[index]

    def inject(self, fault: Fault) -> None:
        sim, kind = self.sim, fault.kind
        if kind == "kill_worker":
            sim.crash_worker(self.worker(fault.target), restart_after=RECOVERY)
        elif kind == "cut_connection":
            sim.lose_connection(self.worker(fault.target), reconnect_after=RECOVERY)
        elif kind == "restart_broker":
            sim.restart_broker(down_for=RECOVERY)
        elif kind in ("revoke", "terminate"):
            task_id = self.ids.get(str(fault.target))
            if task_id is not None:
                sim.revoke(task_id, terminate=kind == "terminate")
        elif kind == "kill_child":
            task_id = self.ids.get(str(fault.target))
            if task_id is not None:
                try:
                    sim.kill_child(task_id)
                except UnknownTarget:
                    pass  # no child runs it now: nothing to kill, as on a real worker
        elif kind in ("warm_shutdown", "cold_shutdown"):
            self.shutdown(fault.target, warm=kind == "warm_shutdown")
        else:
            raise ValueError(f"SimqAdapter cannot inject fault {kind!r}")

    def shutdown(self, target: int | str | None, *, warm: bool) -> None:
        """Stop the worker; a fresh one takes its place (a new name) a little later."""
        index = int(target or 0) % len(self.names)
        name = self.names[index]
        if not self.sim.worker(name).alive:
            return
        self.sim.shutdown_worker(name, warm=warm)

        def replace() -> None:
            new = self.sim.add_worker(
                concurrency=self.concurrency, prefetch_multiplier=self.multiplier
            )
            self.names[index] = new.name

        self.later(self.sim.time() + RECOVERY, replace)
