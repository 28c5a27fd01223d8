"""The Simulation: one deterministic run of an app's tasks on simulated infrastructure.

Example:
    >>> import celery, simq
    >>> app = celery.Celery("shop")
    >>> @app.task
    ... def add(x, y):
    ...     return x + y
    >>> with simq.Simulation(app, seed=7) as sim:
    ...     result = add.delay(2, 3)
    ...     result.get()
    5
"""

from __future__ import annotations

import datetime as dt
import os
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import celery
import celery.worker.control
from celery import states
from celery.exceptions import TimeoutError
from celery.utils.time import maybe_iso8601, maybe_make_aware
from kombu.transport.virtual import BrokerState

from simq.engine.fibers import current_fiber
from simq.engine.loop import Loop, relaxed_gc
from simq.engine.rng import Streams
from simq.engine.vtime import VirtualTime
from simq.exceptions import SimqError, SimulationIdle, UnknownTarget
from simq.history import Event, History
from simq.message import Message
from simq.seams.backend import Backend
from simq.seams.install import Installation
from simq.world.broker import Broker
from simq.world.faults import Faults
from simq.world.worker import Worker

__all__ = ["DEFAULT_START", "Simulation"]

#: Where virtual time starts unless ``start=`` says otherwise (never the wall clock).
DEFAULT_START = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def _epoch(value: dt.datetime, what: str) -> float:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware (e.g. tzinfo=datetime.timezone.utc)")
    return value.timestamp()


