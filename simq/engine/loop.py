"""The event loop: one heap of ``(time, seq, timer)``, a forward-only clock.

Internal. Ties break on a sequence number from ``itertools.count()``, never on ``id()``
or dict order, so the same calls in the same order always run in the same order.

Three guards stop a loop that would never end: ``max_instant_steps`` (timers run at one
virtual instant without the clock moving, within one driving call: a poison message
redelivered at once, again and again), and a step budget and a virtual-time horizon for
one bounded call (:meth:`Loop.bounded`). Each raises
:class:`~simq.exceptions.RunawaySimulation` before the next timer runs, so the heap is
left intact; ``explain`` (set by the simulation) words the message.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from simq.exceptions import RunawaySimulation, SimqError

__all__ = ["Loop", "Timer", "relaxed_gc"]

#: A step count no run reaches: "no limit" without a None check on the hot path.
_NEVER = 1 << 62


@contextlib.contextmanager
def relaxed_gc(gen0: int = 50_000) -> Iterator[None]:
    """Collect the youngest generation less often while a simulation is active.

    A run allocates many short-lived objects (messages, requests, events); with the
    default threshold (700) the cyclic collector rescans them thousands of times, about a
    fifth of a trivial task's cost. The previous thresholds come back afterwards, even on
    error; nothing about the run's results depends on when collection happens.
    """
    before = gc.get_threshold()
    if before[0] >= gen0 or not gc.isenabled():
        yield
        return
    gc.set_threshold(gen0, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


class Timer:
    """A scheduled call; ``cancel()`` makes the loop skip it."""

    __slots__ = ("args", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn: Callable[..., Any] | None = fn
        self.args = args

    @property
    def cancelled(self) -> bool:
        return self.fn is None

    def cancel(self) -> None:
        self.fn = None
        self.args = ()

    def __repr__(self) -> str:
        state = "cancelled" if self.fn is None else getattr(self.fn, "__qualname__", self.fn)
        return f"<Timer at={self.when} {state}>"


class Loop:
    """A discrete-event loop over virtual time (float seconds since the Unix epoch)."""

    def __init__(self, start: float, *, max_instant_steps: int | None = None) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self.on_advance: Callable[[], None] | None = None
        #: Words a RunawaySimulation's message from the guard's name (set by the owner).
        self.explain: Callable[[str], str] | None = None
        self.steps = 0  # timers run so far
        self.instant_start = 0  # ``steps`` when the clock last moved
        self.max_instant_steps = max_instant_steps
        self.budget_start: tuple[int, float] = (0, start)  # (steps, time) of the bounded call
        self._budget_end = _NEVER
        self._stopped: tuple[str, str] | None = None  # (message, limit) from stop()
        self._trip = _NEVER  # the step count at which a guard stops the loop
        self._horizon = math.inf  # no timer due after this runs (max_run_time)
        self._rearm()

    # -- guards ------------------------------------------------------------------------

    def _rearm(self) -> None:
        instant = self.max_instant_steps
        end = _NEVER if instant is None else self.instant_start + instant
        self._trip = min(end, self._budget_end)
        if self._stopped is not None:
            self._trip = self.steps

    @contextlib.contextmanager
    def bounded(self, max_steps: int | None, horizon: float | None = None) -> Iterator[None]:
        """Within the block, run at most ``max_steps`` timers, and none due after the
        virtual time ``horizon`` (the ``max_run_time`` guard); None: no limit.

        Steps at one instant count from the start of the block too: a test that calls
        ``get()`` on one zero-duration task after another, all at one virtual instant,
        is not a loop. Nested blocks keep the tighter limits; the previous ones come
        back afterwards.
        """
        saved = self._budget_end, self.budget_start, self._horizon
        self.instant_start = self.steps
        if max_steps is not None and self.steps + max_steps < self._budget_end:
            self._budget_end = self.steps + max_steps
            self.budget_start = (self.steps, self.now)
        if horizon is not None and horizon < self._horizon:
            self._horizon = horizon
        self._rearm()
        try:
            yield
        finally:
            self._budget_end, self.budget_start, self._horizon = saved
            self._rearm()

    @property
    def instant_steps(self) -> int:
        """Timers run at the current virtual instant."""
        return self.steps - self.instant_start

    def stop(self, message: str, limit: str) -> None:
        """Stop the run before the next step with RunawaySimulation(``message``, ``limit``):
        for a watcher that found the run can never end by itself."""
        self._stopped = (message, limit)
        self._trip = self.steps

    def _limit_reached(self, limit: str | None = None) -> NoReturn:
        stopped = self._stopped
        if stopped is not None:
            self._stopped = None
            self._rearm()
            raise RunawaySimulation(*stopped)
        if limit is None:
            instant = self.max_instant_steps
            at_instant = instant is not None and self.instant_steps >= instant
            limit = "max_instant_steps" if at_instant else "max_steps"
        explain = self.explain
        if explain is not None:
            message = explain(limit)
        else:
            message = f"the event loop reached its {limit} limit at virtual time {self.now!r}"
        raise RunawaySimulation(message, limit=limit)

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Schedule ``fn(*args)`` at virtual time ``when`` (never before now)."""
        if when < self.now:
            when = self.now
        timer = Timer(when, fn, args)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Schedule ``fn(*args)`` after ``delay`` virtual seconds."""
        return self.call_at(self.now + max(0.0, delay), fn, *args)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> Timer:
        """Schedule ``fn(*args)`` at the current time, after what is already due now."""
        return self.call_at(self.now, fn, *args)

    def advance_to(self, when: float) -> None:
        """Move the clock forward to ``when`` without running anything."""
        if when < self.now:
            raise SimqError(f"time can't go backwards: now={self.now!r}, asked for {when!r}")
        if when != self.now:
            self.now = when
            self.instant_start = self.steps
            self._rearm()
            if self.on_advance is not None:
                self.on_advance()

    def next_time(self) -> float | None:
        """The time of the next live timer, or ``None`` when nothing is scheduled."""
        heap = self._heap
        while heap and heap[0][2].fn is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def step(self) -> bool:
        """Run the next live timer; return False when nothing is scheduled.

        Raises RunawaySimulation, with the timer left in the heap, when a guard's limit
        is reached.
        """
        heap = self._heap
        while heap:
            when, _, timer = heap[0]
            fn = timer.fn
            if fn is None:
                heapq.heappop(heap)
                continue
            if when != self.now:
                if when > self._horizon:
                    self._limit_reached("max_run_time")
                self.advance_to(when)
            if self.steps >= self._trip:
                self._limit_reached()
            heapq.heappop(heap)
            self.steps += 1
            args = timer.args
            timer.fn = None
            fn(*args)
            return True
        return False

    def pending(self) -> list[Timer]:
        """The live timers, soonest first (for explanations; not on the hot path)."""
        return [t for _, _, t in sorted(self._heap) if t.fn is not None]

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if t.fn is not None)
