"""Bad values are refused where they are given, and nothing is half-published.

Issue 8, items 5 and 6. A value simq cannot use raises at the call that took it, before
anything is scheduled or recorded, with Celery's (or kombu's, or py-amqp's) exception
where the real system raises one, else ``InvalidArgument`` naming the call, the
parameter, the value and the fix; the simulation stays usable. A message recorded
``published`` is always in a queue or reported lost: it never just vanishes.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import math
import re
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celery
import pytest
from celery.exceptions import InvalidTaskError

import simq
from simq.exceptions import InvalidArgument, SimqError
from simq.history import KINDS, Event, History

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc


def exactly(message: str) -> str:
    """An anchored regex matching ``message`` and nothing else."""
    return f"^{re.escape(message)}$"


def make_app(**settings: Any) -> celery.Celery:
    app = simq.App("shop", **settings)

    @app.task(shared=False, name="shop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, name="shop.slow")
    def slow() -> str:
        import time

        time.sleep(10)
        return "done"

    return app


@pytest.fixture
def app() -> celery.Celery:
    return make_app()


@pytest.fixture
def sim(app: celery.Celery) -> Iterator[simq.Simulation]:
    with simq.Simulation(app, seed=8) as sim:
        yield sim


def still_works(app: celery.Celery) -> bool:
    """A next task still runs to its result."""
    return bool(app.tasks["shop.add"].delay(2, 3).get(timeout=60) == 5)


# -- item 5: half-published messages ---------------------------------------------------


@pytest.mark.parametrize("max_priority", [None, 10])
@pytest.mark.parametrize("priority", ["high", "5", 1.5, -1, 256])
def test_a_priority_amqp_cannot_encode_raises_py_amqps_error_and_publishes_nothing(
    max_priority: int | None, priority: Any
) -> None:
    """On amqp a priority that is not an int from 0 to 255 raises struct.error at the call,
    as py-amqp does on RabbitMQ, naming the value and the fix; nothing is recorded."""
    app = make_app(task_queue_max_priority=max_priority)
    with simq.Simulation(app, transport="amqp") as sim:
        before = len(sim.history)
        with pytest.raises(struct.error) as info:
            app.tasks["shop.add"].apply_async((1, 2), priority=priority)
        assert str(info.value).startswith(
            "task 'shop.add': priority must be an int from 0 to 255 on amqp, got "
        )
        assert str(info.value).endswith(
            "RabbitMQ's client (py-amqp) cannot encode it. Pass an int: higher runs first, "
            "up to the queue's x-max-priority (task_queue_max_priority)"
        )
        assert len(sim.history) == before
        assert still_works(app)


def test_a_non_numeric_priority_on_redis_is_kombus_default_priority() -> None:
    """On redis, priority='high' is what kombu makes of it (the default, 0), with a
    warning: it is published, queued as priority 0, delivered and run."""
    app = make_app()
    add = app.tasks["shop.add"]
    with simq.Simulation(app, transport="redis", workers=0) as sim:
        with pytest.warns(UserWarning, match=r"^task 'shop.add': priority 'high' is not a "):
            named = add.apply_async((1, 2), priority="high")
        low = add.apply_async((1, 2), priority=0)
        urgent = add.apply_async((1, 2), priority=9)
        sim.add_worker()
        assert named.get(timeout=10) == 3
        sim.run()
        order = [e.task_id for e in sim.history.where(kind="started")]
    # kombu's redis: lower steps first; 'high' counts as 0 and keeps its publication order.
    assert order == [named.id, low.id, urgent.id]


@pytest.mark.parametrize("transport", ["amqp", "redis", "sqs"])
@pytest.mark.parametrize("priority", [None, 0, 3, 9, 10, 255, True, "high", "7", 1.5, -4, 300])
def test_nothing_is_recorded_published_and_then_lost_silently(
    transport: str, priority: Any
) -> None:
    """Whatever the priority, a call either raises with nothing recorded, or its message is
    published, delivered and run: never published and then in no queue."""
    app = make_app(task_queue_max_priority=10)
    with simq.Simulation(app, transport=transport) as sim:
        warns = transport == "redis" and priority == "high"
        try:
            with pytest.warns(UserWarning) if warns else contextlib.nullcontext():
                result = app.tasks["shop.add"].apply_async((1, 2), priority=priority)
        except struct.error:
            assert transport == "amqp"
            assert not sim.history.where(kind="published")
        else:
            assert result.get(timeout=10) == 3
            sim.run()
            published = {e.message_id for e in sim.history.where(kind="published")}
            settled = {e.message_id for e in sim.history.where(kind=["acked", "lost"])}
            assert published == settled != set()


def test_the_broker_records_nothing_for_a_message_its_queue_refuses(
    sim: simq.Simulation,
) -> None:
    """Broker.publish queues before it records: a message the queue cannot order raises
    there, and no `published` event is left without its message."""
    from simq.message import Message
    from simq.world.broker import Broker

    broker = Broker(sim.record, sim.loop, transport="amqp", max_priority=10)
    message = Message(
        message_id="m-bad", task_id="t", task="shop.add", headers={}, body="[]",
        content_type="application/json", content_encoding="utf-8", properties={},
        queue="celery", exchange="", routing_key="celery", priority="high",  # type: ignore[arg-type]
    )  # fmt: skip
    before = len(sim.history)
    with pytest.raises(TypeError):
        broker.publish(message)
    assert len(sim.history) == before
    assert "m-bad" not in broker.envelopes


# -- item 6: time limits, ETAs and other message options --------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"time_limit": "10"},
            "task 'shop.add': time_limit must be a number of seconds >= 0, or None, got the "
            "string '10'; pass a number, not a string: time_limit=10 (the call's time_limit= "
            "or the task's time_limit attribute)",
        ),
        (
            {"soft_time_limit": -1},
            "task 'shop.add': soft_time_limit must be a number of seconds >= 0, or None, got "
            "-1; set the call's soft_time_limit= or the task's soft_time_limit attribute to a "
            "number of seconds, or None",
        ),
        (
            {"time_limit": math.nan},
            "task 'shop.add': time_limit must be a number of seconds >= 0, or None, got nan; "
            "set the call's time_limit= or the task's time_limit attribute to a number of "
            "seconds, or None",
        ),
        (
            {"task_id": 5},
            "task 'shop.add': task_id must be a str, got 5; omit task_id= to let Celery make one",
        ),
        ({"retries": "x"}, "task 'shop.add': retries must be an int >= 0, got the string 'x'"),
    ],
)
def test_a_bad_message_option_is_refused_at_the_call(
    app: celery.Celery, sim: simq.Simulation, options: dict[str, Any], message: str
) -> None:
    """A per-call time limit, task id or retry count no worker could use raises
    InvalidArgument at apply_async, nothing is recorded, and the next task runs."""
    before = len(sim.history)
    with pytest.raises(InvalidArgument, match=exactly(message)):
        app.tasks["shop.add"].apply_async((1, 2), **options)
    assert len(sim.history) == before
    assert still_works(app)


def test_a_task_time_limit_attribute_is_checked_when_the_task_is_sent() -> None:
    """@app.task(time_limit='10') is refused when the task is sent (Celery copies it into
    the message), before the worker's pool would compare a string with a time."""
    app = make_app()

    @app.task(shared=False, name="shop.limited", time_limit="10")
    def limited() -> int:
        return 1

    with simq.Simulation(app) as sim:
        with pytest.raises(InvalidArgument, match=r"^task 'shop.limited': time_limit must be "):
            limited.delay()
        assert not sim.history.where(kind="published")
        assert still_works(app)


