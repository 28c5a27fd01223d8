"""Tests for simq.engine.vtime: the virtual clock as user code sees it."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import freezegun
import pytest
import time_machine

from simq.engine import vtime
from simq.engine.vtime import VirtualTime
from simq.exceptions import SimqError

UTC = dt.timezone.utc
T0 = 1_700_000_000.25  # 2023-11-14 22:13:20.25 UTC, exact in binary
ORIGIN = T0 - 100.0
REAL = {name: getattr(time, name) for name in ("sleep", "monotonic", "monotonic_ns", "time")}
USER_CODE = """
from time import sleep, monotonic, monotonic_ns, time, time_ns
from datetime import datetime, date
"""


class Clock:
    """A stand-in for the engine: a settable virtual time and a sleep that records."""

    def __init__(self) -> None:
        self.t = T0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def real_now() -> float:
    # A new file's modification time comes from the kernel, out of reach of any patch.
    with tempfile.TemporaryFile() as probe:
        return os.fstat(probe.fileno()).st_mtime


def assert_unpatched() -> None:
    for name, original in REAL.items():
        assert getattr(time, name) is original, name
    assert dt.datetime.now().year == dt.datetime.fromtimestamp(real_now()).year
    assert abs(time.time() - real_now()) < 5.0
    assert not time_machine.escape_hatch.is_travelling()
    assert vtime._active is None


@pytest.fixture(autouse=True)
def _no_leak() -> Iterator[None]:
    yield
    assert_unpatched()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def user_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("vtime_user_code")
    exec(USER_CODE, module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


@pytest.fixture
def vt(clock: Clock, user_module: types.ModuleType) -> Iterator[VirtualTime]:
    virtual = VirtualTime(clock.now, clock.sleep, monotonic_origin=ORIGIN)
    virtual.start()
    try:
        yield virtual
    finally:
        virtual.stop()


def test_time_and_datetime_show_virtual_time(vt: VirtualTime) -> None:
    """Every listed time and datetime function returns the virtual instant."""
    assert time.time() == T0
    assert time.time_ns() == 1_700_000_000_250_000_000
    assert time.monotonic() == 100.0
    assert time.monotonic_ns() == 100_000_000_000
    assert dt.datetime.now(UTC) == dt.datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=UTC)
    assert dt.datetime.now() == dt.datetime.fromtimestamp(T0)
    assert type(dt.datetime.now()) is dt.datetime
    assert dt.datetime.utcnow() == dt.datetime(2023, 11, 14, 22, 13, 20, 250_000)
    assert dt.date.today() == dt.date.fromtimestamp(T0)
    assert time.gmtime()[:6] == (2023, 11, 14, 22, 13, 20)
    assert time.localtime() == time.localtime(T0)
    assert time.strftime("%Y-%m-%d %H:%M:%S") == time.strftime(
        "%Y-%m-%d %H:%M:%S", time.localtime(T0)
    )


def test_from_imports_made_before_start_show_virtual_time(
    vt: VirtualTime, user_module: types.ModuleType
) -> None:
    """Names bound with `from time import ...` before the start read the virtual clock."""
    assert user_module.time() == T0
    assert user_module.time_ns() == 1_700_000_000_250_000_000
    assert user_module.monotonic() == 100.0
    assert user_module.monotonic_ns() == 100_000_000_000
    assert user_module.datetime.now(UTC).timestamp() == T0
    assert user_module.date.today() == dt.date.fromtimestamp(T0)


def test_sync_shows_the_moved_clock(
    vt: VirtualTime, clock: Clock, user_module: types.ModuleType
) -> None:
    """After the engine's clock moves, sync() makes every reader show the new time."""
    clock.t += 12.5
    vt.sync()
    assert time.time() == T0 + 12.5
    assert user_module.time() == T0 + 12.5
    assert dt.datetime.now(UTC) == dt.datetime(2023, 11, 14, 22, 13, 32, 750_000, tzinfo=UTC)
    assert time.monotonic() == 112.5
    assert user_module.monotonic_ns() == 112_500_000_000


def test_sleep_calls_the_engine_sleep(
    vt: VirtualTime, clock: Clock, user_module: types.ModuleType
) -> None:
    """time.sleep and a `from time import sleep` made before the start call the engine."""
    time.sleep(2.5)
    user_module.sleep(0.5)
    time.sleep(0)
    assert clock.sleeps == [2.5, 0.5, 0]


