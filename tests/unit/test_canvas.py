"""Celery's canvas on the simulation: signatures, merging, link and link_error (§5.2-§5.4)."""

from __future__ import annotations

from typing import Any

import celery
import pytest
from celery import states

import simq


class Calls:
    """A recording task app: ``record`` keeps (args, kwargs, request) of each run."""

    def __init__(self) -> None:
        self.app = simq.App("proj")
        self.runs: dict[str, dict[str, Any]] = {}
        runs = self.runs

        @self.app.task(shared=False, bind=True, name="proj.record")
        def record(self: celery.Task, *args: Any, **kwargs: Any) -> list[Any]:
            r = self.request
            runs[r.id or ""] = {
                "args": list(args), "kwargs": kwargs, "group": r.group, "eta": r.eta,
                "parent_id": r.parent_id, "root_id": r.root_id, "queue":
                (r.delivery_info or {}).get("routing_key"),
            }  # fmt: skip
            return list(args)

        @self.app.task(shared=False, name="proj.add")
        def add(x: int, y: int) -> int:
            return x + y

        @self.app.task(shared=False, name="proj.subtract")
        def subtract(x: int, y: int) -> int:
            return x - y

        self.record = record
        self.add = add
        self.subtract = subtract


# -- structure and merging (§5.2) ------------------------------------------------------


def test_partial_args_are_prepended() -> None:
    """subtract.s(10).delay(30) runs subtract(30, 10) (canvas.rst, §5.2)."""
    calls = Calls()
    with simq.Simulation(calls.app):
        assert calls.subtract.s(10).delay(30).get() == 20


def test_call_time_kwargs_win() -> None:
    """Keyword arguments given at call time override the signature's (§5.2)."""
    calls = Calls()
    with simq.Simulation(calls.app):
        result = calls.record.s(a=1, b=2).apply_async(kwargs={"b": 3, "c": 4})
        result.get()
    assert calls.runs[result.id]["kwargs"] == {"a": 1, "b": 3, "c": 4}


def test_call_time_options_win_except_group_id() -> None:
    """Call options override stored ones, but the signature's group_id stays (§5.2)."""
    calls = Calls()
    with simq.Simulation(calls.app) as sim:
        sig = calls.record.s().set(countdown=100, group_id="g-sig", queue="celery")
        result = sig.apply_async(countdown=5, group_id="g-call")
        result.get()
        assert sim.elapsed == 5
    assert calls.runs[result.id]["group"] == "g-sig"


def test_immutable_signature_drops_call_arguments() -> None:
    """si() ignores arguments given at call time; options still merge (§5.2)."""
    calls = Calls()
    with simq.Simulation(calls.app) as sim:
        result = calls.record.si(1, k=1).apply_async((2,), {"k": 2}, countdown=7)
        result.get()
        assert sim.elapsed == 7
    assert calls.runs[result.id]["args"] == [1]
    assert calls.runs[result.id]["kwargs"] == {"k": 1}


def test_none_options_are_dropped() -> None:
    """An option passed as None does not clear the signature's value (§5.2)."""
    calls = Calls()
    with simq.Simulation(calls.app) as sim:
        result = calls.record.s().set(countdown=10).apply_async(countdown=None)
        result.get()
        assert sim.elapsed == 10


def test_delay_and_apply_async_send_the_task() -> None:
    """Signature.delay and apply_async publish the signature's task."""
    calls = Calls()
    with simq.Simulation(calls.app) as sim:
        first = calls.add.s(1).delay(2)
        second = calls.add.s(1, 2).apply_async()
        assert (first.get(), second.get()) == (3, 3)
        assert len(sim.history.where(kind="published", task="proj.add")) == 2


def test_signature_apply_runs_eagerly() -> None:
    """Signature.apply runs the task eagerly with merged arguments."""
    calls = Calls()
    result = calls.subtract.s(4).apply((10,))
    assert (result.state, result.get()) == (states.SUCCESS, 6)


# -- link (§5.4) -----------------------------------------------------------------------


def test_link_callback_gets_the_return_value_prepended() -> None:
    """A link callback runs after the parent with its return value prepended (§5.4)."""
    calls = Calls()
    with simq.Simulation(calls.app) as sim:
        parent = calls.add.apply_async((1, 2), link=calls.record.s(10))
        parent.get()
        sim.run()
        (published,) = sim.history.where(kind="published", task="proj.record")
        child = published.task_id
    assert calls.runs[child]["args"] == [3, 10]


