"""Time patching for the virtual clock: time-machine (simq's VirtualTime) against freezegun.

Run ``python -m bench.timepatch`` for the table, or call :func:`main` for the figures.
Both engines run in one process with pytest, Hypothesis and Celery loaded, as in a real
test session, and each is driven the way the simulation engine drives its clock: start,
move the clock and sync, let user code read the time, stop. The freezegun engine is
``freeze_time(...).start()`` plus ``move_to()`` on every clock move.
"""

from __future__ import annotations

import datetime as dt
import gc
import importlib
import importlib.metadata
import statistics
import sys
import time
import timeit
import types
from collections.abc import Callable
from typing import Any, Protocol

import freezegun

from simq.engine.vtime import VirtualTime

UTC = dt.timezone.utc
T0 = 1_700_000_000.25
ORIGIN = T0 - 100.0
HEAVY_MODULES = (
    "pytest",
    "hypothesis",
    "hypothesis.strategies",
    "hypothesis.stateful",
    "celery",
    "celery.app.task",
    "celery.canvas",
    "celery.result",
    "celery.worker",
    "kombu",
    "kombu.transport.memory",
    "time_machine",
)
USER_CODE = "from time import sleep, monotonic, time\nfrom datetime import datetime\n"
ENGINES = ("time-machine", "freezegun")
ROUNDS = 3
UNPATCHED = (
    ("time.time()", "time.time() (ns/call)"),
    ("dt.datetime.now()", "datetime.now() (ns/call)"),
    ("time.monotonic()", "time.monotonic() (ns/call)"),
)


