"""The event loop: one heap of ``(time, seq, timer)``, a forward-only clock.

Internal. Ties break on a sequence number from ``itertools.count()``, never on ``id()``
or dict order, so the same calls in the same order always run in the same order.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from simq.exceptions import SimqError

__all__ = ["Loop", "Timer", "relaxed_gc"]


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

    def __init__(self, start: float) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self.on_advance: Callable[[], None] | None = None

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
            if self.on_advance is not None:
                self.on_advance()

    def next_time(self) -> float | None:
        """The time of the next live timer, or ``None`` when nothing is scheduled."""
        heap = self._heap
        while heap and heap[0][2].fn is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def step(self) -> bool:
        """Run the next live timer; return False when nothing is scheduled."""
        heap = self._heap
        while heap:
            when, _, timer = heapq.heappop(heap)
            fn = timer.fn
            if fn is None:
                continue
            if when != self.now:
                self.advance_to(when)
            args = timer.args
            timer.fn = None
            fn(*args)
            return True
        return False

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if t.fn is not None)