def test_link_callback_is_published_before_the_parent_success_is_stored() -> None:
    """The callback's message is published before the parent's SUCCESS write (§1.11 step 5)."""
    calls = Calls()
    with simq.Simulation(calls.app) as sim:
        parent = calls.add.apply_async((1, 2), link=calls.record.s())
        parent.get()
        sim.run()
        order = [
            (e.kind, e.details.get("task") or e.details.get("state"))
            for e in sim.history.where(kind=["published", "state"])
        ]
    assert order == [
        ("published", "proj.add"),
        ("published", "proj.record"),
        ("state", "SUCCESS"),
        ("state", "SUCCESS"),
    ]
    assert sim.history.where(kind="state").first().task_id == parent.id


def test_link_callback_has_the_parent_as_parent_and_its_root() -> None:
    """A callback's parent_id is the parent task and its root_id the parent's root (§5.5)."""
    calls = Calls()

    @calls.app.task(shared=False, name="proj.outer")
    def outer() -> str:
        return calls.add.apply_async((1, 1), link=calls.record.s()).id

    with simq.Simulation(calls.app) as sim:
        root = outer.delay()
        middle = root.get()
        sim.run()
        (event,) = sim.history.where(kind="published", task="proj.record")
    run = calls.runs[event.task_id]
    assert run["parent_id"] == middle
    assert run["root_id"] == root.id
    assert (event["parent_id"], event["root_id"]) == (middle, root.id)


def test_several_callbacks_each_get_the_value() -> None:
    """Every linked callback receives the parent's return value."""
    calls = Calls()
    with simq.Simulation(calls.app) as sim:
        calls.add.apply_async((2, 2), link=[calls.record.s("a"), calls.record.s("b")]).get()
        sim.run()
    assert sorted(run["args"] for run in calls.runs.values()) == [[4, "a"], [4, "b"]]


def test_immutable_callback_gets_nothing_prepended() -> None:
    """An si() callback runs with its own arguments only (§5.4)."""
    calls = Calls()
    with simq.Simulation(calls.app) as sim:
        calls.add.apply_async((2, 2), link=calls.record.si("only")).get()
        sim.run()
    assert [run["args"] for run in calls.runs.values()] == [["only"]]


def test_link_is_not_called_on_failure() -> None:
    """Callbacks run only on success."""
    calls = Calls()

    @calls.app.task(shared=False, name="proj.boom")
    def boom() -> None:
        raise KeyError("k")

    with simq.Simulation(calls.app) as sim:
        with pytest.raises(KeyError):
            boom.apply_async(link=calls.record.s()).get()
        sim.run()
        assert not sim.history.where(kind="published", task="proj.record")


# -- link_error (§5.4) -----------------------------------------------------------------


def errback_app() -> tuple[Calls, celery.Task, list[tuple[Any, ...]]]:
    calls = Calls()
    seen: list[tuple[Any, ...]] = []

    @calls.app.task(shared=False, name="proj.inline_errback")
    def inline_errback(request: Any, exc: BaseException, traceback: Any) -> None:
        seen.append(("inline", request.id, repr(exc), "KeyError" in traceback))

    @calls.app.task(shared=False, name="proj.boom")
    def boom() -> None:
        raise KeyError("k")

    return calls, boom, seen


def test_new_style_errback_is_called_inline() -> None:
    """An errback taking (request, exc, traceback) runs in the worker; nothing is sent."""
    calls, boom, seen = errback_app()
    errback = calls.app.tasks["proj.inline_errback"]
    with simq.Simulation(calls.app) as sim:
        failed = boom.apply_async(link_error=errback.s())
        with pytest.raises(KeyError):
            failed.get()
        sim.run()
        assert not sim.history.where(kind="published", task="proj.inline_errback")
    assert seen == [("inline", failed.id, "KeyError('k')", True)]


def test_one_argument_errback_is_sent_as_a_task_with_the_task_id() -> None:
    """A one-argument errback is published as a task called with (task_id,) (§5.4)."""
    calls, boom, _ = errback_app()
    with simq.Simulation(calls.app) as sim:
        failed = boom.apply_async(link_error=calls.record.s())
        with pytest.raises(KeyError):
            failed.get()
        sim.run()
        (event,) = sim.history.where(kind="published", task="proj.record")
    run = calls.runs[event.task_id]
    assert run["args"] == [failed.id]
    assert (run["parent_id"], run["root_id"]) == (failed.id, failed.id)


