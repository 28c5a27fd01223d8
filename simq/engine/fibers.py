"""Fibers: the child slots of simulated workers, as long-lived greenlets.

Internal. A fiber runs one job at a time. A job may suspend itself at a virtual-time
point (``time.sleep`` inside a task) by switching back to the engine; the engine resumes
it later, or throws an exception into it there (a time limit, a kill). Killing a child
drops its greenlet and starts a fresh one, as prefork replaces a dead process.

A suspended greenlet is never garbage-collected (it is a root, like a thread), so every
fiber is ended explicitly when its simulation closes (:meth:`Fibers.close`): a job
suspended there gets ``GreenletExit`` where it stands, and its ``finally`` blocks and
``with`` exits run. A killed child's greenlet is different: a SIGKILLed process runs no
more of its code, not even ``finally``, so :func:`bury` unwinds it under a tracer that
stops every Python instruction before it runs (see ``_Stop``).
"""

from __future__ import annotations

import gc
import sys
import warnings
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

import greenlet

__all__ = ["SUSPENDED", "Exited", "Fiber", "Fibers", "bury", "current_fiber"]


class _Suspended:
    def __repr__(self) -> str:
        return "SUSPENDED"


#: What switching into a fiber returns when the job suspended instead of finishing.
SUSPENDED: Any = _Suspended()

#: How many times closing a fiber throws GreenletExit into a job that keeps running.
_CLOSE_ATTEMPTS = 3
#: How many suspensions return at once while a fiber closes; the next one ends the job.
_CLOSING_SLEEPS = 100


class Fiber:
    """A child slot: runs ``job()`` callables in its own greenlet.

    ``run(job)`` switches into the fiber and returns either the job's return value or
    :data:`SUSPENDED`. A suspended job is continued with ``resume()`` or interrupted with
    ``throw(exc)``; both return the same way.
    """

    __slots__ = ("_glet", "_graves", "_hub", "_sleeps_left", "busy", "name", "owner")

    def __init__(self, name: str, owner: Any = None) -> None:
        self.name = name
        self.owner = owner
        self.busy = False
        self._sleeps_left: int | None = None  # set while closing
        self._hub = greenlet.getcurrent()
        self._graves: list[greenlet.greenlet] = []  # killed children not yet freed
        self._glet = self._new_greenlet()

    def _new_greenlet(self) -> greenlet.greenlet:
        glet = greenlet.greenlet(self._main, parent=self._hub)
        glet.fiber = self
        return glet

    def _main(self, job: Callable[[], Any]) -> None:
        hub = self._hub
        while True:
            result = job()
            job = hub.switch(_Done(result))

    def run(self, job: Callable[[], Any]) -> Any:
        """Start ``job`` in this fiber; return its result or SUSPENDED."""
        self.busy = True
        return self._switch(self._glet.switch, job)

    def resume(self, value: Any = None) -> Any:
        """Continue the suspended job; ``value`` is what its suspension point returns."""
        return self._switch(self._glet.switch, value)

    def throw(self, exc: BaseException) -> Any:
        """Raise ``exc`` inside the suspended job at its suspension point."""
        return self._switch(self._glet.throw, exc)

    def _switch(self, switch: Callable[[Any], Any], arg: Any) -> Any:
        try:
            value = switch(arg)
        except BaseException:
            if self._glet.dead:
                # The job let an exception escape the fiber (a Ctrl-C, or a bug in simq's
                # runtime, which catches everything a task raises): the child is gone.
                self.busy = False
                self._glet = self._new_greenlet()
            raise
        if isinstance(value, _Done):
            self.busy = False
            return value.result
        if isinstance(value, Exited):
            # The job ended its own child (os._exit): drop it where it stands.
            self.abandon()
            return value
        if self._glet.dead:
            raise RuntimeError(f"fiber {self.name} died unexpectedly")
        return SUSPENDED

    def suspend(self) -> Any:
        """Called from inside the fiber: give control back to the engine.

        While the fiber closes, virtual time no longer moves: a suspension returns at once,
        up to a limit, so that a job looping on ``time.sleep`` cannot keep it open.
        """
        if self._sleeps_left:
            self._sleeps_left -= 1
            return None
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
        self.busy = False
        self._glet = self._new_greenlet()
        self._graves.append(glet)
        if greenlet.getcurrent() is self._hub:
            self._bury_graves()
        # Else a task killed a child from inside a fiber (revoke with terminate): the
        # greenlets wait until the engine has control again, or until close().

    def _bury_graves(self) -> None:
        graves, self._graves = self._graves, []
        for glet in graves:
            bury(glet)

    def close(self) -> None:
        """End the fiber and free its greenlets; called by the engine, never from a job.

        A suspended job gets ``GreenletExit`` where it stands; its ``finally`` blocks and
        ``with`` exits run, and a ``time.sleep`` among them returns at once. A job that
        goes on regardless (it catches GreenletExit and sleeps on) is dropped like a
        killed child, as Python drops a generator that ignores GeneratorExit.
        """
        self._sleeps_left = _CLOSING_SLEEPS
        glet = self._glet
        try:
            for _ in range(_CLOSE_ATTEMPTS):
                if not glet:  # never started, or already over
                    break
                value = glet.throw(greenlet.GreenletExit)
                if value is SUSPENDED or isinstance(value, Exited):  # ignored it; os._exit
                    break
        finally:
            self.busy = False
            if glet:
                self._graves.append(glet)
            self._bury_graves()

    def __repr__(self) -> str:
        return f"<Fiber {self.name} {'busy' if self.busy else 'idle'}>"