class Simulation:
    """A simulated broker, workers and result backend for ``app``, on a virtual clock.

    While active (``with Simulation(app) as sim:``), Celery's own code runs for the app:
    ``delay``, ``apply_async``, ``send_task``, ``retry`` and canvas publish through
    Celery's producer into the simulated broker, simulated workers run Celery's
    ``Request`` and tracer, and results land in a simulated key-value backend. User code
    sees virtual time. The same seed and code give the same history, byte for byte.
    When the block ends the app is exactly as before.

    Args:
        app: The ``celery.Celery`` app whose tasks run (``simq.App`` makes one).
        seed: Seeds task ids, retry jitter and every other random choice.
        workers: How many workers to start (``worker-1``, ``worker-2``, ...); 0 is allowed.
        concurrency: Child slots per default worker.
        prefetch_multiplier: Defaults to ``app.conf.worker_prefetch_multiplier`` (4).
        start: Timezone-aware datetime where virtual time starts.
        transport: ``"amqp"`` (RabbitMQ, default), ``"redis"`` or ``"sqs"``: how unacked
            messages come back (channel close, or visibility timeout) and how priorities
            order a queue. ``app.conf.broker_transport_options["visibility_timeout"]``
            overrides kombu's defaults (3600 s redis, 1800 s sqs).
        durations: Per task name, how long its body takes in virtual seconds: a number,
            or a callable drawing from a seeded ``random.Random``.
    """

    def __init__(
        self,
        app: Any,
        *,
        seed: int = 0,
        workers: int = 1,
        concurrency: int = 1,
        prefetch_multiplier: int | None = None,
        start: dt.datetime | None = None,
        transport: str = "amqp",
        durations: Mapping[str, float | Callable[[random.Random], float]] | None = None,
    ) -> None:
        if not isinstance(app, celery.Celery):
            raise TypeError(
                f"Simulation() takes a celery.Celery app, got {type(app).__name__} {app!r}"
            )
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.app = app
        self.seed = seed
        self.started_at = _epoch(start or DEFAULT_START, "start")
        self.loop = Loop(self.started_at)
        self.streams = Streams(seed)
        self.history = History()
        self._append = self.history.append
        options = app.conf.broker_transport_options or {}
        self.transport = transport
        self.broker = Broker(
            self.record,
            self.loop,
            transport=transport,
            visibility_timeout=options.get("visibility_timeout"),
            max_priority=app.conf.task_queue_max_priority,
        )
        self.durations = dict(durations or {})
        for name, value in self.durations.items():
            if not (callable(value) or isinstance(value, int | float)) or (
                isinstance(value, int | float) and value < 0
            ):
                raise ValueError(
                    f"durations[{name!r}] must be seconds >= 0 or a callable taking a "
                    f"random.Random, got {value!r}"
                )
        self.faults = Faults(self)
        self.exchange_state = BrokerState()
        self.control_exchange = f"{app.conf.control_exchange}.pidbox"
        self.backend = Backend(app=app, simulation=self)
        self.revoked_owner: Worker | None = None  # whose revokes celery.worker.state holds
        self.acting_worker: str | None = None  # the worker whose parent process acts now
        self._pids = 100
        self._installation: Installation | None = None
        self.workers: dict[str, Worker] = {}
        self.vtime = VirtualTime(self.time, self._sleep, monotonic_origin=self.started_at - 1e5)
        self._message_seq = 0
        self._active = False
        self._closed = False
        self._default_concurrency = concurrency
        self._default_multiplier = prefetch_multiplier
        if workers:
            # A worker imports the app's task modules as it boots (Loader.init_worker):
            # ``include=``, ``imports`` and ``autodiscover_tasks()`` packages.
            app.loader.import_default_modules()
        for _ in range(workers):
            self.add_worker(concurrency=concurrency, prefetch_multiplier=prefetch_multiplier)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Simulation:
        """Activate: route the app's calls here and patch time for user code."""
        if self._closed:
            raise SimqError("this simulation has ended; create a new Simulation to run again")
        if self._active:
            return self
        other = _ACTIVE[0]
        if other is not None:
            raise SimqError(
                f"another simulation is active in this process ({other!r}); "
                "close it before starting another"
            )
        installation = Installation(self)
        installation.install()
        self._installation = installation
        _ACTIVE[0] = self
        for worker in self.workers.values():
            self.declare_queues(worker.queues)
        self.vtime.start()
        self._gc = relaxed_gc()
        self._gc.__enter__()
        self._real_exit: Callable[[int], Any] = os._exit
        os._exit = self._os_exit  # type: ignore[assignment]
        self.loop.on_advance = self.vtime.sync
        self._active = True
        return self

    def close(self) -> None:
        """Deactivate and restore time; idempotent."""
        if self._active:
            self._active = False
            self.loop.on_advance = None
            os._exit = self._real_exit  # type: ignore[assignment]
            try:
                self.vtime.stop()
                self._gc.__exit__(None, None, None)
            finally:
                if _ACTIVE[0] is self:
                    _ACTIVE[0] = None
                if self._installation is not None:
                    self._installation.restore()
                    self._installation = None
        self._closed = True

    def __enter__(self) -> Simulation:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def active(self) -> bool:
        return self._active

    # -- topology ----------------------------------------------------------------------

    def add_worker(
        self,
        name: str | None = None,
        concurrency: int = 1,
        queues: Iterable[str] | None = None,
        prefetch_multiplier: int | None = None,
    ) -> Worker:
        """Start a worker consuming ``queues`` (default: the app's default queue(s))."""
        if name is None:
            n = len(self.workers) + 1
            while f"worker-{n}" in self.workers:
                n += 1
            name = f"worker-{n}"
        if name in self.workers:
            raise SimqError(f"a worker named {name!r} already exists; pick another name")
        if not self.workers:
            self.app.loader.import_default_modules()
        if prefetch_multiplier is None:
            prefetch_multiplier = (
                self._default_multiplier
                if self._default_multiplier is not None
                else self.app.conf.worker_prefetch_multiplier
            )
        queue_names = list(queues) if queues is not None else self._default_queues()
        if isinstance(queues, str):
            raise TypeError(f"queues must be a list of names, got the string {queues!r}")
        worker = Worker(
            self,
            name,
            concurrency=concurrency,
            queues=queue_names,
            prefetch_multiplier=int(prefetch_multiplier),
        )
        self.workers[name] = worker
        worker.start()
        return worker

    def _default_queues(self) -> list[str]:
        # A worker started without -Q consumes the default queue and task_queues.
        names = [self.app.conf.task_default_queue]
        for q in self.app.conf.task_queues or ():
            qname = q if isinstance(q, str) else getattr(q, "name", None)
            if qname and qname not in names:
                names.append(qname)
        return names

    def declare_queues(self, names: Iterable[str]) -> None:
        """Declare ``names`` with their exchanges and bindings, as a starting worker does.

        A real worker declares the queues it consumes (``app.amqp.queues``, created on
        demand when ``task_create_missing_queues``), so messages routed by exchange and
        routing key reach them. Before :meth:`start` this waits for the start.
        """
        installation = self._installation
        if installation is None:
            return
        channel = installation.channel
        queues = self.app.amqp.queues
        for name in names:
            # .get, not [], so that a worker's queue not in task_queues is not added to
            # the app's queues (the app stays as it was after the simulation).
            queue = queues.get(name) or queues.new_missing(name)
            queue.bind(channel).declare()

    def worker(self, name: str) -> Worker:
        """The worker called ``name``; UnknownTarget names the workers that exist."""
        try:
            return self.workers[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self.workers) or "none"
            raise UnknownTarget(f"no worker named {name!r}; workers: {known}") from None

    # -- time --------------------------------------------------------------------------

    def time(self) -> float:
        """Virtual time in seconds since the Unix epoch."""
        return self.loop.now

    @property
    def now(self) -> dt.datetime:
        """Virtual time as a timezone-aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.loop.now, dt.timezone.utc)

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the simulation started."""
        return self.loop.now - self.started_at

    def run(self, until: dt.datetime | None = None) -> Simulation:
        """Run until nothing is left to do, or until the virtual datetime ``until``."""
        self._require_active("run()")
        loop = self.loop
        deadline = None if until is None else _epoch(until, "until")
        if deadline is None:
            while loop.step():
                pass
            return self
        while True:
            nxt = loop.next_time()
            if nxt is None or nxt > deadline:
                break
            loop.step()
        if deadline > loop.now:
            loop.advance_to(deadline)
        return self

    def advance(self, seconds: float) -> Simulation:
        """Run for ``seconds`` of virtual time."""
        if seconds < 0:
            raise ValueError(f"advance() needs seconds >= 0, got {seconds}")
        return self.run(until=dt.datetime.fromtimestamp(self.loop.now + seconds, dt.timezone.utc))

    def _sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        fiber = current_fiber()
        if fiber is None:
            # time.sleep() in test code moves the whole simulation forward.
            self.advance(seconds)
            return
        fiber.owner.sleep(seconds)

    def _os_exit(self, code: int) -> None:
        fiber = current_fiber()
        if fiber is None:
            self._real_exit(code)
        else:
            # Inside a task, os._exit ends the simulated child, never the test process.
            fiber.exit(code)

    def duration_for(self, name: str) -> float:
        """How long the body of task ``name`` takes (``durations=``), 0 by default."""
        value = self.durations.get(name)
        if value is None:
            return 0.0
        if callable(value):
            drawn = float(value(self.streams.stream(f"duration:{name}")))
            if drawn < 0:
                raise ValueError(f"durations[{name!r}] drew {drawn}; durations must be >= 0")
            return drawn
        return float(value)

    # -- judging -----------------------------------------------------------------------

    def check(self, **overrides: Any) -> list[Any]:
        """Run every checker of ``simq.checkers`` on this history; [] when all hold.

        Each violation names its guarantee (G1-G18 of CELERY_SEMANTICS.md §3.2) and
        carries the events that prove it. Keyword arguments override the
        :class:`~simq.checkers.CheckConfig` read from this simulation.

        Example:
            >>> assert sim.check() == []  # doctest: +SKIP
        """
        from simq.checkers import config_from, run_all

        return run_all(self.history, config_from(self, **overrides))

    # -- recording ---------------------------------------------------------------------

    def record(
        self,
        kind: str,
        task_id: str | None = None,
        message_id: str | None = None,
        worker: str | None = None,
        **details: Any,
    ) -> None:
        self._append(Event(kind, self.loop.now, task_id, message_id, worker, details))

    # -- the world, as the API layer sees it -------------------------------------------

    def random(self, name: str) -> random.Random:
        """The seeded random stream ``name`` (e.g. ``"retry_jitter"``)."""
        return self.streams.stream(name)

    def new_pid(self) -> int:
        """A process id for a new simulated child (deterministic)."""
        self._pids += 1
        return self._pids

    def new_message_id(self) -> str:
        self._message_seq += 1
        return f"m{self._message_seq}"

    def acting(self, worker: Worker | None) -> None:
        """Name the worker whose parent process runs Celery code now (for the history)."""
        self.acting_worker = worker.name if worker is not None else None

    def receive(
        self, message: dict[str, Any], exchange: str, routing_key: str, queues: list[str]
    ) -> None:
        """A message Celery's producer published: into each queue it is routed to."""
        self._require_active("publishing")
        headers = message.get("headers") or {}
        if "task" not in headers or "id" not in headers:
            return  # not a task message (events): nothing consumes it here
        properties = message.get("properties") or {}
        fields = {
            "task_id": headers["id"],
            "task": headers["task"],
            "headers": headers,
            "body": message["body"],
            "content_type": message.get("content-type") or "application/json",
            "content_encoding": message.get("content-encoding") or "utf-8",
            "properties": properties,
            "exchange": exchange,
            "routing_key": routing_key,
            "priority": properties.get("priority"),
            "eta": self._epoch_header(headers.get("eta")),
            "expires": self._epoch_header(headers.get("expires")),
        }
        if not queues:
            self.broker.unroutable(
                Message(message_id=self.new_message_id(), queue="", **fields),
                exchange,
                routing_key,
            )
            return
        for queue in queues:
            self.broker.publish(Message(message_id=self.new_message_id(), queue=queue, **fields))

    def _epoch_header(self, value: Any) -> float | None:
        if value is None:
            return None
        when = maybe_make_aware(maybe_iso8601(value), self.app.timezone)
        return float(when.timestamp())

    def control(self, method: Any, arguments: dict[str, Any], destination: Any) -> None:
        """A broadcast on the control exchange (``app.control``) reached the workers."""
        self.record("control", method=method, destination=destination)
        if method == "revoke":
            task_id = arguments.get("task_id")
            ids = [task_id] if isinstance(task_id, str) else list(task_id or [])
            self._revoke(ids, bool(arguments.get("terminate")), arguments.get("signal"))

    def revoke(
        self,
        task_id: str | Iterable[str],
        terminate: bool = False,
        signal: str | None = None,
        at: float | dt.datetime | None = None,
    ) -> None:
        """Broadcast a revoke to every online worker (lost if none is up, as in Celery).

        A worker skips a revoked task when it receives or is about to start it; with
        ``terminate=True`` a running one is killed and stored REVOKED('terminated') (G10).
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        self.faults._when(at, self._revoke, ids, terminate, signal)

    def _revoke(self, ids: list[str], terminate: bool, signal: str | None) -> None:
        online = [w for w in self.workers.values() if w.alive and w.online]
        for tid in ids:
            self.record(
                "revoke",
                task_id=tid,
                terminate=terminate,
                signal=signal,
                workers=[w.name for w in online],
            )
            # 5.6.2+ (worker/control.py _revoke): each worker not running the task marks
            # it REVOKED if its state is still revocable; the one running it leaves it
            # alone. Older Celery (5.5) only adds the id to the worker's revoked set.
            idle = [w for w in online if not any(r.id == tid for r in w.active())]
            for w in online:
                w.revoke(tid)
                if terminate:
                    self.faults.terminate(w, tid, signal)
            if _REVOKE_MARKS_REVOKED and idle and self.backend.state_of(tid) in _REVOCABLE:
                # The command's write belongs to no attempt (a task that ignored itself
                # may already have run): recorded without a worker, as the conformance
                # recorder records it on real workers, so no attempt is charged with it.
                acting, self.acting_worker = self.acting_worker, None
                try:
                    self.backend.mark_as_revoked(tid, reason="revoked", store_result=True)
                finally:
                    self.acting_worker = acting

    # -- faults (CELERY_SEMANTICS.md §3) -----------------------------------------------

    def crash_worker(
        self, name: str, at: float | dt.datetime | None = None, restart_after: float | None = None
    ) -> None:
        """Power failure of worker ``name`` (G4): unacked messages go back to the broker,
        early-acked running tasks are lost where they stand; ``restart_after`` seconds
        later an empty worker of the same name comes back."""
        self.faults.crash_worker(name, at, restart_after)

    def kill_child(
        self, task_id: str, at: float | dt.datetime | None = None, exitcode: int = -9
    ) -> None:
        """The child running ``task_id`` dies (G3): WorkerLostError and §3.1's decision."""
        self.faults.kill_child(task_id, at, exitcode)

    def lose_connection(
        self, worker: str, at: float | dt.datetime | None = None, reconnect_after: float = 5.0
    ) -> None:
        """Worker ``worker`` loses its broker connection (G7) and reconnects later."""
        self.faults.lose_connection(worker, at, reconnect_after)

    def restart_broker(self, at: float | dt.datetime | None = None, down_for: float = 1.0) -> None:
        """Restart the broker: connections drop; what the transport keeps survives."""
        self.faults.restart_broker(at, down_for)

    def shutdown_worker(
        self, name: str, at: float | dt.datetime | None = None, warm: bool = True
    ) -> None:
        """Shut worker ``name`` down (G17): warm finishes running tasks, cold cancels them."""
        self.faults.shutdown_worker(name, at, warm)

    def wait(self, ready: Callable[[], bool] | None, timeout: float | None, task_id: str) -> None:
        """Run until ``ready()`` (default: ``task_id`` has a ready state stored);
        TimeoutError after ``timeout`` virtual seconds."""
        self._require_active("waiting for a result")
        loop = self.loop
        if ready is None:
            status, done = self.backend.status, states.READY_STATES

            def ready() -> bool:
                return status.get(task_id) in done

        deadline = None if timeout is None else loop.now + timeout
        while not ready():
            nxt = loop.next_time()
            if deadline is not None and (nxt is None or nxt > deadline):
                loop.advance_to(max(deadline, loop.now))
                raise TimeoutError("The operation timed out.")
            if nxt is None:
                raise SimulationIdle(self.explain(task_id))
            loop.step()

    def explain(self, task_id: str) -> str:
        """Why ``task_id`` has no ready result although nothing is left to run."""
        state = self.backend.state_of(task_id)
        head = f"task {task_id} can never become ready: the simulation is idle and it is {state}"
        events = self.history.where(task_id=task_id)
        if not len(events):
            return f"{head}; no message for this task id was ever published in this simulation"
        waiting = [e for e in self.broker.ready() if e.message.task_id == task_id]
        if waiting:
            queue = waiting[0].message.queue
            if not self.workers:
                return (
                    f"{head}; its message waits in queue {queue!r} and the simulation has "
                    "no workers: pass workers=1 or call sim.add_worker()"
                )
            return (
                f"{head}; its message waits in queue {queue!r}, which no worker consumes: "
                f"call sim.add_worker(queues=[{queue!r}])"
            )
        last = events.last()
        return (
            f"{head}; its last event was {last.kind!r} at {last.at.isoformat()} "
            f"({', '.join(events.kinds()[-4:])}): no message for it is left to run"
        )

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise SimqError(
                f"{what} needs an active simulation; use `with Simulation(app) as sim:` "
                "or call sim.start()"
            )

    def __repr__(self) -> str:
        return (
            f"<Simulation seed={self.seed} now={self.now.isoformat()} "
            f"workers={list(self.workers)} events={len(self.history)}>"
        )


#: Whether Celery's revoke command stores REVOKED itself (worker/control.py ``_revoke``
#: calls ``backend.mark_as_revoked`` from 5.6.2; 5.5's does not).
_REVOKE_MARKS_REVOKED = "mark_as_revoked" in celery.worker.control._revoke.__code__.co_names
_REVOCABLE = frozenset({states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})

#: The simulation active in this process, if any: time is patched process-wide.
_ACTIVE: list[Simulation | None] = [None]