def test_sleep_rejects_what_the_real_sleep_rejects(vt: VirtualTime, clock: Clock) -> None:
    """A negative or NaN sleep raises the real sleep's ValueError and calls no engine."""
    with pytest.raises(ValueError, match=r"^sleep length must be non-negative$"):
        time.sleep(-1)
    with pytest.raises(ValueError, match=r"^Invalid value NaN \(not a number\)$"):
        time.sleep(float("nan"))
    assert clock.sleeps == []


def test_sleep_in_another_thread_is_real(vt: VirtualTime, clock: Clock) -> None:
    """A thread other than the simulation's sleeps for real, not on the virtual clock."""
    worker = threading.Thread(target=time.sleep, args=(0.001,))
    worker.start()
    worker.join()
    assert clock.sleeps == []


def test_nothing_is_patched_before_start_or_after_stop(
    clock: Clock, user_module: types.ModuleType
) -> None:
    """Creating a VirtualTime patches nothing and stop() restores every original."""
    virtual = VirtualTime(clock.now, clock.sleep, monotonic_origin=ORIGIN)
    assert_unpatched()
    assert not virtual.active
    virtual.start()
    assert virtual.active
    assert user_module.sleep is not REAL["sleep"]
    virtual.stop()
    assert_unpatched()
    assert user_module.sleep is REAL["sleep"]
    assert user_module.monotonic is REAL["monotonic"]
    assert not virtual.active
    virtual.stop()
    assert_unpatched()


def test_a_stopped_clock_starts_again(clock: Clock, user_module: types.ModuleType) -> None:
    """A VirtualTime restarted after stop() patches the same names again."""
    virtual = VirtualTime(clock.now, clock.sleep, monotonic_origin=ORIGIN)
    for _ in range(2):
        virtual.start()
        assert (time.time(), user_module.monotonic()) == (T0, 100.0)
        virtual.stop()
        assert user_module.monotonic is REAL["monotonic"]


def test_stop_after_an_exception_restores_everything(clock: Clock) -> None:
    """stop() in a finally block after user code raised leaves no patch behind."""
    virtual = VirtualTime(clock.now, clock.sleep, monotonic_origin=ORIGIN)
    with pytest.raises(ZeroDivisionError):
        virtual.start()
        try:
            _ = 1 / 0
        finally:
            virtual.stop()
    assert_unpatched()