def test_both_errback_styles_fire_for_one_failure() -> None:
    """Inline and task errbacks linked together both fire (exp9)."""
    calls, boom, seen = errback_app()
    errback = calls.app.tasks["proj.inline_errback"]
    with simq.Simulation(calls.app) as sim:
        failed = boom.apply_async(link_error=[errback.s(), calls.record.s()])
        with pytest.raises(KeyError):
            failed.get()
        sim.run()
        published = [e["task"] for e in sim.history.where(kind="published")]
    assert published == ["proj.boom", "proj.record"]
    assert [s[0] for s in seen] == ["inline"]
    assert [run["args"] for run in calls.runs.values()] == [[failed.id]]


def test_bound_errback_is_sent_as_a_task() -> None:
    """A bind=True errback is never called inline, whatever its arity (§5.4)."""
    calls, boom, _ = errback_app()
    seen: list[Any] = []

    @calls.app.task(shared=False, bind=True, name="proj.bound_errback")
    def bound_errback(self: celery.Task, *args: Any) -> None:
        seen.append(list(args))

    with simq.Simulation(calls.app) as sim:
        failed = boom.apply_async(link_error=bound_errback.s())
        with pytest.raises(KeyError):
            failed.get()
        sim.run()
        assert sim.history.where(kind="published", task="proj.bound_errback")
    assert seen == [[failed.id]]


def test_errbacks_do_not_fire_on_success() -> None:
    """link_error is for failures only."""
    calls, _, seen = errback_app()
    errback = calls.app.tasks["proj.inline_errback"]
    with simq.Simulation(calls.app) as sim:
        calls.add.apply_async((1, 1), link_error=[errback.s(), calls.record.s()]).get()
        sim.run()
        assert [e["task"] for e in sim.history.where(kind="published")] == ["proj.add"]
    assert seen == []


# -- every primitive, on both kinds of chord support (issue 9) --------------------------

MODES = ["redis", "database", "rpc"]


class Canvas:
    """Tasks for the primitives: add, tsum, boom, a replacing and a chord-adding task."""

    def __init__(self) -> None:
        app = self.app = simq.App("cv")
        self.errors: list[str] = []
        errors = self.errors

        @app.task(shared=False, name="cv.add")
        def add(x: int, y: int) -> int:
            return x + y

        @app.task(shared=False, name="cv.tsum")
        def tsum(xs: list[int]) -> int:
            return sum(xs)

        @app.task(shared=False, name="cv.same")
        def same(xs: Any) -> Any:
            return xs

        @app.task(shared=False, name="cv.boom")
        def boom(*args: Any) -> None:
            raise KeyError("k")

        @app.task(shared=False, bind=True, name="cv.replace")
        def replace(self: celery.Task, x: int) -> None:
            raise self.replace(add.s(x, 100))

        @app.task(shared=False, bind=True, name="cv.adder")
        def adder(self: celery.Task, x: int) -> int:
            self.add_to_chord(add.si(x, 1000))
            return x

        @app.task(shared=False, name="cv.on_error")
        def on_error(request: Any, exc: BaseException, traceback: Any) -> None:
            errors.append(f"{request.id} {type(exc).__name__}")

        self.add, self.tsum, self.boom, self.same = add, tsum, boom, same
        self.replace, self.adder, self.on_error = replace, adder, on_error


def _shapes(c: Canvas) -> dict[str, tuple[Any, Any]]:
    add, tsum, rep = c.add, c.tsum, c.replace
    return {
        "chain": (celery.chain(add.s(1, 2), add.s(3), add.s(4)), 10),
        "pipe": (add.s(1, 2) | add.s(3), 6),
        "group": (celery.group(add.s(i, i) for i in range(3)), [0, 2, 4]),
        "chord": (celery.chord((add.s(i, i) for i in range(3)), tsum.s()), 6),
        "chord of chains": (
            celery.chord([add.s(1, 1) | add.s(1), add.s(2, 2) | add.s(2)], tsum.s()),
            9,
        ),
        "chain of chords": (
            celery.chain(
                celery.chord([add.s(1, 1), add.s(2, 2)], tsum.s()),
                celery.chord([add.s(1), add.s(2)], tsum.s()),
            ),
            15,
        ),
        "group in a chain": (add.s(1, 1) | celery.group(add.s(1), add.s(2)) | tsum.s(), 7),
        "nested chords": (
            celery.chord(
                [celery.chord([add.s(1, 1), add.s(2, 2)], tsum.s()), add.s(3, 3)], tsum.s()
            ),
            12,
        ),
        "chunks": (add.chunks([(0, 0), (1, 1), (2, 2), (3, 3)], 2), [[0, 2], [4, 6]]),
        "map": (tsum.map([[1, 2], [3, 4]]), [3, 7]),
        "starmap": (add.starmap([(1, 2), (3, 4)]), [3, 7]),
        "replace": (rep.s(1), 101),
        "replace in a chain": (add.s(1, 1) | rep.s() | add.s(1), 103),
        "replace in a chord": (celery.chord([rep.s(1), add.s(2, 2)], tsum.s()), 105),
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(_shapes(Canvas())))
def test_every_primitive_gives_celerys_result(shape: str, mode: str) -> None:
    """Each canvas primitive, built and run by Celery's own code, returns what it does on a
    real worker, whichever chord support the result store has."""
    c = Canvas()
    sig, expected = _shapes(c)[shape]
    with simq.Simulation(c.app, result_backend=mode) as sim:
        result = sig.apply_async()
        assert result.get() == expected
        sim.run()
        assert not sim.history.where(kind="failed")