class Clock:
    """The engine's side: a virtual time and a sleep that records and advances it."""

    def __init__(self) -> None:
        self.t = T0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class Engine(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def sync(self) -> None: ...
    def ensure(self) -> None: ...


class FreezegunEngine:
    """The alternative engine: freezegun frozen at the virtual time, moved on each sync."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._freezer: Any = None
        self._factory: Any = None

    def start(self) -> None:
        self._freezer = freezegun.freeze_time(dt.datetime.fromtimestamp(self.clock.t, UTC))
        self._factory = self._freezer.start()

    def stop(self) -> None:
        if self._freezer is not None:
            self._freezer.stop()
            self._freezer = None

    def sync(self) -> None:
        self._factory.move_to(dt.datetime.fromtimestamp(self.clock.t, UTC))

    def ensure(self) -> None:
        pass


def make(name: str, clock: Clock) -> Engine:
    if name == "time-machine":
        return VirtualTime(clock.now, clock.sleep, monotonic_origin=ORIGIN)
    return FreezegunEngine(clock)


def per_call_ns(stmt: str, namespace: dict[str, Any], number: int = 50_000) -> float:
    """Best of three runs, in nanoseconds per execution of ``stmt``."""
    timer = timeit.Timer(stmt, globals=namespace)
    return min(timer.repeat(repeat=3, number=number)) / number * 1e9


def start_stop_us(name: str, runs: int) -> float:
    """Median cost of one start() plus stop(), in microseconds."""
    samples = []
    for _ in range(runs):
        engine = make(name, Clock())
        began = time.perf_counter()
        engine.start()
        engine.stop()
        samples.append((time.perf_counter() - began) * 1e6)
    return statistics.median(samples)


def call_costs(name: str) -> dict[str, float]:
    """Per-call costs of reading the clock while ``name`` is the engine, and of sync()."""
    clock = Clock()
    engine = make(name, clock)
    namespace = {"time": time, "dt": dt, "clock": clock, "engine": engine}
    engine.start()
    try:
        return {
            "time.time() (ns/call)": per_call_ns("time.time()", namespace),
            "datetime.now() (ns/call)": per_call_ns("dt.datetime.now()", namespace),
            "time.monotonic() (ns/call)": per_call_ns("time.monotonic()", namespace),
            "sync() per clock move (ns)": per_call_ns(
                "clock.t += 0.001; engine.sync()", namespace, number=10_000
            ),
            "ensure() (ns/call)": per_call_ns("engine.ensure()", namespace),
        }
    finally:
        engine.stop()


def check(name: str, case: Callable[[Engine, Clock, types.ModuleType], bool]) -> bool:
    """Runs one correctness case under a started engine; an exception counts as a failure."""
    clock = Clock()
    engine = make(name, clock)
    user = sys.modules["bench_user_code"]
    try:
        engine.start()
        try:
            return case(engine, clock, user)
        finally:
            engine.stop()
    except Exception:
        return False


def _reads(engine: Engine, clock: Clock, user: types.ModuleType) -> bool:
    clock.t += 12.5
    engine.sync()
    now = dt.datetime.now(UTC)
    # By name: freezegun would rebind a module-level reference to the real class.
    real_type = type(dt.datetime.now()).__qualname__ == "datetime"
    return time.time() == clock.t and now.timestamp() == clock.t and real_type


def _from_imports(engine: Engine, clock: Clock, user: types.ModuleType) -> bool:
    clock.t += 12.5
    engine.sync()
    return bool(user.time() == clock.t and user.datetime.now(UTC).timestamp() == clock.t)


def _monotonic(engine: Engine, clock: Clock, user: types.ModuleType) -> bool:
    return bool(time.monotonic() == 100.0 and user.monotonic() == 100.0)


def _sleep(engine: Engine, clock: Clock, user: types.ModuleType) -> bool:
    began = time.perf_counter()
    time.sleep(0.2)
    user.sleep(0.2)
    return clock.sleeps == [0.2, 0.2] and time.perf_counter() - began < 0.1


def _user_freezegun(engine: Engine, clock: Clock, user: types.ModuleType) -> bool:
    with freezegun.freeze_time("2001-01-01"):
        inside = dt.datetime.now().year == 2001
    engine.ensure()
    return inside and time.time() == clock.t and dt.datetime.now(UTC).timestamp() == clock.t


def _user_time_machine(engine: Engine, clock: Clock, user: types.ModuleType) -> bool:
    import time_machine

    with time_machine.travel(dt.datetime(2010, 1, 1, tzinfo=UTC), tick=False):
        inside = dt.datetime.now(UTC).year == 2010
    engine.ensure()
    return inside and time.time() == clock.t


CASES: dict[str, Callable[[Engine, Clock, types.ModuleType], bool]] = {
    "time.time/datetime.now virtual, real datetime type": _reads,
    "from-imports made before start": _from_imports,
    "monotonic = now - origin": _monotonic,
    "time.sleep routed to the engine": _sleep,
    "user's freezegun inside, virtual after": _user_freezegun,
    "user's time_machine inside, virtual after": _user_time_machine,
}


def main() -> dict[str, Any]:
    """Measures both engines side by side and prints the table; returns the figures."""
    for module in HEAVY_MODULES:
        importlib.import_module(module)
    user = types.ModuleType("bench_user_code")
    exec(USER_CODE, user.__dict__)
    sys.modules[user.__name__] = user
    try:
        figures: dict[str, dict[str, Any]] = {}
        # Cold first: each engine's first start in the process fills its module cache.
        for name in ENGINES:
            figures.setdefault("first start+stop (us)", {})[name] = start_stop_us(name, 1)
        gc.collect()
        namespace = {"time": time, "dt": dt}
        # Rounds alternate the engines and keep each figure's best, so that a burst of
        # load from another process on the machine does not land on one engine only.
        for _ in range(ROUNDS):
            for name in ENGINES:
                costs = {"start+stop, repeated (us)": start_stop_us(name, 50)}
                costs.update(call_costs(name))
                for metric, value in costs.items():
                    best = figures.setdefault(metric, {})
                    best[name] = min(value, best.get(name, value))
            for stmt, metric in UNPATCHED:
                value = per_call_ns(stmt, namespace)
                figures[metric]["unpatched"] = min(value, figures[metric].get("unpatched", value))
        correctness = {
            case: {name: check(name, fn) for name in ENGINES} for case, fn in CASES.items()
        }
    finally:
        del sys.modules[user.__name__]
    result = {
        "environment": {
            "python": sys.version.split()[0],
            "time-machine": importlib.metadata.version("time-machine"),
            "freezegun": importlib.metadata.version("freezegun"),
            "modules loaded": len(sys.modules),
        },
        "figures": figures,
        "correctness": correctness,
    }
    print_table(result)
    return result


def print_table(result: dict[str, Any]) -> None:
    env = result["environment"]
    print(", ".join(f"{key} {value}" for key, value in env.items()))
    columns = (*ENGINES, "unpatched")
    print(f"| measure | {' | '.join(columns)} |")
    print(f"| --- | {' | '.join('---:' for _ in columns)} |")
    for metric, values in result["figures"].items():
        cells = [f"{values[c]:,.1f}" if c in values else "" for c in columns]
        print(f"| {metric} | {' | '.join(cells)} |")
    for case, verdicts in result["correctness"].items():
        cells = ["yes" if verdicts[c] else "**no**" for c in ENGINES]
        print(f"| {case} | {' | '.join(cells)} | |")


if __name__ == "__main__":
    main()