class Fibers:
    """Every fiber of one simulation, so that closing the simulation ends them all."""

    def __init__(self) -> None:
        self._fibers: list[Fiber] = []

    def new(self, name: str, owner: Any = None) -> Fiber:
        """A new fiber, ended by :meth:`close`."""
        fiber = Fiber(name, owner)
        self._fibers.append(fiber)
        return fiber

    def close(self) -> None:
        """End every fiber (see :meth:`Fiber.close`); each is closed even if one fails."""
        fibers, self._fibers = self._fibers, []
        error: BaseException | None = None
        for fiber in fibers:
            try:
                fiber.close()
            except BaseException as exc:  # close the others, then raise
                error = error or exc
        if error is not None:
            raise error

    def __len__(self) -> int:
        return len(self._fibers)


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


def current_fiber() -> Fiber | None:
    """The fiber running the caller, or None when called from the engine or test code."""
    return getattr(greenlet.getcurrent(), "fiber", None)


# -- freeing a killed child without running its code -------------------------------------
#
# A suspended greenlet can only be freed by unwinding it: greenlet throws GreenletExit into
# one that is garbage-collected, and its finally blocks run. A killed child must run no
# more of its code, so bury() unwinds it with a trace function on every frame that raises
# before each instruction ("opcode" events), and a global one that raises as any new frame
# starts (a with block's __exit__, a finalizer). CPython drops a trace function that
# raises (sys.settrace(None), frame.f_trace = None) right after the call; dropping a _Stop
# frees it, and its __del__ sets both again before the next instruction. bury() checks once
# per process that this works on the running interpreter (_works); where it does not, it
# keeps the greenlet forever instead, as simq did before.


class _Unwind(BaseException):
    """Unwinds a killed child's greenlet; no code of the child runs while it does."""


class _Stop:
    """The local trace function of a frame being unwound: stops its next instruction.

    It holds no reference to its frame (a frame cannot be weakly referenced, and a strong
    one would make a cycle): ``__del__`` finds the frame as its caller's.
    """

    __slots__ = ()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event in ("exception", "return"):
            return self
        del self  # the traceback must not keep this object alive: its __del__ re-arms
        raise _Unwind

    def __del__(self) -> None:
        if _state.unwinding:
            sys.settrace(_stop_new_frame)
            frame = sys._getframe(1)  # the frame whose trace function CPython dropped
            if frame.f_code not in _ALLOWED:
                _stop(frame)


def _stop(frame: FrameType) -> None:
    frame.f_trace_lines = True
    frame.f_trace_opcodes = True
    frame.f_trace = _Stop()


def _stop_new_frame(frame: FrameType, event: str, arg: Any) -> Any:
    if frame.f_code in _ALLOWED:
        return None
    _stop(frame)
    raise _Unwind


def _ignore_unwind(unraisable: Any) -> None:
    # A finalizer stopped during the unwind (a generator's close, a __del__) reports
    # _Unwind as unraisable: that is the point, not an error.
    if not isinstance(unraisable.exc_value, _Unwind):
        _state.unraisablehook(unraisable)


