"""Ctrl-C during a simulation: tells a real SIGINT apart from a task's own KeyboardInterrupt.

Internal. A task body runs in the test's own process, so a Ctrl-C that lands while it
runs raises KeyboardInterrupt inside the task. A prefork child ignores SIGINT (billiard's
``after_fork`` sets it to SIG_IGN), so there a KeyboardInterrupt can only be the task's own
``raise``, which the pool reports as a dead child. A simulation therefore marks the
KeyboardInterrupt that a signal raises (:class:`SigintHandler`), and the pool lets a
marked one through: the run stops and the user's ``get()``/``run()`` raises it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["SigintHandler", "from_signal"]

_MARK = "_simq_from_signal"


def from_signal(exc: BaseException) -> bool:
    """Whether ``exc`` is the KeyboardInterrupt of a real SIGINT during a simulation."""
    return isinstance(exc, KeyboardInterrupt) and getattr(exc, _MARK, False)


class SigintHandler:
    """Python's own SIGINT behaviour, with the KeyboardInterrupt marked as a signal's.

    :meth:`install` takes over only from Python's default handler, and only in the main
    thread (the one place Python runs signal handlers); a handler the user installed
    stays in charge. :meth:`restore` puts the default back, and is safe to call twice.
    """

    __slots__ = ("_installed",)

    def __init__(self) -> None:
        self._installed = False

    def install(self) -> None:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            signal.signal(signal.SIGINT, _handle)
            self._installed = True

    def restore(self) -> None:
        if self._installed:
            self._installed = False
            if signal.getsignal(signal.SIGINT) is _handle:
                signal.signal(signal.SIGINT, signal.default_int_handler)

    @property
    def installed(self) -> bool:
        return self._installed


def _handle(signum: int, frame: FrameType | None) -> None:
    exc = KeyboardInterrupt()
    setattr(exc, _MARK, True)
    raise exc