@pytest.mark.parametrize("mode", MODES)
def test_group_result_and_result_set_track_completion(mode: str) -> None:
    """GroupResult / ResultSet: ready, completed_count, get and join over the store."""
    c = Canvas()
    with simq.Simulation(c.app, result_backend=mode, durations={"cv.add": 5}) as sim:
        result = celery.group(c.add.s(i, i) for i in range(3)).apply_async()
        assert (result.ready(), result.completed_count()) == (False, 0)
        assert result.get() == [0, 2, 4]
        assert (result.ready(), result.completed_count(), result.successful()) == (3 > 0, 3, True)
        assert result.join() == [0, 2, 4]
        rs = celery.result.ResultSet([c.add.delay(1, 1), c.add.delay(2, 2)], app=c.app)
        assert not rs.ready()
        assert rs.join() == [2, 4]
        assert (rs.ready(), rs.completed_count()) == (True, 2)
        sim.run()


def test_add_to_chord_extends_the_header_on_redis() -> None:
    """Task.add_to_chord on Redis: the added task counts in the header and its result
    reaches the body (RedisBackend.add_to_chord increments the group's .t key, and
    on_chord_part_return waits for size + that difference)."""
    c = Canvas()
    with simq.Simulation(c.app) as sim:
        result = celery.chord([c.adder.s(1), c.add.s(2, 2)], c.tsum.s()).apply_async()
        assert result.get() == 1 + 4 + 1001
        sim.run()
        assert len(sim.history.where(kind="started", task="cv.tsum")) == 1


@pytest.mark.parametrize("mode", ["database", "rpc"])
def test_add_to_chord_is_refused_by_polling_backends(mode: str) -> None:
    """The database and rpc backends have no add_to_chord: Celery's BaseBackend raises
    NotImplementedError in the header task, which fails the chord (ChordError)."""
    c = Canvas()
    with simq.Simulation(c.app, result_backend=mode) as sim:
        result = celery.chord([c.adder.s(1), c.add.s(2, 2)], c.tsum.s()).apply_async()
        with pytest.raises(celery.exceptions.ChordError, match="add_to_chord"):
            result.get()
        sim.run()


def test_redis_chord_publishes_the_body_from_the_last_part_and_no_chord_unlock() -> None:
    """Redis: the header task that finishes last publishes the body itself
    (RedisBackend.on_chord_part_return); celery.chord_unlock is never sent."""
    c = Canvas()
    with simq.Simulation(c.app, durations={"cv.add": 5}) as sim:
        result = celery.chord((c.add.s(i, i) for i in range(3)), c.tsum.s()).apply_async()
        assert result.get() == 6
        sim.run()
        assert not sim.history.where(task="celery.chord_unlock")
        assert sim.elapsed == 15  # three 5 s header tasks on one child, body at once


@pytest.mark.parametrize("mode", ["database", "rpc"])
def test_polling_chord_sends_chord_unlock_retried_every_retry_interval(mode: str) -> None:
    """database/rpc: Celery's BaseBackend.apply_chord -> fallback_chord_unlock sends
    celery.chord_unlock (countdown 1), which retries every result_chord_retry_interval
    until the header is ready (celery/app/builtins.py unlock_chord), then publishes the
    body."""
    c = Canvas()
    c.app.conf.result_chord_retry_interval = 2
    durations = {"cv.add": 5}
    with simq.Simulation(c.app, result_backend=mode, concurrency=3, durations=durations) as sim:
        result = celery.chord([c.add.s(1, 1), c.add.s(2, 2)], c.tsum.s()).apply_async()
        assert result.get() == 6
        sim.run()
        unlock = sim.history.where(kind="published", task="celery.chord_unlock")
        retried = sim.history.where(kind="retried", task_id=unlock.first().task_id)
        starts = [e.time - sim.started_at for e in sim.history.where(
            kind="started", task="celery.chord_unlock")]  # fmt: skip
    # Published at 0 (countdown 1), polled at 1, 3 (retried), 5: the header is ready.
    assert len(unlock) == 3  # the first send and two retries
    assert len(retried) == 2
    assert starts == [1, 3, 5]


