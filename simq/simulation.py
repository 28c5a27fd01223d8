"""The Simulation: one deterministic run of an app's tasks on simulated infrastructure.

Example:
    >>> import simq
    >>> app = simq.App("shop")
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
import random
from collections.abc import Callable, Iterable
from typing import Any

from simq import states
from simq.engine.fibers import current_fiber
from simq.engine.loop import Loop
from simq.engine.rng import Streams
from simq.engine.vtime import VirtualTime
from simq.exceptions import SimqError, SimulationIdle, TimeoutError, UnknownTarget
from simq.history import Event, History
from simq.message import Message
from simq.world.backend import Backend
from simq.world.broker import Broker
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

    While active (``with Simulation(app) as sim:``), the app's ``delay``,
    ``apply_async``, ``send_task`` and ``retry`` publish into it, and user code sees
    virtual time. The same seed and code give the same history, byte for byte.

    Args:
        app: The :class:`simq.App` whose tasks run.
        seed: Seeds task ids, retry jitter and every other random choice.
        workers: How many workers to start (``worker-1``, ``worker-2``, ...); 0 is allowed.
        concurrency: Child slots per default worker.
        prefetch_multiplier: Defaults to ``app.conf.worker_prefetch_multiplier`` (4).
        start: Timezone-aware datetime where virtual time starts.
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
    ) -> None:
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
        self.broker = Broker(self.record, app.conf.task_queue_max_priority)
        self.backend = Backend(self.record, self.time)
        self.workers: dict[str, Worker] = {}
        self.vtime = VirtualTime(self.time, self._sleep, monotonic_origin=self.started_at - 1e5)
        self._message_seq = 0
        self._active = False
        self._closed = False
        self._default_concurrency = concurrency
        self._default_multiplier = prefetch_multiplier
        for _ in range(workers):
            self.add_worker(concurrency=concurrency, prefetch_multiplier=prefetch_multiplier)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Simulation:
        """Activate: route the app's calls here and patch time for user code."""
        if self._closed:
            raise SimqError("this simulation has ended; create a new Simulation to run again")
        if self._active:
            return self
        other = getattr(self.app, "_world", None)
        if other is not None:
            raise SimqError(
                f"app {self.app.main!r} already has an active simulation (seed={other.seed}); "
                "close it before starting another"
            )
        self.vtime.start()
        self.app._world = self
        self.loop.on_advance = self.vtime.sync
        self._active = True
        return self

    def close(self) -> None:
        """Deactivate and restore time; idempotent."""
        if self._active:
            self._active = False
            self.loop.on_advance = None
            if getattr(self.app, "_world", None) is self:
                self.app._world = None
            self.vtime.stop()
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
        if prefetch_multiplier is None:
            prefetch_multiplier = (
                self._default_multiplier
                if self._default_multiplier is not None
                else self.app.conf.worker_prefetch_multiplier
            )
        queue_names = list(queues) if queues is not None else self._default_queues()
        if isinstance(queues, str):
            raise TypeError(f"queues must be a list of names, got the string {queues!r}")
        worker = Worker(self, name, concurrency=concurrency, queues=queue_names,
                        prefetch_multiplier=int(prefetch_multiplier))
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
        if until is None:
            while loop.step():
                pass
            return self
        deadline = _epoch(until, "until")
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
        return self.run(until=dt.datetime.fromtimestamp(self.loop.now + seconds,
                                                        dt.timezone.utc))

    def _sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        fiber = current_fiber()
        if fiber is None:
            # time.sleep() in test code moves the whole simulation forward.
            self.advance(seconds)
            return
        self.loop.call_later(seconds, fiber.owner.wake)
        fiber.suspend()

    # -- recording ---------------------------------------------------------------------

    def record(self, kind: str, task_id: str | None = None, message_id: str | None = None,
               worker: str | None = None, **details: Any) -> None:
        self.history.append(Event(kind, self.loop.now, task_id, message_id, worker, details))

    # -- the world, as the API layer sees it -------------------------------------------

    def random(self, name: str) -> random.Random:
        """The seeded random stream ``name`` (e.g. ``"retry_jitter"``)."""
        return self.streams.stream(name)

    def new_task_id(self) -> str:
        return self.streams.uuid("task_ids")

    def new_message_id(self) -> str:
        self._message_seq += 1
        return f"m{self._message_seq}"

    def publish(self, message: Message) -> None:
        self._require_active("publishing")
        self.broker.publish(message)

    def get_meta(self, task_id: str) -> dict[str, Any] | None:
        return self.backend.get(task_id)

    def forget(self, task_id: str) -> None:
        self.backend.forget(task_id)

    def store(self, task_id: str, state: str, result: Any, request: Any = None,
              traceback: str | None = None) -> None:
        self.backend.store(task_id, state, result, request, traceback)

    def revoke(self, task_id: str | Iterable[str], terminate: bool = False,
               signal: str | None = None) -> None:
        """Broadcast a revoke to every online worker (lost if none is up, as in Celery)."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        online = [w for w in self.workers.values() if w.online]
        for tid in ids:
            self.record("revoke", task_id=tid, terminate=terminate, signal=signal,
                        workers=[w.name for w in online])
            active = any(r.id == tid for w in online for r in w.active())
            for w in online:
                w.revoke(tid)
            # 5.6+: mark REVOKED at once if not started anywhere (control.py).
            if online and not active and self.backend.state(tid) in _REVOCABLE:
                from simq.exceptions import TaskRevokedError

                self.backend.store(tid, states.REVOKED, TaskRevokedError("revoked"))

    def wait(self, ready: Callable[[], bool], timeout: float | None, task_id: str) -> None:
        """Run until ``ready()``; TimeoutError after ``timeout`` virtual seconds."""
        self._require_active("waiting for a result")
        loop = self.loop
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
        state = self.backend.state(task_id)
        head = f"task {task_id} can never become ready: the simulation is idle and it is {state}"
        events = self.history.where(task_id=task_id)
        if not len(events):
            return f"{head}; no message for this task id was ever published in this simulation"
        waiting = [e for e in self.broker.ready() if e.message.task_id == task_id]
        if waiting:
            queue = waiting[0].message.queue
            if not self.workers:
                return (f"{head}; its message waits in queue {queue!r} and the simulation has "
                        "no workers: pass workers=1 or call sim.add_worker()")
            return (f"{head}; its message waits in queue {queue!r}, which no worker consumes: "
                    f"call sim.add_worker(queues=[{queue!r}])")
        last = events.last()
        return (f"{head}; its last event was {last.kind!r} at {last.at.isoformat()} "
                f"({', '.join(events.kinds()[-4:])}): no message for it is left to run")

    def _require_active(self, what: str) -> None:
        if not self._active:
            raise SimqError(
                f"{what} needs an active simulation; use `with Simulation(app) as sim:` "
                "or call sim.start()"
            )

    def __repr__(self) -> str:
        return (f"<Simulation seed={self.seed} now={self.now.isoformat()} "
                f"workers={list(self.workers)} events={len(self.history)}>")


_REVOCABLE = frozenset({states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})