def test_a_pool_time_limit_setting_is_checked_when_a_worker_starts() -> None:
    """app.conf.task_time_limit='10' stops the simulation at construction, naming the
    setting (a real worker's pool would fail comparing it with a time)."""
    app = make_app(task_time_limit="10")
    with pytest.raises(
        InvalidArgument,
        match=exactly(
            "Simulation(): app.conf.task_time_limit must be a number of seconds >= 0, or "
            "None, got the string '10'; pass a number, not a string: "
            "app.conf.task_time_limit=10"
        ),
    ):
        simq.Simulation(app)


def test_an_eta_celerys_worker_cannot_read_is_celerys_invalid_task_error(
    app: celery.Celery, sim: simq.Simulation
) -> None:
    """eta='tomorrow' raises Celery's InvalidTaskError (what its worker raises for the
    message) at the call, naming the value and the fix; nothing is recorded."""
    with pytest.raises(
        InvalidTaskError,
        match=r"^task 'shop.add': invalid ETA value 'tomorrow': .*; Celery's worker rejects "
        r"such a message: pass eta= a datetime \(or countdown= seconds\)$",
    ):
        app.tasks["shop.add"].apply_async((1, 2), eta="tomorrow")
    assert not sim.history.where(kind="published")
    assert still_works(app)


