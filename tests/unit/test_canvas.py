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