@pytest.mark.parametrize("mode", MODES)
def test_chord_error_propagates_to_the_body_and_its_errback(mode: str) -> None:
    """A failing header part fails the body with ChordError naming the culprit, and calls
    the body's link_error (Backend.chord_error_from_stack); the body never runs."""
    c = Canvas()
    with simq.Simulation(c.app, result_backend=mode) as sim:
        body = c.tsum.s().on_error(c.on_error.s())
        result = celery.chord([c.boom.s(), c.add.s(2, 2)], body).apply_async()
        with pytest.raises(celery.exceptions.ChordError, match="KeyError"):
            result.get()
        sim.run()
        assert not sim.history.where(kind="started", task="cv.tsum")
    assert c.errors == [f"{result.id} ChordError"]


@pytest.mark.parametrize("mode", MODES)
def test_link_and_link_error_on_each_primitive(mode: str) -> None:
    """link runs after a chain / chord succeeds; a group refuses link= and link_error=
    (Celery's group.apply_async raises TypeError) but group.link_error() sets it on each
    member. link_error fires once per failure of a chain, a group member, a chord body."""
    c = Canvas()
    with simq.Simulation(c.app, result_backend=mode) as sim:
        with pytest.raises(TypeError, match="use a chord"):
            celery.group(c.add.s(1, 1)).apply_async(link=c.tsum.s())
        chain_r = (c.add.s(1, 1) | c.add.s(1)).apply_async(link=c.add.s(10))
        chord_sig = celery.chord([c.add.s(1, 1)], c.tsum.s())
        chord_sig.link(c.add.s(5))  # chord.link: on the body (5.5 refuses apply_async(link=))
        chord_r = chord_sig.apply_async()
        assert (chain_r.get(), chord_r.get()) == (3, 2)
        failing_chain = (c.add.s(1, 1) | c.boom.s()).apply_async(link_error=c.on_error.s())
        with pytest.raises(TypeError, match="individual tasks"):
            celery.group(c.boom.s()).apply_async(link_error=c.on_error.s())
        group_sig = celery.group(c.boom.s(), c.add.s(1, 1))
        group_sig.link_error(c.on_error.s())  # group.link_error: on each member
        failing_group = group_sig.apply_async()
        failing_chord_sig = celery.chord([c.add.s(1, 1)], c.boom.s())
        c.app.conf.task_allow_error_cb_on_chord_header = True  # Celery's future default
        failing_chord_sig.link_error(c.on_error.s())  # on the header tasks and the body
        failing_chord = failing_chord_sig.apply_async()
        for failing in (failing_chain, failing_chord):
            with pytest.raises(KeyError):
                failing.get()
        with pytest.raises(KeyError):
            failing_group.get()
        sim.run()
        done = {
            e["result"] for e in sim.history.where(kind="state", state="SUCCESS")
            if isinstance(e["result"], int)
        }  # fmt: skip
    assert {13, 7} <= done  # the chain's link got 3, the chord's link got 2
    assert sorted(c.errors) == sorted(
        [
            f"{failing_chain.id} KeyError",
            f"{failing_group.results[0].id} KeyError",
            f"{failing_chord.id} KeyError",
        ]
    )


def _unkept(c: Canvas) -> Any:
    @c.app.task(shared=False, name="cv.unkept", ignore_result=True)
    def unkept(x: int, y: int) -> int:
        return x + y

    return unkept