REFERENCE_OPTIONS = [
    {"countdown": "soon"},
    {"countdown": math.nan},
    {"countdown": 1e15},
    {"countdown": math.inf},
    {"expires": "soon"},
    {"expires": math.nan},
    {"headers": "x"},
    {"link": print},
    {"link_error": print},
    {"serializer": "nope"},
    {"eta": 5},
    {"queue": 5},
]


@pytest.mark.parametrize("options", REFERENCE_OPTIONS, ids=repr)
def test_an_option_celery_refuses_raises_what_celery_raises(options: dict[str, Any]) -> None:
    """Options that Celery's own calling code refuses raise the very exception it raises
    outside simq (same type, same message), at the call, with nothing recorded."""
    reference = celery.Celery("ref", broker="memory://", set_as_current=False)

    @reference.task(shared=False, name="shop.add")
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(Exception) as real:
        add.apply_async((1, 2), **options)
    app = make_app()
    with simq.Simulation(app) as sim:
        with pytest.raises(type(real.value)) as simulated:
            app.tasks["shop.add"].apply_async((1, 2), **options)
        assert str(simulated.value) == str(real.value)
        assert type(simulated.value) is type(real.value)
        assert len(sim.history.where(kind="published")) == 0
        assert still_works(app)
        (name,) = options
        if name in ("countdown", "eta", "expires", "headers", "queue"):
            # simq's note names the option Celery's message may not (Python 3.11+).
            notes = getattr(simulated.value, "__notes__", [])
            assert any(f"{name}=" in note for note in notes) or sys.version_info < (3, 11)
    assert "send_task" not in app.__dict__  # the app is as it was after the block


# -- item 6: the Simulation and its workers ---------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"workers": "2"},
            "Simulation(): workers must be an int >= 0, got the string '2'; pass a number, "
            "not a string: workers=2",
        ),
        ({"workers": 1.0}, "Simulation(): workers must be an int >= 0, got 1.0; pass workers=1"),
        ({"concurrency": True}, "Simulation(): concurrency must be an int >= 1, got True"),
        (
            {"prefetch_multiplier": 1.5},
            "Simulation(): prefetch_multiplier must be an int >= 0, got 1.5",
        ),
        (
            {"durations": {"shop.add": math.nan}},
            "Simulation(): durations['shop.add'] must be a number of seconds >= 0 or a "
            "callable taking a random.Random, got nan",
        ),
        (
            {"durations": {"shop.add": math.inf}},
            "Simulation(): durations['shop.add'] must be a number of seconds >= 0 or a "
            "callable taking a random.Random, got inf",
        ),
        (
            {"durations": {"shop.ad": 1}},
            "Simulation(): durations['shop.ad'] names no task of app 'shop'; did you mean "
            "'shop.add'? (tasks: shop.add, shop.slow); key durations by task name (task.name)",
        ),
        (
            {"durations": [("shop.add", 1)]},
            "Simulation(): durations must be a dict of task name to seconds, got [('shop.add', 1)]",
        ),
        (
            {"start": "2030-01-01"},
            "Simulation(): start must be a timezone-aware datetime, got the string "
            "'2030-01-01'; pass e.g. datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)",
        ),
    ],
)
def test_a_bad_simulation_option_is_refused_at_construction(
    options: dict[str, Any], message: str
) -> None:
    """Simulation() refuses a value it would reinterpret or fail on later, naming it."""
    with pytest.raises(InvalidArgument, match=exactly(message)):
        simq.Simulation(make_app(), **options)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"task_queue_max_priority": "x"},
            "Simulation(): app.conf.task_queue_max_priority must be an int from 1 to 255, or "
            "None, got the string 'x'",
        ),
        (
            {"worker_prefetch_multiplier": "x"},
            "Simulation(): app.conf.worker_prefetch_multiplier must be an int >= 0, got the "
            "string 'x'",
        ),
        (
            {"broker_transport_options": 5},
            "Simulation(): app.conf.broker_transport_options must be a dict, got 5",
        ),
        (
            {"broker_transport_options": {"visibility_timeout": "x"}},
            "Simulation(): app.conf.broker_transport_options['visibility_timeout'] must be a "
            "finite number of seconds (kombu's default: 3600 on redis), got the string 'x'",
        ),
    ],
)
def test_a_bad_setting_the_world_reads_is_refused_at_construction(
    settings: dict[str, Any], message: str
) -> None:
    """A setting the simulated broker or workers read is checked at construction."""
    with pytest.raises(InvalidArgument, match=exactly(message)):
        simq.Simulation(make_app(**settings), transport="redis")