def _clear(exc: BaseException | None) -> None:
    """Drop the frames an unwind left in ``exc``'s traceback (and its context's)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        exc.__traceback__ = None
        while tb is not None:
            try:
                tb.tb_frame.clear()
            except RuntimeError:  # the caller's own frame, still running
                pass
            tb = tb.tb_next
        exc.__context__, exc = None, exc.__context__


class _State:
    unwinding = False
    works: bool | None = None  # whether _unwind frees without running code, once known
    unraisablehook: Callable[[Any], Any] = sys.__unraisablehook__


_state = _State()
#: Greenlets of killed children that this interpreter cannot free without running them.
_KEPT: list[greenlet.greenlet] = []


def bury(glet: greenlet.greenlet) -> None:
    """Free the suspended greenlet of a killed child without running any more of its code.

    Called from the greenlet's parent (the engine). Where the interpreter cannot do that,
    the greenlet is kept until the process exits instead.
    """
    if not glet or glet.parent is not greenlet.getcurrent():
        if glet:
            _KEPT.append(glet)
        return
    if _state.works is None:
        _state.works = _works()
        if not _state.works:
            warnings.warn(
                f"simq: Python {sys.version.split()[0]} cannot free a killed child's greenlet "
                "without running its code; killed children stay in memory until the process "
                "exits",
                ResourceWarning,
                stacklevel=2,
            )
    if _state.works:
        _unwind(glet)
    else:
        _KEPT.append(glet)


def _unwind(glet: greenlet.greenlet) -> None:
    frames = []
    frame = glet.gr_frame
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    previous_trace = sys.gettrace()  # a debugger's or coverage's: back when done
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection now would stop unrelated finalizers too
    _state.unraisablehook = sys.unraisablehook
    sys.unraisablehook = _ignore_unwind
    codes = [f.f_code for f in frames]
    forced: Callable[[], None] = _nothing
    try:
        for frame in frames:
            _stop(frame)
        del frame
        frames.clear()
        _state.unwinding = True
        sys.settrace(_stop_new_frame)
        forced = _instrument(codes)
        try:
            glet.throw(_Unwind)
        except _Unwind as exc:
            # Free the dead frames while every finalizer is still stopped.
            _clear(exc)
    finally:
        _state.unwinding = False
        sys.settrace(previous_trace)
        forced()
        sys.unraisablehook = _state.unraisablehook
        _state.unraisablehook = sys.__unraisablehook__
        if gc_was_enabled:
            gc.enable()


def _nothing() -> None:
    pass


def _instrument(codes: list[CodeType]) -> Callable[[], None]:
    """On Python 3.12+, make ``sys.settrace`` reach the frames of a suspended greenlet.

    Python 3.12 applies tracing to a code object when a frame enters it; a frame resumed
    by a greenlet switch does not, so its code is instrumented here, after
    ``sys.settrace``, through a spare ``sys.monitoring`` tool. Returns the undo.
    """
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is None:
        return _nothing
    tool = None
    for i in range(2, 6):  # no generator expression: it would be a frame to stop
        if monitoring.get_tool(i) is None:
            tool = i
            break
    if tool is None:
        return _nothing
    # Tracing events that a trace function once declined stay off until restarted.
    monitoring.restart_events()
    monitoring.use_tool_id(tool, "simq-unwind")
    for code in set(codes):
        monitoring.set_local_events(tool, code, monitoring.events.LINE)

    def undo() -> None:
        for code in set(codes):
            monitoring.set_local_events(tool, code, 0)
        monitoring.free_tool_id(tool)

    return undo


def _works() -> bool:
    """Whether :func:`_unwind` frees a greenlet here without running a line of it."""
    ran: list[str] = []

    class Exit:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc_info: object) -> None:
            ran.append("__exit__")

    def child() -> None:
        try:
            with Exit():
                try:
                    hub.switch()
                finally:
                    ran.append("finally")
        except BaseException:
            ran.append("except")
            hub.switch()
        ran.append("after")

    hub = greenlet.getcurrent()
    glet = greenlet.greenlet(child, parent=hub)
    glet.switch()
    try:
        _unwind(glet)
    except BaseException:  # any failure: keep greenlets instead
        return False
    return glet.dead and not ran


#: simq's own functions that run while a greenlet unwinds; nothing else does.
_ALLOWED: frozenset[CodeType] = frozenset(
    f.__code__ for f in (_ignore_unwind, _clear, _stop, _Stop.__del__, _instrument)
)
