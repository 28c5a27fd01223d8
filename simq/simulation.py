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

import contextlib
import datetime as dt
import functools
import os
import random
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import celery
import celery.worker.control
from celery import states
from celery.exceptions import TimeoutError
from celery.utils.time import maybe_iso8601, maybe_make_aware
from kombu.transport.virtual import BrokerState

from simq import guards, validate
from simq.engine.fibers import Fibers, current_fiber
from simq.engine.interrupts import SigintHandler
from simq.engine.loop import Loop, relaxed_gc
from simq.engine.rng import Streams
from simq.engine.vtime import VirtualTime
from simq.exceptions import InvalidArgument, SimqError, SimulationIdle, UnknownTarget
from simq.history import Event, History
from simq.message import Message
from simq.seams.backend import CHORD_BACKENDS, Backend
from simq.seams.install import Installation
from simq.seams.pool import forget_dead_children
from simq.world.broker import Broker
from simq.world.chords import ChordWatch
from simq.world.faults import Faults
from simq.world.polling import PollingBroker
from simq.world.polling import interval as polling_interval
from simq.world.worker import Worker

__all__ = ["DEFAULT_START", "Simulation"]

#: Where virtual time starts unless ``start=`` says otherwise (never the wall clock).
DEFAULT_START = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def _epoch(value: dt.datetime, what: str, call: str) -> float:
    return validate.instant(call, what, value)


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
        transport: ``"amqp"`` (RabbitMQ, default), ``"redis"``, ``"sqs"`` or
            ``"polling"`` (kombu's polling transports: ``filesystem://``, SQLAlchemy):
            how unacked messages come back (channel close, or visibility timeout), how
            priorities order a queue, and whether workers are sent messages or poll for
            them. ``app.conf.broker_transport_options["visibility_timeout"]`` overrides
            kombu's defaults (3600 s redis, 1800 s sqs); ``["polling_interval"]`` sets
            how long a polling worker waits after an empty poll (default 1.0 s).
        result_backend: Whose chord support the result store has: ``"redis"`` (default;
            Celery's RedisBackend code counts each header part once and the last part
            publishes the body), ``"database"`` or ``"rpc"`` (no counter: Celery sends
            ``celery.chord_unlock``, retried every ``result_chord_retry_interval`` until
            the header is ready). Results are stored alike in every case.
        durations: Per task name, how long its body takes in virtual seconds: a number,
            or a callable drawing from a seeded ``random.Random``.
        max_instant_steps: Guard: steps of the event loop at one virtual instant before
            :class:`~simq.exceptions.RunawaySimulation` (a poison message redelivered at
            once, for ever). ``None``: no limit.
        max_steps: Guard: steps in one ``run()``, ``advance()`` or ``get()`` call.
        max_run_time: Guard: virtual seconds a ``run()`` without ``until`` or a ``get()``
            without ``timeout`` may cover (default: 365 days).
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
        result_backend: str = "redis",
        durations: Mapping[str, float | Callable[[random.Random], float]] | None = None,
        max_instant_steps: int | None = guards.DEFAULT_MAX_INSTANT_STEPS,
        max_steps: int | None = guards.DEFAULT_MAX_STEPS,
        max_run_time: float | None = guards.DEFAULT_MAX_RUN_TIME,
    ) -> None:
        if not isinstance(app, celery.Celery):
            raise TypeError(
                f"Simulation() takes a celery.Celery app, got {type(app).__name__} {app!r}"
            )
        call = "Simulation()"
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise validate.invalid(call, "seed", "an int", seed)
        validate.whole(call, "workers", workers, minimum=0)
        validate.whole(call, "concurrency", concurrency, minimum=1)
        if prefetch_multiplier is not None:
            validate.whole(call, "prefetch_multiplier", prefetch_multiplier, minimum=0)
        self.app = app
        self.seed = seed
        self.started_at = _epoch(DEFAULT_START if start is None else start, "start", call)
        self.limits = guards.Limits.checked(call, max_instant_steps, max_steps, max_run_time)
        self.loop = Loop(self.started_at, max_instant_steps=self.limits.max_instant_steps)
        self.loop.explain = self._explain_runaway
        self.streams = Streams(seed)
        self.history = History()
        self._append = self.history.append
        self.chords = ChordWatch(self)  # stops a run whose chord can never complete
        self.unbounded = False  # driven by a run() or get() with no bound in virtual time
        validate.app_settings(call, app)
        options = app.conf.broker_transport_options or {}
        self.transport = transport
        self.broker: Broker
        if transport == "polling":
            self.broker = PollingBroker(
                self.record,
                self.loop,
                interval=polling_interval(options),
                max_priority=app.conf.task_queue_max_priority,
            )
        else:
            self.broker = Broker(
                self.record,
                self.loop,
                transport=transport,
                visibility_timeout=options.get("visibility_timeout"),
                max_priority=app.conf.task_queue_max_priority,
            )
        self.durations = validate.durations(app, durations)
        self.faults = Faults(self)
        self.exchange_state = BrokerState()
        self.control_exchange = f"{app.conf.control_exchange}.pidbox"
        if result_backend not in CHORD_BACKENDS:
            raise validate.invalid(
                call, "result_backend", f"one of {', '.join(map(repr, CHORD_BACKENDS))}",
                result_backend, validate.did_you_mean(result_backend, CHORD_BACKENDS),
            )  # fmt: skip
        self.backend = Backend(app=app, simulation=self, kind=result_backend)
        self.revoked_owner: Worker | None = None  # whose revokes celery.worker.state holds
        self.acting_worker: str | None = None  # the worker whose parent process acts now
        self._pids = _FIRST_PID
        self._installation: Installation | None = None
        self.fibers = Fibers()  # every child slot's fiber, ended by close()
        self._sigint = SigintHandler()  # Ctrl-C reaches the user while active
        self.workers: dict[str, Worker] = {}
        self.vtime = VirtualTime(self.time, self._sleep, monotonic_origin=self.started_at - 1e5)
        self._message_seq = 0
        self._active = False
        self._closed = False
        self._owners: list[bool] = []  # per `with` block: whether it started the simulation
        self._thread: int | None = None  # the thread that started it: its fibers live there
        self.started_where = ""  # the caller that started it, for leak reports
        self._call = "run()"  # the call driving the loop now, for runaway messages
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
                f"another simulation is active in this process ({other!r}, started at "
                f"{other.started_where}); close it (sim.close(), or end its `with` block) "
                "before starting another"
            )
        self._thread = threading.get_ident()
        self.started_where = _caller()
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
        self._sigint.install()
        self._active = True
        return self

    def close(self) -> None:
        """End the run: stop every task still running, restore the app and time; idempotent.

        A task still in the middle of its body (inside ``time.sleep``) gets
        ``greenlet.GreenletExit`` there, as a generator gets GeneratorExit: its ``finally``
        blocks and ``with`` exits run, on a clock that no longer moves. A child that a
        fault killed runs nothing more. Afterwards nothing outside the simulation refers
        to it: once dropped, it is freed with everything it ran (its history, while held,
        stays readable).
        """
        if self._active:
            if current_fiber() is not None:
                raise SimqError(
                    "close() was called inside a task; a simulation ends from the test "
                    "code that started it (the end of its `with` block)"
                )
            self._require_driver("close()")  # its children are greenlets of its thread
            # Nothing runs on after the end: a task's finally that waits for a result
            # finds the simulation idle.
            self.loop._heap.clear()
            try:
                self.fibers.close()
                forget_dead_children(self.app)
            finally:
                self.pause()
        self._closed = True

    def pause(self) -> None:
        """Deactivate without ending the run; ``start()`` resumes it where it was.

        The app, time, ``os._exit`` and Ctrl-C are restored as by :meth:`close`, but the
        queues, the tasks in flight and the virtual clock stay as they are: the pytest
        drop-in pauses a session's simulation between the tests that use it.
        """
        if not self._active:
            return
        self._active = False
        self._sigint.restore()
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

    def __enter__(self) -> Simulation:
        # Re-entrant: only the `with` block that started the simulation closes it, so a
        # nested `with sim:` (or one around a simulation the pytest fixture started)
        # leaves it running for the code around it.
        owner = not self._active
        self.start()
        self._owners.append(owner)
        return self

    def __exit__(self, *exc_info: object) -> None:
        owner = self._owners.pop() if self._owners else True
        if owner:
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
        self._require_open("add_worker()")
        call = "add_worker()"
        if name is not None and (not isinstance(name, str) or not name):
            raise validate.invalid(call, "name", "a non-empty str, or None", name)
        validate.whole(call, "concurrency", concurrency, minimum=1)
        if prefetch_multiplier is not None:
            validate.whole(call, "prefetch_multiplier", prefetch_multiplier, minimum=0)
        if queues is not None:
            queues = validate.queue_names(call, queues)
        validate.app_settings(call, self.app)
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
        """Run until nothing is left to do, or until the virtual datetime ``until``.

        Raises :class:`~simq.exceptions.RunawaySimulation` when a guard stops a run that
        would never end (``max_instant_steps``, ``max_steps``, ``max_run_time``).
        """
        return self._run(until, "run()")

    def _run(self, until: dt.datetime | None, call: str) -> Simulation:
        self._require_driver(call)
        loop = self.loop
        deadline = None if until is None else _epoch(until, "until", call)
        with self._driving(call, unbounded=deadline is None):
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

    # -- guards (simq/guards.py) -------------------------------------------------------

    @contextlib.contextmanager
    def _driving(self, call: str, unbounded: bool) -> Iterator[None]:
        """``call`` drives the loop within the guards (``max_run_time`` too when the call
        itself has no bound in virtual time); runaway messages name it."""
        saved, self._call = self._call, call
        was_unbounded, self.unbounded = self.unbounded, unbounded
        run_time = self.limits.max_run_time
        horizon = self.loop.now + run_time if unbounded and run_time is not None else None
        try:
            with self.loop.bounded(self.limits.max_steps, horizon):
                yield
        finally:
            self._call = saved
            self.unbounded = was_unbounded

    def _explain_runaway(self, limit: str) -> str:
        return guards.explain(self, limit, self._call)

    def advance(self, seconds: float) -> Simulation:
        """Run for ``seconds`` of virtual time."""
        seconds = validate.seconds("advance()", "seconds", seconds)
        if self.loop.now + seconds > validate.LATEST:
            raise InvalidArgument(
                f"advance(): {seconds!r} seconds from now is past the end of virtual time "
                "(datetime.max, the year 9999); pass fewer seconds"
            )
        until = dt.datetime.fromtimestamp(self.loop.now + seconds, dt.timezone.utc)
        return self._run(until, "advance()")

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
            drawn = value(self.streams.stream(f"duration:{name}"))
            return validate.seconds(  # type: ignore[no-any-return]
                f"durations[{name!r}]", "the drawn duration", drawn
            )
        return float(value)

    # -- judging -----------------------------------------------------------------------

    def check(self, **overrides: Any) -> list[Any]:
        """Run every checker of ``simq.checkers`` on this history; [] when all hold.

        Each violation names its guarantee (G1-G18 of CELERY_SEMANTICS.md §3.2, C1-C4
        for the canvas) and carries the events that prove it. Keyword arguments override the
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

    def owns_pid(self, pid: int) -> bool:
        """Whether ``pid`` was handed out to a simulated child of this simulation."""
        return _FIRST_PID < pid <= self._pids

    def child_slot(self, pid: int) -> Any:
        """The live child slot whose process id is ``pid``, or None."""
        for worker in self.workers.values():
            if worker.alive:
                for slot in worker.slots:
                    if slot.pid == pid:
                        return slot
        return None

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
        ids: list[str] = []
        if method == "revoke":
            # Checked before anything is recorded: a revoke of no task id is a misuse.
            ids = validate.task_ids("app.control.revoke()", arguments.get("task_id") or [])
        self.record("control", method=method, destination=destination)
        if method == "revoke":
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
        self._require_open("revoke()")
        call = "revoke()"
        when = self.faults.at(call, at)
        ids = validate.task_ids(call, task_id)
        validate.flag(call, "terminate", terminate)
        if signal is not None:
            validate.signum(call, signal)
        self.faults._when(when, self._revoke, ids, terminate, signal)

    def _revoke(self, ids: list[str], terminate: bool, signal: str | None) -> None:
        online = [w for w in self.workers.values() if w.alive and w.online]
        broker = self.broker
        for tid in ids:
            self.record(
                "revoke",
                task_id=tid,
                terminate=terminate,
                signal=signal,
                workers=[w.name for w in online],
            )
            if not isinstance(broker, PollingBroker):
                self._revoke_on(online, tid, terminate, signal)
        if isinstance(broker, PollingBroker):
            # synloop reads the broadcast in the same drain as tasks (simq/world/polling.py):
            # each worker acts on it at its next poll.
            for w in online:
                broker.read_command(
                    w, functools.partial(self._revoke_read, w, ids, terminate, signal)
                )

    def _revoke_read(self, worker: Worker, ids: list[str], terminate: bool, signal: Any) -> None:
        # Read at the worker's next poll: after a reconnect, or in a warm shutdown's last turn.
        if worker.alive and (worker.online or worker.stopping):
            for tid in ids:
                self._revoke_on([worker], tid, terminate, signal)

    def _revoke_on(self, online: list[Worker], tid: str, terminate: bool, signal: Any) -> None:
        """The revoke of ``tid`` acts on the ``online`` workers that read it."""
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
        self._require_open("crash_worker()")
        self.faults.crash_worker(name, at, restart_after)

    def kill_child(
        self,
        task_id: str,
        at: float | dt.datetime | None = None,
        exitcode: int = -9,
        attempt: str | None = None,
    ) -> None:
        """The child running ``task_id`` dies (G3): WorkerLostError and §3.1's decision.

        ``attempt`` picks one of several attempts of the task running at once (a
        visibility-timeout copy, a redelivery after a lost connection) by the ``attempt``
        id its events carry, e.g. ``"m1.2"``; without it, the first child found running
        the task dies.
        """
        self._require_open("kill_child()")
        self.faults.kill_child(task_id, at, exitcode, attempt)

    def lose_connection(
        self, worker: str, at: float | dt.datetime | None = None, reconnect_after: float = 5.0
    ) -> None:
        """Worker ``worker`` loses its broker connection (G7) and reconnects later."""
        self._require_open("lose_connection()")
        self.faults.lose_connection(worker, at, reconnect_after)

    def restart_broker(self, at: float | dt.datetime | None = None, down_for: float = 1.0) -> None:
        """Restart the broker: connections drop; what the transport keeps survives."""
        self._require_open("restart_broker()")
        self.faults.restart_broker(at, down_for)

    def shutdown_worker(
        self, name: str, at: float | dt.datetime | None = None, warm: bool = True
    ) -> None:
        """Shut worker ``name`` down (G17): warm finishes running tasks, cold cancels them."""
        self._require_open("shutdown_worker()")
        self.faults.shutdown_worker(name, at, warm)

    def wait(self, ready: Callable[[], bool] | None, timeout: float | None, task_id: str) -> None:
        """Run until ``ready()`` (default: ``task_id`` has a ready state stored);
        TimeoutError after ``timeout`` virtual seconds."""
        self._require_driver("get()")
        loop = self.loop
        if ready is None:
            status, done = self.backend.status, states.READY_STATES

            def ready() -> bool:
                return status.get(task_id) in done

        if timeout is not None:
            timeout = validate.timeout(timeout)
        deadline = None if timeout is None else loop.now + timeout
        with self._driving(f"get() of task {task_id}", unbounded=deadline is None):
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
            self._require_open(what)
            raise SimqError(
                f"{what} needs an active simulation; use `with Simulation(app) as sim:` "
                "or call sim.start()"
            )

    def _require_open(self, what: str) -> None:
        """Refuse ``what`` on a closed simulation: its history is final."""
        if self._closed:
            raise SimqError(
                f"{what}: this simulation is closed (its `with` block ended, or close() was "
                "called) and its history is final; create a new Simulation to run again"
            )

    def _require_driver(self, what: str) -> None:
        """Refuse ``what`` (it runs the event loop) from a task or from another thread."""
        self._require_active(what)
        if threading.get_ident() != self._thread:
            raise SimqError(
                f"{what} was called from thread {threading.current_thread().name!r}, but "
                f"this simulation was started in another thread ({self.started_where}): a "
                "simulation runs in the thread that started it (its workers' children are "
                f"greenlets of that thread); call {what} from there"
            )
        fiber = current_fiber()
        if fiber is not None:
            request = getattr(fiber.owner, "request", None)
            task = f"task {request.task_name!r} [{request.id}]" if request is not None else "a task"
            raise SimqError(
                f"{what} was called inside {task}, running in {fiber.name}: a task cannot "
                "drive the simulation it runs in, and would never finish; call it from test "
                "code. Inside a task, time.sleep() lets virtual time pass"
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

#: Simulated child process ids count up from here (deterministic, never real pids).
_FIRST_PID = 100

#: The simulation active in this process, if any: time is patched process-wide.
_ACTIVE: list[Simulation | None] = [None]

#: simq's own directory: frames there are not where a user started a simulation.
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _caller() -> str:
    """Where user code started a simulation: the first frame outside simq and contextlib."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_PACKAGE) and not filename.endswith("contextlib.py"):
            try:
                shown = os.path.relpath(filename)
            except ValueError:  # another drive (Windows)
                shown = filename
            if shown.startswith(".."):
                shown = filename
            return f"{shown}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "an unknown place"