def test_a_durations_key_of_a_task_in_an_included_module_is_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durations key naming a task of the app's include= modules is accepted: the check
    imports them first, as a booting worker does."""
    (tmp_path / "shop_included_tasks.py").write_text(
        "from celery import shared_task\n\n\n"
        "@shared_task(name='shop.elsewhere')\n"
        "def elsewhere():\n"
        "    return 'there'\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "shop_included_tasks", raising=False)
    app = make_app(include=["shop_included_tasks"])
    assert "shop.elsewhere" not in app.tasks
    with simq.Simulation(app, workers=0, durations={"shop.elsewhere": 4}) as sim:
        sim.add_worker()
        assert app.tasks["shop.elsewhere"].delay().get(timeout=60) == "there"
        assert sim.elapsed == 4
    sys.modules.pop("shop_included_tasks", None)


def test_a_drawn_duration_that_is_not_seconds_fails_the_attempt_clearly(
    app: celery.Celery,
) -> None:
    """A durations callable that draws NaN fails that attempt with InvalidArgument naming
    the task, instead of sleeping NaN seconds; the next task without it runs."""
    with simq.Simulation(app, durations={"shop.slow": lambda rng: math.nan}):
        with pytest.raises(
            InvalidArgument,
            match=exactly(
                "durations['shop.slow']: the drawn duration must be a number of seconds >= 0, "
                "got nan; virtual time only takes finite numbers"
            ),
        ):
            app.tasks["shop.slow"].delay().get(timeout=60)
        assert still_works(app)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda sim: sim.add_worker(queues=[]),
            "add_worker(): queues must be a non-empty list of queue names, got []",
        ),
        (
            lambda sim: sim.add_worker(queues=["a", 5]),
            "add_worker(): queues must be a non-empty list of queue names, got ['a', 5]",
        ),
        (
            lambda sim: sim.add_worker(name=7),
            "add_worker(): name must be a non-empty str, or None, got 7",
        ),
        (
            lambda sim: sim.add_worker(concurrency="2"),
            "add_worker(): concurrency must be an int >= 1, got the string '2'; pass a "
            "number, not a string: concurrency=2",
        ),
        (
            lambda sim: sim.add_worker(prefetch_multiplier=1.5),
            "add_worker(): prefetch_multiplier must be an int >= 0, got 1.5",
        ),
    ],
)
def test_a_bad_worker_option_is_refused(
    app: celery.Celery, sim: simq.Simulation, call: Callable[[Any], Any], message: str
) -> None:
    """add_worker() refuses a bad option before any worker starts."""
    with pytest.raises(InvalidArgument, match=exactly(message)):
        call(sim)
    assert list(sim.workers) == ["worker-1"]
    assert still_works(app)


# -- item 6: faults, revoke, time -------------------------------------------------------


FAULTS: list[tuple[Callable[[Any], Any], str]] = [
    (
        lambda sim: sim.crash_worker("worker-1", restart_after="5"),
        "crash_worker(): restart_after must be a number of seconds >= 0, or None, got the "
        "string '5'; pass a number, not a string: restart_after=5",
    ),
    (
        lambda sim: sim.crash_worker("worker-1", restart_after=-5),
        "crash_worker(): restart_after must be a number of seconds >= 0, or None, got -5",
    ),
    (
        lambda sim: sim.crash_worker("worker-1", restart_after=math.inf),
        "crash_worker(): restart_after must be a number of seconds >= 0, or None, got inf; for "
        "a worker that never comes back, leave restart_after=None (the default)",
    ),
    (
        lambda sim: sim.crash_worker("worker-1", at=math.inf),
        "crash_worker(): at must be seconds from now (a number >= 0), a timezone-aware "
        "datetime, or None, got inf",
    ),
    (
        lambda sim: sim.crash_worker("worker-1", at=1e13),
        "crash_worker(): at=10000000000000.0 seconds from now is past the end of virtual time "
        "(datetime.max, the year 9999); pass a smaller number of seconds",
    ),
    (
        lambda sim: sim.crash_worker("worker-1", at=dt.datetime(2029, 12, 31, tzinfo=UTC)),
        "crash_worker(): at=2029-12-31T00:00:00+00:00 is in the past (virtual time is now "
        "2030-01-01T00:00:00+00:00); virtual time only moves forward: pass a later datetime, "
        "seconds from now, or None for now",
    ),
    (
        lambda sim: sim.restart_broker(down_for="3"),
        "restart_broker(): down_for must be a number of seconds >= 0, got the string '3'; "
        "pass a number, not a string: down_for=3",
    ),
    (
        lambda sim: sim.restart_broker(down_for=-3),
        "restart_broker(): down_for must be a number of seconds >= 0, got -3",
    ),
    (
        lambda sim: sim.lose_connection("worker-1", reconnect_after=math.nan),
        "lose_connection(): reconnect_after must be a number of seconds >= 0, got nan; "
        "virtual time only takes finite numbers",
    ),
    (
        lambda sim: sim.shutdown_worker("worker-1", warm="no"),
        "shutdown_worker(): warm must be True or False, got the string 'no'",
    ),
    (
        lambda sim: sim.kill_child("t1", at=5, exitcode="x"),
        "kill_child(): exitcode must be an int: an exit status 0-255, or minus a signal "
        "number (-9 is SIGKILL), got the string 'x'",
    ),
    (
        lambda sim: sim.kill_child(123, at=5),
        "kill_child(): task_id must be a task id (a str), got 123",
    ),
    (
        lambda sim: sim.revoke(123),
        "revoke(): task_id must be a task id (a str) or a list of task ids, got 123; pass "
        "result.id (an AsyncResult's id), not the result or a number",
    ),
    (
        lambda sim: sim.revoke("t1", terminate="yes"),
        "revoke(): terminate must be True or False, got the string 'yes'",
    ),
    (
        lambda sim: sim.revoke("t1", terminate=True, signal="KIL"),
        "revoke(): signal must be a signal name like 'TERM' or 'KILL', or its number, got "
        "the string 'KIL'; did you mean 'KILL'?",
    ),
    (
        lambda sim: sim.advance(math.inf),
        "advance(): seconds must be a number of seconds >= 0, got inf; virtual time only "
        "takes finite numbers",
    ),
    (
        lambda sim: sim.advance(3e11),
        "advance(): 300000000000.0 seconds from now is past the end of virtual time "
        "(datetime.max, the year 9999); pass fewer seconds",
    ),
    (
        lambda sim: sim.run(until=5),
        "run(): until must be a timezone-aware datetime, got 5; pass e.g. sim.now + "
        "datetime.timedelta(seconds=5), or use sim.advance(5)",
    ),
]


@pytest.mark.parametrize(("call", "message"), FAULTS)
def test_a_bad_fault_or_time_argument_is_refused_before_anything_happens(
    app: celery.Celery, sim: simq.Simulation, call: Callable[[Any], Any], message: str
) -> None:
    """A fault, revoke or clock call with a bad argument raises InvalidArgument at once:
    nothing is scheduled, recorded or half-done, and the simulation keeps working."""
    before, now = len(sim.history), sim.now
    with pytest.raises(InvalidArgument, match=exactly(message)):
        call(sim)
    assert len(sim.history) == before
    assert sim.now == now
    assert still_works(app)
    assert not sim.history.where(kind=["worker-crashed", "shutdown", "revoke"])


def test_get_timeout_nan_is_refused_and_inf_waits_without_limit(
    app: celery.Celery, sim: simq.Simulation
) -> None:
    """get(timeout=nan) raises InvalidArgument (a NaN deadline never passes); inf waits as
    None does; a negative timeout times out at once, as Celery's own wait does."""
    slow = app.tasks["shop.slow"]
    with pytest.raises(
        InvalidArgument,
        match=exactly(
            "get(): timeout must be a number of seconds, or None to wait without limit, got nan"
        ),
    ):
        slow.delay().get(timeout=math.nan)
    assert slow.delay().get(timeout=math.inf) == "done"
    with pytest.raises(celery.exceptions.TimeoutError):
        slow.delay().get(timeout=-1)


