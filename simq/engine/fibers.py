"""Fibers: the child slots of simulated workers, as long-lived greenlets.

Internal. A fiber runs one job at a time. A job may suspend itself at a virtual-time
point (``time.sleep`` inside a task) by switching back to the engine; the engine resumes
it later, or throws an exception into it there (a time limit, a kill). Killing a child
drops its fiber and starts a fresh one, as prefork replaces a dead process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import greenlet

__all__ = ["SUSPENDED", "Exited", "Fiber", "current_fiber"]


class _Suspended:
    def __repr__(self) -> str:
        return "SUSPENDED"


#: What switching into a fiber returns when the job suspended instead of finishing.
SUSPENDED: Any = _Suspended()


class Fiber:
    """A child slot: runs ``job()`` callables in its own greenlet.

    ``run(job)`` switches into the fiber and returns either the job's return value or
    :data:`SUSPENDED`. A suspended job is continued with ``resume()`` or interrupted with
    ``throw(exc)``; both return the same way.
    """

    __slots__ = ("_glet", "_hub", "busy", "name", "owner")

    def __init__(self, name: str, owner: Any = None) -> None:
        self.name = name
        self.owner = owner
        self.busy = False
        self._hub = greenlet.getcurrent()
        self._glet = greenlet.greenlet(self._main, parent=self._hub)
        self._glet.fiber = self

    def _main(self, job: Callable[[], Any]) -> None:
        hub = self._hub
        while True:
            result = job()
            job = hub.switch(_Done(result))

    def run(self, job: Callable[[], Any]) -> Any:
        """Start ``job`` in this fiber; return its result or SUSPENDED."""
        self.busy = True
        return self._unwrap(self._glet.switch(job))

    def resume(self, value: Any = None) -> Any:
        """Continue the suspended job; ``value`` is what its suspension point returns."""
        return self._unwrap(self._glet.switch(value))

    def throw(self, exc: BaseException) -> Any:
        """Raise ``exc`` inside the suspended job at its suspension point."""
        return self._unwrap(self._glet.throw(exc))

    def _unwrap(self, value: Any) -> Any:
        if isinstance(value, _Done):
            self.busy = False
            return value.result
        if isinstance(value, Exited):
            # The job ended its own child (os._exit): drop it where it stands.
            self.abandon()
            return value
        if self._glet.dead:
            # The job let an exception escape the fiber's main loop: a bug in simq's
            # runtime, which catches everything a task can raise.
            raise RuntimeError(f"fiber {self.name} died unexpectedly")
        return SUSPENDED

    def suspend(self) -> Any:
        """Called from inside the fiber: give control back to the engine."""
        return self._hub.switch(SUSPENDED)

    def exit(self, code: int) -> None:
        """Called from inside the fiber: the child process ends now (``os._exit``).

        Control never comes back: the job's remaining code, ``finally`` blocks included,
        never runs, as in a process that exited.
        """
        self._hub.switch(Exited(code))

    @property
    def suspended(self) -> bool:
        return self.busy

    def abandon(self) -> None:
        """Drop a dead child's greenlet without running any more of its code."""
        glet = self._glet
        _GRAVEYARD.append(glet)
        self.busy = False
        self._glet = greenlet.greenlet(self._main, parent=self._hub)
        self._glet.fiber = self

    def __repr__(self) -> str:
        return f"<Fiber {self.name} {'busy' if self.busy else 'idle'}>"


class Exited:
    """What running a fiber returns when its job ended the child with ``os._exit``."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code

    def __repr__(self) -> str:
        return f"Exited({self.code})"


class _Done:
    __slots__ = ("result",)

    def __init__(self, result: Any) -> None:
        self.result = result


# A killed child must not run another line of its code, not even ``finally`` blocks, as
# a SIGKILLed process would not. A suspended greenlet that is garbage-collected gets
# GreenletExit thrown into it, so abandoned greenlets are kept here until interpreter exit.
_GRAVEYARD: list[greenlet.greenlet] = []


def current_fiber() -> Fiber | None:
    """The fiber running the caller, or None when called from the engine or test code."""
    return getattr(greenlet.getcurrent(), "fiber", None)
