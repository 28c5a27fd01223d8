"""The virtual clock as user code sees it: ``time``, ``datetime`` and ``time.sleep``.

Internal: not a public API. The engine owns one :class:`VirtualTime` per simulation
(ARCHITECTURE.md, decision 2). Between ``start()`` and ``stop()``:

- ``time.time()``, ``time.time_ns()``, ``datetime.datetime.now()``/``now(tz)``/``utcnow()``,
  ``datetime.date.today()`` and the argument-less ``time.gmtime()``, ``time.localtime()``
  and ``time.strftime(fmt)`` give the virtual instant (as of the last ``sync()``).
  time-machine patches these inside the C functions themselves, so references taken
  with ``from time import time`` or ``from datetime import datetime`` before the start
  see it too, and ``datetime.now()`` still returns a real ``datetime``.
- ``time.monotonic()`` is ``now() - monotonic_origin``; ``time.monotonic_ns()`` is the
  same in whole nanoseconds.
- ``time.sleep(d)`` calls the engine's virtual sleep with ``d`` when called from the
  thread that started the simulation; any other thread really sleeps.
- ``time.perf_counter()`` and ``time.process_time()`` stay real: they measure the
  simulator, not the simulated system.

time-machine leaves ``sleep`` and ``monotonic`` alone, so this module rebinds them on
``time`` and in every loaded module that bound the original (``from time import sleep``),
except the packages in ``SKIPPED_ROOTS``, whose clocks must stay real (their calls through
``time.sleep``/``time.monotonic`` get the real functions too). Defaults, closures
and instance attributes that captured an original are not reached. Outside a simulation
a replacement calls the original, so a reference that escapes restoration is harmless.
freezegun's ``stop()`` puts back the clocks it saw at its import; while a simulation is
active those are simq's (``start()`` rebinds freezegun's ``real_monotonic``), so a user's
``freeze_time`` block inside a task ends on the virtual clock.
Why time-machine and not freezegun: ``bench/timepatch.py``, docs/benchmarks.md.
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from _thread import get_ident
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

from simq.exceptions import SimqError

if TYPE_CHECKING:
    import time_machine

__all__ = ["SKIPPED_ROOTS", "VirtualTime"]

SKIPPED_ROOTS: frozenset[str] = frozenset(
    {
        # simq itself, the test runner and the time patchers: their clocks stay real.
        "simq", "_pytest", "pytest", "pluggy", "xdist", "execnet",
        "hypothesis", "_hypothesis_ftz_detector", "_hypothesis_globals",
        "_hypothesis_pytestplugin", "time_machine", "_time_machine", "freezegun",
        # Real waits on locks, selectors and processes need real time.
        "greenlet", "threading", "queue", "asyncio", "concurrent", "selectors",
        "subprocess", "multiprocessing",
        # Patched directly, not through the walk.
        "time",
    }
)  # fmt: skip

_real_sleep = time.sleep
_real_monotonic = time.monotonic
_real_monotonic_ns = time.monotonic_ns
# Anything else in these places at start would hide the virtual clock from user code.
_MUST_BE_ORIGINAL = tuple(
    (module, name, getattr(module, name))
    for module, names in ((time, ("time", "time_ns", "sleep", "monotonic", "monotonic_ns")),
                          (datetime, ("datetime", "date")))
    for name in names
)  # fmt: skip
_NS = 1_000_000_000

_active: VirtualTime | None = None
# Module name -> ((id, len) of its namespace when scanned, names bound to an original).
# Scanning every module costs milliseconds; a namespace that kept its size is reused.
_scan_cache: dict[str, tuple[tuple[int, int], tuple[str, ...]]] = {}


def _to_ns(seconds: float) -> int:
    # Split off the whole seconds first: `round(seconds * 1e9)` loses up to 128 ns at
    # today's timestamps, which makes `time.time()` differ from the engine's clock.
    whole = math.floor(seconds)
    return whole * _NS + round((seconds - whole) * 1e9)


def _caller_root() -> str:
    """Top-level package of the code that called a replacement."""
    try:
        name: str = sys._getframe(2).f_globals.get("__name__") or ""
    except ValueError:  # Called straight from C with no Python frame above.
        return ""
    if name.startswith("simq.examples"):
        return ""  # The bundled example tasks are user code: they sleep in virtual time.
    return name.partition(".")[0]


def virtual_sleep(secs: float, /) -> None:
    """``time.sleep`` during a simulation: waits ``secs`` on the virtual clock."""
    vt = _active
    if vt is None or get_ident() != vt._thread or _caller_root() in SKIPPED_ROOTS:
        _real_sleep(secs)
        return
    if math.isnan(secs):
        raise ValueError("Invalid value NaN (not a number)")
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    vt._sleep(secs)


def virtual_monotonic() -> float:
    """``time.monotonic`` during a simulation: virtual seconds since the monotonic origin."""
    vt = _active
    # asyncio's event loop reads `time.monotonic()` at call time, and with a frozen
    # clock its timers would never fire: skipped packages get the real clock here too.
    if vt is None or _caller_root() in SKIPPED_ROOTS:
        return _real_monotonic()
    return vt._now() - vt._origin


def virtual_monotonic_ns() -> int:
    """``time.monotonic_ns`` during a simulation: ``virtual_monotonic()`` in nanoseconds."""
    vt = _active
    if vt is None or _caller_root() in SKIPPED_ROOTS:
        return _real_monotonic_ns()
    return _to_ns(vt._now()) - vt._origin_ns


_REPLACED = (
    ("sleep", _real_sleep, virtual_sleep),
    ("monotonic", _real_monotonic, virtual_monotonic),
    ("monotonic_ns", _real_monotonic_ns, virtual_monotonic_ns),
)
_FAKE_FOR = {id(real): fake for _, real, fake in _REPLACED}
_REAL_FOR = {id(fake): real for _, real, fake in _REPLACED}
#: Where freezegun keeps the clocks its ``stop()`` restores.
_FREEZEGUN_REALS = ("real_monotonic", "real_monotonic_ns")


def _originals_in(namespace: dict[str, object]) -> tuple[str, ...]:
    s, m, n = _real_sleep, _real_monotonic, _real_monotonic_ns  # Locals: this loop is hot.
    return tuple(k for k, v in namespace.items() if v is s or v is m or v is n)


def _bound_originals() -> list[tuple[dict[str, object], tuple[str, ...]]]:
    """Namespaces of the modules to patch that bound an original, with the names bound."""
    found = []
    for name, module in list(sys.modules.items()):
        if not isinstance(module, ModuleType):
            continue
        try:
            namespace = module.__dict__
        except Exception:  # An exotic module object; it cannot hold a plain binding.
            continue
        key = (id(namespace), len(namespace))
        cached = _scan_cache.get(name)
        if cached is None or cached[0] != key:
            skip = name.partition(".")[0] in SKIPPED_ROOTS
            cached = _scan_cache[name] = (key, () if skip else _originals_in(namespace))
        if cached[1]:
            found.append((namespace, cached[1]))
    return found


def _restore_new_modules(known: set[str]) -> None:
    """Puts the originals back in modules imported during the simulation."""
    for name in sys.modules.keys() - known:
        module = sys.modules.get(name)
        if not isinstance(module, ModuleType) or name.partition(".")[0] in SKIPPED_ROOTS:
            continue
        try:
            namespace = module.__dict__
        except Exception:  # An exotic module object; it cannot hold a plain binding.
            continue
        for attr, value in list(namespace.items()):
            if id(value) in _REAL_FOR:
                namespace[attr] = _REAL_FOR[id(value)]


def _caller() -> str:
    """File and line of the first caller outside simq, to name who started a clock."""
    frame = sys._getframe(1)
    while (
        frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "simq"
    ):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class VirtualTime:
    """Shows user code the engine's virtual clock through ``time`` and ``datetime``.

    Args:
        now: The virtual time, float seconds since the Unix epoch (UTC).
        sleep: The engine's virtual sleep; suspends the calling task fiber.
        monotonic_origin: The virtual time at which ``time.monotonic()`` reads zero.
    """

    __slots__ = (
        "_modules_at_start", "_now", "_origin", "_origin_ns", "_sleep", "_started_at",
        "_thread", "_travel", "_traveller", "_undo",
    )  # fmt: skip

    def __init__(
        self, now: Callable[[], float], sleep: Callable[[float], None], *, monotonic_origin: float
    ) -> None:
        self._now = now
        self._sleep = sleep
        self._origin = monotonic_origin
        self._origin_ns = _to_ns(monotonic_origin)
        self._thread = 0
        self._started_at = ""
        self._travel: time_machine.travel | None = None
        self._traveller: time_machine.Traveller | None = None
        # (namespace, name, original, replacement) for every binding changed.
        self._undo: list[tuple[dict[str, object], str, object, object]] = []
        self._modules_at_start: set[str] = set()

    def __repr__(self) -> str:
        state = f"active, started at {self._started_at}" if self.active else "inactive"
        return f"<VirtualTime {state}>"

    @property
    def active(self) -> bool:
        """Whether this clock is the one user code sees now."""
        return _active is self

    def start(self) -> None:
        """Patches ``time`` and ``datetime`` so user code sees the virtual clock."""
        global _active
        if _active is self:
            raise SimqError(
                f"cannot start virtual time: it is already active (started at"
                f" {self._started_at}); stop() it before starting it again"
            )
        if _active is not None:
            raise SimqError(
                "cannot start virtual time: another simulation's virtual time is active"
                f" (started at {_active._started_at}); one process runs one simulation at a"
                " time, so stop the other simulation first"
            )
        for module, name, original in _MUST_BE_ORIGINAL:
            current = getattr(module, name)
            if current is not original:
                raise SimqError(
                    f"cannot start virtual time: {module.__name__}.{name} is already patched"
                    f" (it is {current!r}); stop that patch (freezegun, mock.patch, ...)"
                    " before starting the simulation, or use it inside the simulation's tasks"
                )
        import time_machine  # Deferred: it imports pytest, and this module must stay cheap.

        if not hasattr(time_machine, "traveller_stack"):
            raise SimqError(
                "cannot start virtual time: simq needs time-machine 3.0 or later;"
                " upgrade it with `pip install 'time-machine>=3'`"
            )
        _active = self
        self._thread = get_ident()
        self._started_at = _caller()
        try:
            self._travel = time_machine.travel(0.0, tick=False)
            self._traveller = self._travel.start()
            self.sync()
            self._modules_at_start = set(sys.modules)
            self._replace(time.__dict__, _originals_in(time.__dict__))
            for namespace, names in _bound_originals():
                self._replace(namespace, names)
            freezegun = sys.modules.get("freezegun.api")
            if freezegun is not None:
                # freezegun's stop() puts back the clocks it saw at import: make those ours,
                # so a user's freeze_time block inside a task ends on the virtual clock.
                self._replace(freezegun.__dict__, _FREEZEGUN_REALS)
        except BaseException:
            self.stop()
            raise

    def _replace(self, namespace: dict[str, object], names: tuple[str, ...]) -> None:
        """Replaces the originals bound to ``names``, recording how to undo it."""
        for name in names:
            original = namespace.get(name)
            fake = _FAKE_FOR.get(id(original))
            if fake is not None:
                namespace[name] = fake
                self._undo.append((namespace, name, original, fake))

    def stop(self) -> None:
        """Restores everything ``start()`` patched; safe to call twice or after a failure."""
        global _active
        try:
            while self._undo:
                namespace, name, original, fake = self._undo.pop()
                # Leave a binding alone if something else replaced ours since.
                if namespace.get(name) is fake:
                    namespace[name] = original
            if self._modules_at_start:
                _restore_new_modules(self._modules_at_start)
                self._modules_at_start = set()
            freezegun = sys.modules.get("freezegun.api")
            if freezegun is not None:
                # Imported during the simulation, it took our clocks for the real ones.
                for name in _FREEZEGUN_REALS:
                    real = _REAL_FOR.get(id(freezegun.__dict__.get(name)))
                    if real is not None:
                        freezegun.__dict__[name] = real
        finally:
            travel, traveller = self._travel, self._traveller
            self._travel = self._traveller = None
            if _active is self:
                _active = None
            if travel is not None and traveller is not None:
                self._stop_travel(travel, traveller)

    @staticmethod
    def _stop_travel(travel: time_machine.travel, traveller: time_machine.Traveller) -> None:
        import time_machine

        stack = time_machine.traveller_stack
        if stack and stack[-1] is traveller:
            travel.stop()
        elif traveller in stack:
            # A user's travel started inside the simulation is still running on top of
            # ours: take only ours out and leave theirs in charge.
            stack.remove(traveller)

    def sync(self) -> None:
        """Shows user code the engine's current virtual time; call after the clock moved."""
        traveller = self._traveller
        if traveller is not None:
            traveller._destination_timestamp_ns = _to_ns(self._now())

    def ensure(self) -> None:
        """Re-installs the replacements a user's patcher put back; cheap when none did."""
        # A patcher's stop() may restore the originals it saw at its start (freezegun's
        # is handled in start(); others are caught here at the next fiber switch).
        if (
            time.monotonic is _real_monotonic
            or time.monotonic_ns is _real_monotonic_ns
            or time.sleep is _real_sleep
        ) and _active is self:
            self._replace(time.__dict__, ("sleep", "monotonic", "monotonic_ns"))
