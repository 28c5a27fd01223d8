"""A catalogue of misuses a hostile user would try, each with the error it must raise.

Every case names the exception expected and the words its message must contain (the
parameter, the value, or the fix). One parametrized test runs each case on a fresh app
and simulation and checks that the error is clear: the expected type, the words, raised
at the call with nothing recorded by the refused call, and the simulation still usable
afterwards (a next task succeeds) unless the misuse was the construction itself.

Cases marked ``celery=True`` are refused by Celery's own calling code, exactly as on a
real broker (``tests/unit/test_validation.py`` checks they are the very exceptions Celery
raises outside simq). Their messages are Celery's, and some name no parameter; on Python
3.11+ simq adds a note naming the option (``simq/seams/calling.py``), and the words are
looked for in the message and its notes. Before 3.11 those count as unclear in
:func:`tally`, which keeps the score honest.

Run ``python tests/unit/test_misuse_catalogue.py`` to print the tally.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import celery
import pytest
from celery.exceptions import InvalidTaskError, NotRegistered
from kombu.exceptions import EncodeError

import simq
from simq.exceptions import InvalidArgument, SimqError, UnknownTarget

UTC = dt.timezone.utc


def make_app(**settings: Any) -> celery.Celery:
    """A fresh app with three tasks: add, a 10-second slow one and one that naps."""
    app = simq.App("shop", **settings)

    @app.task(shared=False, name="shop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, name="shop.slow")
    def slow() -> str:
        time.sleep(10)
        return "done"

    @app.task(shared=False, name="shop.nap")
    def nap(seconds: Any) -> Any:
        time.sleep(seconds)
        return seconds

    return app


@attrs.define
class Ctx:
    """What a case's action sees: the simulation, the app and its tasks."""

    sim: simq.Simulation
    app: celery.Celery
    running: str = ""  # the id of a task running when the misuse happens
    result: Any = None  # an AsyncResult the setup made

    def task(self, name: str) -> Any:
        return self.app.tasks[f"shop.{name}"]

    def start_slow(self) -> None:
        """Have shop.slow running on worker-1 (its child busy for 10 s)."""
        result = self.task("slow").delay()
        self.sim.advance(1)
        self.running = result.id


@attrs.frozen
class Misuse:
    """One misuse and what it must raise.

    Attributes:
        name: A short id.
        act: Performs the misuse on a fresh simulation (``construct``: builds it).
        error: The exception type expected.
        says: Words the message must contain: the parameter, the value or the fix.
        options: Simulation keyword arguments; settings: the app's settings.
        setup: Runs before the misuse (its events do not count as the misuse's).
        construct: The misuse is building the simulation or the app itself.
        deferred: The error comes from a later get() (the call itself is accepted, as on a
            real broker), so events may be recorded.
        celery: Refused by Celery's own code, exactly as on a real broker.
    """

    name: str
    act: Callable[[Ctx], Any]
    error: type[BaseException]
    says: tuple[str, ...]
    options: dict[str, Any] = attrs.field(factory=dict)
    settings: dict[str, Any] = attrs.field(factory=dict)
    setup: Callable[[Ctx], Any] | None = None
    construct: bool = False
    deferred: bool = False
    celery: bool = False


def _build(**options: Any) -> Callable[[Ctx], Any]:
    def act(ctx: Ctx) -> Any:
        return simq.Simulation(ctx.app, **options)

    return act


def _apply(**options: Any) -> Callable[[Ctx], Any]:
    def act(ctx: Ctx) -> Any:
        return ctx.task("add").apply_async((1, 2), **options)

    return act


def _at(**kwargs: Any) -> Callable[[Ctx], Any]:
    def act(ctx: Ctx) -> Any:
        return ctx.sim.crash_worker("worker-1", **kwargs)

    return act


PAST = dt.datetime(2029, 12, 31, tzinfo=UTC)
NAIVE = dt.datetime(2030, 1, 2)
NOT_NUMBER = "must be a number of seconds"