# -- history.where ----------------------------------------------------------------------


def test_where_with_an_unknown_kind_suggests_the_closest(sim: simq.Simulation) -> None:
    """where(kind='strated') is an error suggesting 'started', not an empty result."""
    with pytest.raises(
        InvalidArgument, match=r"^where\(\): 'strated' is not an event kind; did you mean "
        r"'started'\? \(kinds: ack-failed, acked, "
    ):  # fmt: skip
        sim.history.where(kind="strated")
    with pytest.raises(InvalidArgument, match=r"'publsihed' is not an event kind; did you mean"):
        sim.history.where(kind=["started", "publsihed"])


def test_where_with_an_unknown_key_suggests_the_closest(sim: simq.Simulation) -> None:
    """where(taskid=...) names the closest field; a detail key of no kind is refused too."""
    with pytest.raises(
        InvalidArgument,
        match=exactly(
            "where(): no event has a field or detail 'taskid'; did you mean 'task_id'? "
            "(fields: kind, time, task_id, message_id, worker; details by kind: "
            "simq.history.KINDS)"
        ),
    ):
        sim.history.where(taskid="x")
    with pytest.raises(InvalidArgument, match=r"^where\(\): no event has a field or detail"):
        sim.history.where(nonexistent="x")


def test_where_accepts_every_known_name_and_what_the_history_holds() -> None:
    """Known kinds and keys, `attempt`, and names present in the history itself (a real
    adapter's extra details) are accepted and filter as before."""
    history = History([Event("custom-kind", 1.0, details={"extra": 1}), Event("acked", 2.0)])
    assert history.where(kind="custom-kind", extra=1).kinds() == ["custom-kind"]
    assert len(history.where(kind="lost", attempt=3)) == 0
    assert len(history.where(time=2.0)) == 1
    for kind, keys in KINDS.items():
        for key in keys:
            assert len(history.where(kind=kind, **{key: None})) == 0