@pytest.mark.celery_version(
    min="5.7",
    why="on 5.5 this join hung on a real worker (and 5.5's iter_native cannot yield a "
    "group result); simq keeps the key-value join there",
)
def test_redis_chord_join_takes_what_is_stored_and_does_not_wait() -> None:
    """Redis: a header holding a group result is joined by the header task that completes
    the count (GroupResult.join_native after header_result.on_ready(), redis.py
    on_chord_part_return). Celery's asynchronous result consumer reads the stored states
    once: a member whose result is never stored (ignore_result) joins as None, at once,
    whatever result_chord_join_timeout says. Recorded on a real worker (Celery 5.7,
    Redis, 2026-12-04): this chord returned [[3, 4], None] in 0.53 s with a 2 s timeout."""
    c = Canvas()
    c.app.conf.result_chord_join_timeout = 7
    header = [c.add.s(1, 1) | celery.group(c.add.s(1), c.add.s(2)), _unkept(c).s(3, 3)]
    with simq.Simulation(c.app, durations={"cv.add": 1, "cv.unkept": 1}) as sim:
        result = celery.chord(header, c.same.s()).apply_async()
        assert result.get() == [[3, 4], None]
        sim.run()
        body = sim.history.where(kind="started", task="cv.same")
    # The last part ended at 4 s; Celery's one read of the header sleeps one 0.5 s poll
    # interval when a member is not ready (get_many, max_iterations=1).
    assert [e.time - sim.started_at for e in body] == [4.5]


@pytest.mark.parametrize("join_timeout", [None, 7.0])
def test_key_value_chord_join_waits_result_chord_join_timeout(
    join_timeout: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery's generic key-value chord (the cache and memcached backends; simq's store
    without the redis package) joins the header by polling the store for at most
    result_chord_join_timeout seconds (3 by default), counted by Celery's get_many loop in
    virtual time. A member whose result is never stored makes it time out: the chord
    fails with ChordError and the body never runs."""
    import simq.seams.backend

    monkeypatch.setattr(simq.seams.backend, "RedisBackend", None)
    c = Canvas()
    if join_timeout is not None:
        c.app.conf.result_chord_join_timeout = join_timeout
    waited = join_timeout or 3.0
    unkept = _unkept(c)
    with pytest.warns(RuntimeWarning, match="generic key-value counter"):
        sim = simq.Simulation(c.app, durations={"cv.add": 1, "cv.unkept": 1})
    with sim:
        result = celery.chord([c.add.s(1, 1), unkept.s(3, 3)], c.tsum.s()).apply_async()
        with pytest.raises(celery.exceptions.ChordError) as caught:
            result.get()
        sim.run()
        stored = sim.history.where(kind="state", task_id=result.id)
    assert str(caught.value) == f"Join error: TimeoutError('Operation timed out ({waited})')"
    # The last header part ended at 2 s; its child polled the store until 2 s + timeout.
    assert [(e["state"], e.time - sim.started_at) for e in stored] == [("FAILURE", 2 + waited)]
    assert not sim.history.where(kind="started", task="cv.tsum")


def test_parent_children_and_collect() -> None:
    """AsyncResult.parent links a chain's steps; children and collect() walk the graph."""
    c = Canvas()

    @c.app.task(shared=False, name="cv.spawn")
    def spawn(n: int) -> Any:
        return celery.group(c.add.s(i, i) for i in range(n)).delay()

    with simq.Simulation(c.app) as sim:
        last = (c.add.s(1, 1) | c.add.s(1)).apply_async()
        assert last.get() == 3
        assert last.parent is not None and last.parent.get() == 2
        root = spawn.delay(2)
        root.get()
        sim.run()
        collected = [v for _, v in root.collect() if isinstance(v, int)]
        assert len(root.children) == 1
    assert sorted(collected) == [0, 2]


def test_unknown_result_backend_is_refused() -> None:
    """result_backend= names one of the modelled backends; a typo gets a suggestion."""
    c = Canvas()
    with pytest.raises(simq.exceptions.InvalidArgument, match=r"result_backend.*'redis'"):
        simq.Simulation(c.app, result_backend="rediss")


def test_without_celerys_redis_backend_the_fallback_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where Celery's Redis backend module cannot be imported (no redis package), the
    default chord store falls back to Celery's generic counter, with a warning naming the
    fix rather than silently."""
    import simq.seams.backend

    monkeypatch.setattr(simq.seams.backend, "RedisBackend", None)
    app = celery.Celery("fallback", set_as_current=False)
    with pytest.warns(RuntimeWarning, match=r"pip install 'celery\[redis\]'") as caught:
        sim = simq.Simulation(app, result_backend="redis")
    sim.close()
    assert [w.category for w in caught] == [RuntimeWarning]
    assert "generic key-value counter" in str(caught[0].message)
    # Celery's generic KV chord path, as BaseKeyValueStoreBackend.__init__ chose it.
    assert sim.backend.apply_chord.__func__.__name__ == "_apply_chord_incr"