CATALOGUE: list[Misuse] = [
    # -- Simulation() and simq.App() ---------------------------------------------------
    Misuse("sim-app-str", lambda c: simq.Simulation("shop"), TypeError,
           ("celery.Celery app", "'shop'"), construct=True),
    Misuse("sim-seed-str", _build(seed="7"), InvalidArgument, ("seed", "'7'"), construct=True),
    Misuse("sim-seed-float", _build(seed=1.5), InvalidArgument, ("seed", "1.5"), construct=True),
    Misuse("sim-workers-str", _build(workers="2"), InvalidArgument, ("workers", "workers=2"),
           construct=True),
    Misuse("sim-workers-negative", _build(workers=-1), InvalidArgument, ("workers", "-1"),
           construct=True),
    Misuse("sim-workers-float", _build(workers=2.0), InvalidArgument, ("workers", "workers=2"),
           construct=True),
    Misuse("sim-concurrency-zero", _build(concurrency=0), InvalidArgument,
           ("concurrency", ">= 1", "0"), construct=True),
    Misuse("sim-concurrency-str", _build(concurrency="4"), InvalidArgument,
           ("concurrency", "'4'"), construct=True),
    Misuse("sim-prefetch-float", _build(prefetch_multiplier=1.5), InvalidArgument,
           ("prefetch_multiplier", "1.5"), construct=True),
    Misuse("sim-prefetch-negative", _build(prefetch_multiplier=-2), InvalidArgument,
           ("prefetch_multiplier", "-2"), construct=True),
    Misuse("sim-start-str", _build(start="2030-01-01"), InvalidArgument,
           ("start", "timezone-aware datetime", "'2030-01-01'"), construct=True),
    Misuse("sim-start-naive", _build(start=dt.datetime(2030, 1, 1)), InvalidArgument,
           ("start", "tzinfo=datetime.timezone.utc"), construct=True),
    Misuse("sim-transport-unknown", _build(transport="rabbitmq"), SimqError,
           ("unknown transport 'rabbitmq'", "amqp, redis, sqs"), construct=True),
    Misuse("sim-transport-int", _build(transport=5), SimqError,
           ("unknown transport 5", "amqp, redis, sqs"), construct=True),
    Misuse("sim-unknown-keyword", _build(worker=2), TypeError, ("'worker'",), construct=True),
    Misuse("sim-positional-seed", lambda c: simq.Simulation(c.app, 7), TypeError,
           ("positional",), construct=True),
    Misuse("durations-nan", _build(durations={"shop.add": math.nan}), InvalidArgument,
           ("durations['shop.add']", "nan"), construct=True),
    Misuse("durations-inf", _build(durations={"shop.add": math.inf}), InvalidArgument,
           ("durations['shop.add']", "inf"), construct=True),
    Misuse("durations-negative", _build(durations={"shop.add": -1}), InvalidArgument,
           ("durations['shop.add']", "-1"), construct=True),
    Misuse("durations-str", _build(durations={"shop.add": "5"}), InvalidArgument,
           ("durations['shop.add']", "'5'"), construct=True),
    Misuse("durations-unknown-key", _build(durations={"shop.ad": 1}), InvalidArgument,
           ("durations['shop.ad']", "did you mean 'shop.add'?"), construct=True),
    Misuse("durations-function-key", _build(durations={print: 1}), InvalidArgument,
           ("durations[<built-in function print>]", "task name"), construct=True),
    Misuse("durations-list", _build(durations=[("shop.add", 1)]), InvalidArgument,
           ("durations", "dict"), construct=True),
    Misuse("conf-time-limit-str", _build(), InvalidArgument,
           ("app.conf.task_time_limit", "'10'"), settings={"task_time_limit": "10"},
           construct=True),
    Misuse("conf-max-priority-str", _build(), InvalidArgument,
           ("app.conf.task_queue_max_priority", "'high'"),
           settings={"task_queue_max_priority": "high"}, construct=True),
    Misuse("conf-prefetch-str", _build(), InvalidArgument,
           ("app.conf.worker_prefetch_multiplier", "'x'"),
           settings={"worker_prefetch_multiplier": "x"}, construct=True),
    Misuse("conf-transport-options", _build(), InvalidArgument,
           ("app.conf.broker_transport_options", "5"),
           settings={"broker_transport_options": 5}, construct=True),
    Misuse("conf-visibility-timeout-str", _build(transport="redis"), InvalidArgument,
           ("visibility_timeout", "'soon'"),
           settings={"broker_transport_options": {"visibility_timeout": "soon"}},
           construct=True),
    Misuse("conf-always-eager", lambda c: simq.Simulation(c.app).start(), SimqError,
           ("task_always_eager=True", "set app.conf.task_always_eager = False"),
           settings={"task_always_eager": True}, construct=True),
    Misuse("conf-rate-limit-bad", _build(), SimqError,
           ("rate_limit 'fast'", "'10/s'"), construct=True,
           setup=lambda c: setattr(c.task("add"), "rate_limit", "fast")),
    Misuse("app-main-int", lambda c: simq.App(5), InvalidArgument, ("main", "5"),
           construct=True),
    # -- add_worker ----------------------------------------------------------------------
    Misuse("worker-name-int", lambda c: c.sim.add_worker(name=7), InvalidArgument, ("name", "7")),
    Misuse("worker-name-empty", lambda c: c.sim.add_worker(name=""), InvalidArgument,
           ("name", "''")),
    Misuse("worker-name-taken", lambda c: c.sim.add_worker(name="worker-1"), SimqError,
           ("'worker-1' already exists", "pick another name")),
    Misuse("worker-concurrency-zero", lambda c: c.sim.add_worker(concurrency=0),
           InvalidArgument, ("concurrency", "0")),
    Misuse("worker-concurrency-str", lambda c: c.sim.add_worker(concurrency="2"),
           InvalidArgument, ("concurrency", "concurrency=2")),
    Misuse("worker-queues-str", lambda c: c.sim.add_worker(queues="celery"), InvalidArgument,
           ("queues", "queues=['celery']")),
    Misuse("worker-queues-empty", lambda c: c.sim.add_worker(queues=[]), InvalidArgument,
           ("queues", "non-empty", "[]")),
    Misuse("worker-queues-int", lambda c: c.sim.add_worker(queues=[5]), InvalidArgument,
           ("queues", "[5]")),
    Misuse("worker-prefetch-float", lambda c: c.sim.add_worker(prefetch_multiplier=1.5),
           InvalidArgument, ("prefetch_multiplier", "1.5")),
    Misuse("worker-unknown", lambda c: c.sim.worker("w9"), UnknownTarget,
           ("'w9'", "'worker-1'")),
    # -- faults --------------------------------------------------------------------------
    Misuse("crash-unknown-worker", lambda c: c.sim.crash_worker("w9"), UnknownTarget,
           ("no worker named 'w9'", "'worker-1'")),
    Misuse("crash-restart-str", _at(restart_after="5"), InvalidArgument,
           ("restart_after", "restart_after=5")),
    Misuse("crash-restart-negative", _at(restart_after=-5), InvalidArgument,
           ("restart_after", "-5")),
    Misuse("crash-restart-inf", _at(restart_after=math.inf), InvalidArgument,
           ("restart_after", "restart_after=None")),
    Misuse("crash-restart-nan", _at(restart_after=math.nan), InvalidArgument,
           ("restart_after", "nan")),
    Misuse("at-inf", _at(at=math.inf), InvalidArgument, ("at", "inf")),
    Misuse("at-nan", _at(at=math.nan), InvalidArgument, ("at", "nan")),
    Misuse("at-negative", _at(at=-5), InvalidArgument, ("at", "-5")),
    Misuse("at-str", _at(at="5"), InvalidArgument, ("at", "at=5")),
    Misuse("at-bool", _at(at=True), InvalidArgument, ("at", "True")),
    Misuse("at-naive", _at(at=NAIVE), InvalidArgument, ("at", "tzinfo=datetime.timezone.utc")),
    Misuse("at-past", _at(at=PAST), InvalidArgument, ("at=2029-12-31", "in the past")),
    Misuse("at-beyond-year-9999", _at(at=1e13), InvalidArgument, ("at=", "year 9999")),
    Misuse("kill-exitcode-str", lambda c: c.sim.kill_child(c.running, exitcode="x"),
           InvalidArgument, ("exitcode", "'x'", "-9 is SIGKILL"), setup=Ctx.start_slow),
    Misuse("kill-exitcode-huge", lambda c: c.sim.kill_child(c.running, exitcode=1000),
           InvalidArgument, ("exitcode", "1000"), setup=Ctx.start_slow),
    Misuse("kill-exitcode-bool", lambda c: c.sim.kill_child(c.running, exitcode=True),
           InvalidArgument, ("exitcode", "True"), setup=Ctx.start_slow),
    Misuse("kill-task-id-int", lambda c: c.sim.kill_child(123), InvalidArgument,
           ("task_id", "123")),
    Misuse("kill-not-running", lambda c: c.sim.kill_child("t-none"), UnknownTarget,
           ("'t-none'", "running now")),
    Misuse("connection-reconnect-str",
           lambda c: c.sim.lose_connection("worker-1", reconnect_after="3"), InvalidArgument,
           ("reconnect_after", "reconnect_after=3")),
    Misuse("connection-reconnect-negative",
           lambda c: c.sim.lose_connection("worker-1", reconnect_after=-1), InvalidArgument,
           ("reconnect_after", "-1")),
    Misuse("connection-unknown-worker", lambda c: c.sim.lose_connection("w2"), UnknownTarget,
           ("'w2'",)),
    Misuse("broker-down-for-str", lambda c: c.sim.restart_broker(down_for="3"),
           InvalidArgument, ("down_for", "down_for=3")),
    Misuse("broker-down-for-negative", lambda c: c.sim.restart_broker(down_for=-3),
           InvalidArgument, ("down_for", "-3")),
    Misuse("broker-down-for-nan", lambda c: c.sim.restart_broker(down_for=math.nan),
           InvalidArgument, ("down_for", "nan")),
    Misuse("shutdown-warm-str", lambda c: c.sim.shutdown_worker("worker-1", warm="no"),
           InvalidArgument, ("warm", "'no'", "True or False")),
    Misuse("shutdown-warm-int", lambda c: c.sim.shutdown_worker("worker-1", warm=0),
           InvalidArgument, ("warm", "0")),
    Misuse("shutdown-unknown-worker", lambda c: c.sim.shutdown_worker("w2"), UnknownTarget,
           ("'w2'",)),
    # -- revoke --------------------------------------------------------------------------
    Misuse("revoke-int", lambda c: c.sim.revoke(123), InvalidArgument,
           ("task_id", "123", "result.id")),
    Misuse("revoke-result-object", lambda c: c.sim.revoke(c.result), InvalidArgument,
           ("task_id", "AsyncResult", "result.id"),
           setup=lambda c: setattr(c, "result", c.task("add").delay(1, 2))),
    Misuse("revoke-list-with-int", lambda c: c.sim.revoke(["t1", 5]), InvalidArgument,
           ("task_id", "5")),
    Misuse("revoke-terminate-str", lambda c: c.sim.revoke("t1", terminate="yes"),
           InvalidArgument, ("terminate", "'yes'")),
    Misuse("revoke-signal-unknown", lambda c: c.sim.revoke("t1", terminate=True, signal="KIL"),
           InvalidArgument, ("signal", "'KIL'", "did you mean 'KILL'?")),
    Misuse("revoke-at-negative", lambda c: c.sim.revoke("t1", at=-1), InvalidArgument,
           ("at", "-1")),
    Misuse("revoke-signal-bool", lambda c: c.sim.revoke("t1", signal=True), InvalidArgument,
           ("signal", "True")),
    Misuse("control-revoke-int", lambda c: c.app.control.revoke(123), InvalidArgument,
           ("app.control.revoke()", "123", "result.id")),
    # -- time ----------------------------------------------------------------------------
    Misuse("advance-inf", lambda c: c.sim.advance(math.inf), InvalidArgument,
           ("advance()", "inf")),
    Misuse("advance-nan", lambda c: c.sim.advance(math.nan), InvalidArgument,
           ("advance()", "nan")),
    Misuse("advance-str", lambda c: c.sim.advance("5"), InvalidArgument,
           ("advance()", "'5'")),
    Misuse("advance-negative", lambda c: c.sim.advance(-1), InvalidArgument,
           ("advance()", "-1")),
    Misuse("advance-beyond-year-9999", lambda c: c.sim.advance(3e11), InvalidArgument,
           ("advance()", "year 9999")),
    Misuse("run-until-number", lambda c: c.sim.run(until=5), InvalidArgument,
           ("until", "sim.advance(5)")),
    Misuse("run-until-naive", lambda c: c.sim.run(until=NAIVE), InvalidArgument,
           ("until", "tzinfo=datetime.timezone.utc")),
    Misuse("run-until-str", lambda c: c.sim.run(until="2030-01-02"), InvalidArgument,
           ("until", "'2030-01-02'")),
    # -- results -------------------------------------------------------------------------
    Misuse("get-timeout-nan", lambda c: c.task("add").delay(1, 2).get(timeout=math.nan),
           InvalidArgument, ("timeout", "nan"), deferred=True),
    Misuse("get-timeout-str", lambda c: c.task("add").delay(1, 2).get(timeout="5"),
           InvalidArgument, ("timeout", "timeout=5"), deferred=True),
    Misuse("get-unknown-task-name", lambda c: c.app.send_task("shop.nope").get(timeout=10),
           NotRegistered, ("shop.nope",), deferred=True),
    Misuse("durations-draw-nan", lambda c: c.task("slow").delay().get(timeout=60),
           InvalidArgument, ("durations['shop.slow']", "nan"),
           options={"durations": {"shop.slow": lambda rng: math.nan}}, deferred=True),
    # -- apply_async options -------------------------------------------------------------
    Misuse("priority-str-amqp", _apply(priority="high"), struct.error,
           ("priority", "'high'", "0 to 255")),
    Misuse("priority-str-amqp-max", _apply(priority="high"), struct.error,
           ("priority", "'high'"), settings={"task_queue_max_priority": 10}),
    Misuse("priority-too-big-amqp", _apply(priority=300), struct.error, ("priority", "300")),
    Misuse("priority-negative-amqp", _apply(priority=-1), struct.error, ("priority", "-1")),
    Misuse("priority-float-amqp", _apply(priority=1.5), struct.error, ("priority", "1.5")),
    Misuse("time-limit-str", _apply(time_limit="10"), InvalidArgument,
           ("time_limit", "time_limit=10")),
    Misuse("soft-time-limit-str", _apply(soft_time_limit="10"), InvalidArgument,
           ("soft_time_limit", "soft_time_limit=10")),
    Misuse("time-limit-negative", _apply(time_limit=-1), InvalidArgument,
           ("time_limit", "-1")),
    Misuse("time-limit-nan", _apply(time_limit=math.nan), InvalidArgument,
           ("time_limit", "nan")),
    Misuse("time-limit-task-attribute", lambda c: c.task("slow").delay(), InvalidArgument,
           ("time_limit", "'10'", "the task's time_limit attribute"),
           setup=lambda c: setattr(c.task("slow"), "time_limit", "10")),
    Misuse("task-id-int", _apply(task_id=5), InvalidArgument, ("task_id", "5")),
    Misuse("retries-str", _apply(retries="x"), InvalidArgument, ("retries", "'x'")),
    Misuse("eta-str", _apply(eta="tomorrow"), InvalidTaskError,
           ("invalid ETA value 'tomorrow'", "pass eta= a datetime")),
    Misuse("soft-above-hard", lambda c: c.task("slow").delay(), ValueError,
           ("soft_time_limit", "time_limit"), celery=True,
           setup=lambda c: c.task("slow").__dict__.update(time_limit=1, soft_time_limit=5)),
    Misuse("args-not-a-list", lambda c: c.task("add").apply_async(5), TypeError,
           ("argument after *",), celery=True),
    Misuse("too-few-arguments", lambda c: c.task("add").delay(1), TypeError,
           ("missing 1 required positional argument: 'y'",), celery=True),
    Misuse("unserializable-argument", lambda c: c.task("add").delay(object(), 1), EncodeError,
           ("not JSON serializable",), celery=True),
    Misuse("link-print", _apply(link=print), EncodeError, ("not JSON serializable",),
           celery=True),
    Misuse("serializer-unknown", _apply(serializer="nope"), Exception, ("nope",), celery=True),
    Misuse("countdown-str", _apply(countdown="soon"), TypeError, ("countdown",), celery=True),
    Misuse("countdown-nan", _apply(countdown=math.nan), ValueError, ("countdown",),
           celery=True),
    Misuse("countdown-huge", _apply(countdown=1e15), OverflowError, ("countdown",),
           celery=True),
    Misuse("expires-str", _apply(expires="soon"), ValueError, ("expires",), celery=True),
    Misuse("headers-str", _apply(headers="x"), ValueError, ("headers",), celery=True),
    Misuse("eta-number", _apply(eta=5), AttributeError, ("eta",), celery=True),
    Misuse("queue-int", _apply(queue=5), AttributeError, ("queue",), celery=True),
    # -- history -------------------------------------------------------------------------
    Misuse("where-kind-typo", lambda c: c.sim.history.where(kind="strated"), InvalidArgument,
           ("'strated'", "did you mean 'started'?")),
    Misuse("where-kind-list-typo",
           lambda c: c.sim.history.where(kind=["published", "acked", "lots"]),
           InvalidArgument, ("'lots'", "did you mean 'lost'?")),
    Misuse("where-key-typo", lambda c: c.sim.history.where(taskid="x"), InvalidArgument,
           ("'taskid'", "did you mean 'task_id'?")),
    Misuse("where-detail-typo", lambda c: c.sim.history.where(kind="lost", reson="expired"),
           InvalidArgument, ("'reson'", "did you mean 'reason'?")),
    Misuse("where-kind-int", lambda c: c.sim.history.where(kind=5), InvalidArgument,
           ("5", "not an event kind")),
    # -- checks --------------------------------------------------------------------------
    Misuse("check-unknown-option", lambda c: c.sim.check(transprt="redis"), TypeError,
           ("'transprt'",)),
]  # fmt: skip