def test_start_failing_halfway_restores_everything(
    clock: Clock, user_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt in the middle of start() leaves nothing patched and start() usable."""

    class Interrupting(types.ModuleType):
        @property
        def __dict__(self) -> dict[str, object]:  # type: ignore[override]
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "vtime_interrupting", Interrupting("vtime_interrupting"))
    virtual = VirtualTime(clock.now, clock.sleep, monotonic_origin=ORIGIN)
    with pytest.raises(KeyboardInterrupt):
        virtual.start()
    assert_unpatched()
    assert user_module.sleep is REAL["sleep"]
    virtual.stop()
    assert_unpatched()


def test_importing_vtime_patches_nothing() -> None:
    """Importing simq.engine.vtime in a fresh interpreter patches and imports no patcher."""
    code = (
        "import sys, time, datetime\n"
        "before = (time.sleep, time.monotonic, time.time, datetime.datetime)\n"
        "import simq.engine.vtime\n"
        "assert before == (time.sleep, time.monotonic, time.time, datetime.datetime)\n"
        "assert '_time_machine' not in sys.modules and 'freezegun' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_a_second_simulation_cannot_start(vt: VirtualTime, clock: Clock) -> None:
    """Starting a second clock while one is active raises SimqError naming the first."""
    other = VirtualTime(clock.now, clock.sleep, monotonic_origin=0.0)
    message = (
        r"^cannot start virtual time: another simulation's virtual time is active"
        r" \(started at .*test_vtime\.py:\d+\); one process runs one simulation at a time,"
        r" so stop the other simulation first$"
    )
    with pytest.raises(SimqError, match=message):
        other.start()
    again = (
        r"^cannot start virtual time: it is already active \(started at .*test_vtime\.py:\d+\);"
        r" stop\(\) it before starting it again$"
    )
    with pytest.raises(SimqError, match=again):
        vt.start()
    assert vt.active and not other.active
    assert time.monotonic() == 100.0


def test_start_refuses_a_clock_already_patched(clock: Clock) -> None:
    """A freezegun freeze already running when the simulation starts raises SimqError."""
    virtual = VirtualTime(clock.now, clock.sleep, monotonic_origin=ORIGIN)
    message = (
        r"^cannot start virtual time: time\.time is already patched \(it is <function fake_time"
        r" at 0x[0-9a-f]+>\); stop that patch \(freezegun, mock\.patch, \.\.\.\) before starting"
        r" the simulation, or use it inside the simulation's tasks$"
    )
    with freezegun.freeze_time("2001-01-01"), pytest.raises(SimqError, match=message):
        virtual.start()
    assert not virtual.active


def test_user_freezegun_inside_the_simulation(
    vt: VirtualTime, clock: Clock, user_module: types.ModuleType
) -> None:
    """A user's freeze_time shows its date inside its block and virtual time after it."""
    with freezegun.freeze_time("2001-01-01"):
        assert dt.datetime.now() == dt.datetime(2001, 1, 1)
        assert dt.date.today() == dt.date(2001, 1, 1)
        assert time.time() == 978_307_200.0
    vt.ensure()
    assert time.time() == T0
    assert dt.datetime.now(UTC).timestamp() == T0
    assert (time.monotonic(), time.monotonic_ns()) == (100.0, 100_000_000_000)
    assert user_module.monotonic() == 100.0
    time.sleep(1.0)
    assert clock.sleeps == [1.0]


def test_user_time_machine_inside_the_simulation(vt: VirtualTime) -> None:
    """A user's time_machine.travel shows its date inside its block and virtual time after."""
    with time_machine.travel(dt.datetime(2010, 1, 1, tzinfo=UTC), tick=False):
        assert time.time() == 1_262_304_000.0
        assert dt.datetime.now(UTC) == dt.datetime(2010, 1, 1, tzinfo=UTC)
    vt.ensure()
    assert time.time() == T0
    assert dt.datetime.now(UTC).timestamp() == T0


def test_user_time_machine_around_the_simulation(clock: Clock) -> None:
    """A simulation inside a user's time_machine.travel hands the user's time back at stop."""
    virtual = VirtualTime(clock.now, clock.sleep, monotonic_origin=ORIGIN)
    with time_machine.travel(dt.datetime(2010, 1, 1, tzinfo=UTC), tick=False):
        virtual.start()
        assert time.time() == T0
        virtual.stop()
        assert time.time() == 1_262_304_000.0


def test_skipped_modules_keep_the_real_clock(vt: VirtualTime) -> None:
    """Thread machinery's own `from time import monotonic` stays the real function."""
    assert threading._time is REAL["monotonic"]  # type: ignore[attr-defined]


def test_skipped_packages_calling_through_the_time_module_get_the_real_clock(
    vt: VirtualTime, clock: Clock
) -> None:
    """Code in a skipped package that calls time.sleep or time.monotonic gets real time."""
    namespace: dict[str, object] = {"__name__": "queue.vtime_probe"}
    exec("import time\ndef nap():\n    time.sleep(0)\n    return time.monotonic()", namespace)
    nap = namespace["nap"]
    assert callable(nap)
    before = nap()
    REAL["sleep"](0.002)
    assert nap() > before  # The virtual clock stands still here; only real time moved.
    assert clock.sleeps == []
    assert time.monotonic() == 100.0


def test_asyncio_timers_fire_inside_the_simulation(vt: VirtualTime) -> None:
    """asyncio's event loop keeps the real clock, so asyncio.sleep() returns."""
    loop = asyncio.new_event_loop()
    try:
        before = loop.time()
        REAL["sleep"](0.002)
        assert loop.time() > before  # Checked first: with a frozen clock the sleep would hang.
        loop.run_until_complete(asyncio.sleep(0.001))
    finally:
        loop.close()
    assert time.monotonic() == 100.0


def test_modules_imported_during_the_simulation_are_restored(
    vt: VirtualTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that bound `sleep` while the simulation ran holds the real one after stop."""
    module = types.ModuleType("vtime_late_import")
    exec(USER_CODE, module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert module.sleep is not REAL["sleep"]
    vt.stop()
    assert module.sleep is REAL["sleep"]
    assert module.monotonic_ns is REAL["monotonic_ns"]


def test_no_thread_and_no_global_random(
    clock: Clock, user_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole start-use-stop cycle starts no thread and leaves global random untouched."""
    started: list[object] = []
    monkeypatch.setattr(threading, "_start_new_thread", lambda *args: started.append(args))
    state = random.getstate()
    virtual = VirtualTime(clock.now, clock.sleep, monotonic_origin=ORIGIN)
    virtual.start()
    for _ in range(3):
        time.sleep(1.0)
        virtual.sync()
        virtual.ensure()
        _ = (time.time(), time.monotonic(), dt.datetime.now(), user_module.monotonic_ns())
    virtual.stop()
    assert started == []
    assert random.getstate() == state
    assert clock.sleeps == [1.0, 1.0, 1.0]