def _recorded_kinds() -> dict[str, set[str]]:
    """Every literal kind passed to a record/note call in simq and the conformance suite,
    with the keyword names it is recorded with."""
    found: dict[str, set[str]] = {}
    for root in ("simq", "conformance/simq_conformance"):
        for path in sorted((ROOT / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                first = node.args[0]
                if name in ("record", "_record", "note") and isinstance(first, ast.Constant):
                    keys = {kw.arg for kw in node.keywords if kw.arg is not None}
                    found.setdefault(str(first.value), set()).update(keys)
    return found


def test_the_kind_registry_covers_every_kind_the_code_records() -> None:
    """KINDS lists every kind recorded anywhere, with every details key it is given, so
    where() never refuses a name the simulator or an adapter writes."""
    fields = {"task_id", "message_id", "worker", "at", "attempt"}  # any kind may have these
    for kind, keys in _recorded_kinds().items():
        assert kind in KINDS, kind
        assert keys - fields <= KINDS[kind], (kind, keys - fields - KINDS[kind])


def test_exceptions_are_simq_errors_and_builtins() -> None:
    """InvalidArgument is a SimqError, and the TypeError and ValueError code catches."""
    error = InvalidArgument("x")
    assert isinstance(error, SimqError)
    assert isinstance(error, TypeError)
    assert isinstance(error, ValueError)