@attrs.frozen
class Outcome:
    """What one case did."""

    case: Misuse
    error: BaseException | None
    recorded: tuple[str, ...] = ()  # event kinds the refused call recorded
    usable: bool = True  # a next task still succeeded

    @property
    def clear(self) -> bool:
        """Raised the expected type, with the words, at the call, and left things usable."""
        case, error = self.case, self.error
        return (
            isinstance(error, case.error)
            and all(word in _words(error) for word in case.says)
            and (case.deferred or not self.recorded)
            and self.usable
        )


def _words(error: BaseException | None) -> str:
    """The message and its notes: simq adds a note naming the option to Celery's own
    calling errors (Python 3.11+), leaving Celery's message as it is."""
    return "\n".join([str(error), *getattr(error, "__notes__", ())])


def attempt(case: Misuse) -> Outcome:
    """Run ``case`` on a fresh app and simulation."""
    if case.construct:
        try:
            app = make_app(**case.settings)
            ctx = Ctx(sim=None, app=app)  # type: ignore[arg-type]
            if case.setup is not None:
                case.setup(ctx)
            built = case.act(ctx)
        except BaseException as exc:  # every misuse's error is the result
            return Outcome(case, exc)
        if isinstance(built, simq.Simulation):
            built.close()
        return Outcome(case, None)
    app = make_app(**case.settings)
    with simq.Simulation(app, seed=1, **case.options) as sim:
        ctx = Ctx(sim=sim, app=app)
        if case.setup is not None:
            case.setup(ctx)
        before = len(sim.history)
        error: BaseException | None = None
        try:
            case.act(ctx)
        except Exception as exc:  # every misuse's error is the result
            error = exc
        recorded = tuple(sim.history.kinds()[before:])
        try:
            usable = app.tasks["shop.add"].delay(2, 3).get(timeout=120) == 5
        except Exception:  # any failure here means "not usable"
            usable = False
    return Outcome(case, error, recorded, usable)


def tally(outcomes: list[Outcome]) -> Counter[str]:
    """How many misuses got a clear error, how many did not (and of those, how many are
    Celery's own calling-code errors, raised exactly as on a real broker)."""
    counts: Counter[str] = Counter()
    for outcome in outcomes:
        if outcome.clear:
            counts["clear"] += 1
        else:
            counts["unclear"] += 1
            if outcome.case.celery:
                counts["unclear (Celery's own message)"] += 1
    counts["total"] = len(outcomes)
    return counts


def test_the_catalogue_is_large_and_its_names_unique() -> None:
    """The catalogue holds at least 60 misuses, each with a unique name and words to find."""
    names = [case.name for case in CATALOGUE]
    assert len(names) >= 60
    assert len(set(names)) == len(names)
    assert all(case.says for case in CATALOGUE)


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda case: case.name)
def test_a_misuse_gets_a_clear_error_and_the_simulation_goes_on(case: Misuse) -> None:
    """The misuse raises its expected error at the call, with words naming the parameter,
    the value or the fix; the refused call recorded nothing; a next task still runs."""
    outcome = attempt(case)
    error = outcome.error
    assert isinstance(error, case.error), f"{case.name}: got {error!r}"
    if case.celery and not hasattr(error, "add_note"):
        # Celery's message, as on a real broker: before Python 3.11 simq cannot add its
        # note naming the option, so it may name no parameter (see tally).
        assert outcome.usable and not outcome.recorded, case.name
        return
    assert outcome.clear, (case.name, str(error), outcome.recorded, outcome.usable)


def test_the_tally_counts_every_case() -> None:
    """tally() sorts every outcome into clear or unclear, marking Celery's own messages."""
    outcomes = [attempt(case) for case in CATALOGUE]
    counts = tally(outcomes)
    assert counts["clear"] + counts["unclear"] == counts["total"] == len(CATALOGUE)
    simq_unclear = [o.case.name for o in outcomes if not o.clear and not o.case.celery]
    assert simq_unclear == []


if __name__ == "__main__":  # pragma: no cover - a report for humans
    results = [attempt(case) for case in CATALOGUE]
    for outcome in results:
        if not outcome.clear:
            print(f"unclear: {outcome.case.name}: {type(outcome.error).__name__}: {outcome.error}")
    print(dict(tally(results)))
