"""The canvas checkers C1-C4, on doctored histories, and what simq records for them."""

from __future__ import annotations

import time
from typing import Any

import celery
import pytest
from celery import chain, chord, group

import simq
from simq.checkers import CheckConfig, check_c1, check_c2, check_c3, check_c4, run_all
from tests.unit.checker_support import Story, exc, only

DONE = CheckConfig(complete=True)


def pub(s: Story, m: str, tid: str, task: str = "shop.add", **canvas: Any) -> Story:
    """Publish ``m`` (task ``tid``) with the canvas details ``canvas`` (parent_id too)."""
    s.tasks[m] = (tid, task)
    details: dict[str, Any] = {
        "task": task,
        "queue": "celery",
        "retries": canvas.pop("retries", 0),
        "eta": None,
        "expires": None,
        "priority": None,
        "parent_id": canvas.pop("parent_id", None),
        "root_id": tid,
    }
    return s.event("published", tid, m, None, **details, **canvas)


def run(s: Story, m: str, state: str = "SUCCESS", worker: str = "w1") -> Story:
    """Deliver, start, store ``state``, report and ack ``m``."""
    tid = s.tasks[m][0]
    s.deliver(m, worker).start(m, worker)
    if state == "SUCCESS":
        s.state(tid, "SUCCESS", 1, worker).succeeded(m, worker)
    else:
        s.state(tid, "FAILURE", exc("KeyError", "k"), worker).failed(m, worker=worker)
    return s.ack(m, worker)


def chain_story(parent_state: str = "SUCCESS") -> Story:
    """t1 | t2: t1's message names t2 as its next step; t1 runs and sends t2."""
    s = Story().online()
    pub(s, "m1", "t1", chain=["t2"])
    s.deliver("m1").start("m1")
    pub(s, "m2", "t2", parent_id="t1")
    if parent_state == "SUCCESS":
        s.state("t1", "SUCCESS", 1).succeeded("m1")
    else:
        s.state("t1", "FAILURE", exc("KeyError", "k")).failed("m1")
    s.ack("m1")
    return run(s, "m2")


# -- C1: chain steps run in order -------------------------------------------------------


def test_c1_passes_a_chain_whose_step_starts_after_its_parent_succeeded() -> None:
    """A step started after its parent's SUCCESS keeps C1."""
    assert check_c1(chain_story().history, DONE) == []


def test_c1_passes_a_step_that_starts_before_its_parent_stores_success() -> None:
    """trace.py sends the step before mark_as_done: a step may start in that window."""
    s = Story().online().online("w2")
    pub(s, "m1", "t1", chain=["t2"])
    s.deliver("m1").start("m1")
    pub(s, "m2", "t2", parent_id="t1")
    s.deliver("m2", "w2").start("m2", "w2")
    s.state("t1", "SUCCESS", 1).succeeded("m1").ack("m1")
    s.state("t2", "SUCCESS", 1, "w2").succeeded("m2", "w2").ack("m2", "w2")
    assert check_c1(s.history, DONE) == []


def test_c1_passes_a_parent_that_died_after_sending_its_step() -> None:
    """A worker crash between the dispatch and the store is the history's explanation."""
    s = Story().online().online("w2")
    pub(s, "m1", "t1", chain=["t2"])
    s.deliver("m1").start("m1")
    pub(s, "m2", "t2", parent_id="t1")
    s.fault("worker-crashed", restart_after=None)
    run(s, "m2", worker="w2")
    assert check_c1(s.history, DONE) == []


def test_c1_flags_a_step_whose_parent_failed() -> None:
    """A step that runs though its parent's only attempt failed breaks C1."""
    v = only(check_c1(chain_story("FAILURE").history, DONE), "C1")
    assert "shop.add[t2]" in v.message and "shop.add[t1]" in v.message
    assert [e.kind for e in v.events] == ["published", "published", "started", "failed", "started"]


def test_c1_flags_a_step_sent_before_its_parent_ran() -> None:
    """A step published and started before any attempt of its parent breaks C1."""
    s = Story().online()
    pub(s, "m1", "t1", chain=["t2"])
    pub(s, "m2", "t2", parent_id="t1")
    run(s, "m2")
    run(s, "m1")
    v = only(check_c1(s.history, DONE), "C1")
    assert "0 started" in v.message


def test_c1_flags_a_link_callback_of_a_failed_task() -> None:
    """A link callback (matched by name and parent) of a failed task breaks C1."""
    s = Story().online()
    pub(s, "m1", "t1", link=["shop.cb"])
    s.deliver("m1").start("m1")
    s.state("t1", "FAILURE", exc("KeyError", "k")).failed("m1").ack("m1")
    pub(s, "m2", "c1", task="shop.cb", parent_id="t1")
    run(s, "m2")
    assert only(check_c1(s.history, DONE), "C1").events[-1].task_id == "c1"


def test_c1_passes_a_group_as_the_next_step() -> None:
    """The members of a group step (``group`` = the step's id) start after the parent."""
    s = Story().online()
    pub(s, "m1", "t1", chain=["g1"])
    s.deliver("m1").start("m1")
    pub(s, "m2", "a", parent_id="t1", group="g1", group_index=0)
    s.state("t1", "SUCCESS", 1).succeeded("m1").ack("m1")
    run(s, "m2")
    assert check_c1(s.history, DONE) == []
    early = Story().online()
    pub(early, "m1", "t1", chain=["g1"])
    pub(early, "m2", "a", parent_id="t1", group="g1", group_index=0)
    run(early, "m2")
    assert only(check_c1(early.history, DONE), "C1").events[-1].task_id == "a"


# -- C2: a group's results are complete -------------------------------------------------


def group_story(second: bool = True) -> Story:
    s = Story().online()
    pub(s, "m1", "a", group="g1", group_index=0)
    pub(s, "m2", "b", group="g1", group_index=1)
    run(s, "m1")
    if second:
        run(s, "m2", state="FAILURE")
    else:
        s.deliver("m2").start("m2").ack("m2")  # started, then nothing: no state stored
    return s


def test_c2_passes_a_group_whose_members_all_reach_a_ready_state() -> None:
    """SUCCESS and FAILURE are both ready states: the group is complete."""
    assert check_c2(group_story().history, DONE) == []


def test_c2_flags_a_member_without_a_ready_state_at_the_end_of_a_complete_run() -> None:
    """A member that never stored SUCCESS, FAILURE or REVOKED breaks C2."""
    v = only(check_c2(group_story(second=False).history, DONE), "C2")
    assert "group g1: member shop.add[b] (index 1)" in v.message


def test_c2_does_not_judge_a_history_cut_short() -> None:
    """Without ``complete`` a member may still be on its way."""
    assert check_c2(group_story(second=False).history, CheckConfig()) == []


def test_c2_accepts_a_member_whose_message_the_broker_lost() -> None:
    """A lost message explains a missing result."""
    s = group_story(second=False)
    s.event("lost", "b", "m2", None, reason="broker-restarted")
    assert check_c2(s.history, DONE) == []


def test_c2_accepts_a_revoked_member_and_an_ignored_result() -> None:
    """A revoke, or a member whose result is ignored, explains a missing state."""
    s = group_story(second=False)
    s.event("revoke", "b", None, None, terminate=False, signal=None, workers=["w1"])
    assert check_c2(s.history, DONE) == []
    ignored = CheckConfig(complete=True, ignore_result={"shop.add": True})
    assert check_c2(group_story(second=False).history, ignored) == []


def test_c2_accepts_a_member_that_raised_ignore() -> None:
    """A member that raised Ignore stores nothing on purpose: the history says why."""
    s = Story().online()
    pub(s, "m1", "a", group="g1", group_index=0)
    s.deliver("m1").start("m1").ack("m1").outcome("ignored", "m1", exception=exc("Ignore"))
    assert check_c2(s.history, DONE) == []


# -- C3: a chord body runs once per completed join --------------------------------------


def chord_story(body_sends: int = 1, header_twice: bool = False) -> Story:
    s = Story().online()
    pub(s, "m1", "a", group="g1", group_index=0, chord="body")
    pub(s, "m2", "b", group="g1", group_index=1, chord="body")
    run(s, "m1")
    if header_twice:
        # b's worker crashed after it stored SUCCESS; redelivered, it ran again.
        s.deliver("m2").start("m2").state("b", "SUCCESS", 1).succeeded("m2")
        s.fault("worker-crashed", restart_after=None).requeued("m2", None)
        s.online("w2").deliver("m2", "w2", redelivered=True).start("m2", "w2")
        s.event("state-discarded", "b", None, "w2", state="SUCCESS", result=1)
        s.succeeded("m2", "w2").ack("m2", "w2")
    else:
        run(s, "m2")
    for n in range(body_sends):
        pub(s, f"mb{n}", "body", task="shop.tsum", parent_id="b", group="g1", group_index=None)
    return s


def test_c3_passes_a_chord_whose_body_is_sent_once() -> None:
    """One join, one body."""
    assert check_c3(chord_story().history, DONE) == []


def test_c3_flags_a_second_body_without_a_duplicate_header_task() -> None:
    """A body sent twice while every header task ran once breaks C3."""
    v = only(check_c3(chord_story(body_sends=2).history, DONE), "C3")
    assert "shop.tsum[body] was sent 2 times" in v.message
    assert [e.message_id for e in v.events] == ["mb0", "mb1"]


def test_c3_accepts_a_second_body_caused_by_a_redelivered_header_task() -> None:
    """A header task that ran twice counts twice: the second body is explained."""
    assert check_c3(chord_story(body_sends=2, header_twice=True).history, DONE) == []


def test_c3_does_not_count_the_body_s_own_retries() -> None:
    """A body that retries publishes itself again with retries > 0: still one body."""
    s = chord_story()
    pub(s, "mr", "body", task="shop.tsum", retries=1)
    assert check_c3(s.history, DONE) == []


def group_body_story(member_sends: int = 1, header_twice: bool = False) -> Story:
    """A chord whose body is a group: its members carry the header's group id, no chord
    (recorded so from Celery's code on the simulation)."""
    s = chord_story(body_sends=0, header_twice=header_twice)
    for n in range(member_sends):
        pub(s, f"mx{n}", "x", task="shop.show", parent_id="b", group="g1", group_index=0)
        pub(s, f"my{n}", "y", task="shop.show", parent_id="b", group="g1", group_index=1)
    return s


def test_c3_covers_a_group_body() -> None:
    """A group body's members sent twice are a second body, unless a header task ran
    twice; sent once, or with a duplicate header, it passes."""
    assert check_c3(group_body_story().history, DONE) == []
    v = only(check_c3(group_body_story(member_sends=2).history, DONE), "C3")
    assert "chord body group body: its member shop.show[x] was sent twice" in v.message
    assert [e.message_id for e in v.events] == ["mx0", "mx1"]
    assert check_c3(group_body_story(member_sends=2, header_twice=True).history, DONE) == []


def test_c3_passes_real_chords_with_group_bodies() -> None:
    """Celery's code on the simulation, both chord backends: one join, one group body."""
    for backend in ("redis", "database"):
        app = celery.Celery("c3-group", set_as_current=False)

        @app.task(name="c3.add", shared=False)
        def add(x: int, y: int) -> int:
            return x + y

        @app.task(name="c3.show", shared=False)
        def show(xs: list[int], tag: str) -> list[Any]:
            return [tag, xs]

        with simq.Simulation(app, workers=1, result_backend=backend) as sim:
            chord([add.s(1, 1), add.s(2, 2)], group(show.s("a"), show.s("b"))).delay()
            sim.run()
            members = [e for e in sim.history.where(kind="published") if e["task"] == "c3.show"]
            assert len(members) == 2 and all("chord" not in e.details for e in members)
            assert check_c3(sim.history, DONE) == []


# -- C4: an errback runs once per failure -----------------------------------------------


def errback_story(failures: int = 1, errbacks: int = 1) -> Story:
    s = Story().online()
    pub(s, "m1", "t1", link_error=["shop.on_err"])
    s.deliver("m1").start("m1")
    if failures:
        s.state("t1", "FAILURE", exc("KeyError", "k")).failed("m1")
    else:
        s.state("t1", "SUCCESS", 1).succeeded("m1")
    s.ack("m1")
    for n in range(errbacks):
        pub(s, f"me{n}", f"e{n}", task="shop.on_err", parent_id="t1", group=f"eg{n}")
    return s


def test_c4_passes_one_errback_for_one_failure() -> None:
    """One failure, one errback sent."""
    assert check_c4(errback_story().history, DONE) == []


def test_c4_flags_a_second_errback_for_one_failure() -> None:
    """Two errbacks for one failure break C4."""
    v = only(check_c4(errback_story(errbacks=2).history, DONE), "C4")
    assert v.message.startswith("errback shop.on_err of task [t1] was sent 2 times")


def test_c4_flags_an_errback_of_a_task_that_never_failed() -> None:
    """An errback sent for a task that succeeded breaks C4."""
    v = only(check_c4(errback_story(failures=0).history, DONE), "C4")
    assert "for 0 failure(s)" in v.message


def test_c4_passes_two_errbacks_for_two_failures() -> None:
    """A failing task redelivered and failing again sends its errback again."""
    s = errback_story()
    pub(s, "m1b", "t1", link_error=["shop.on_err"], retries=0)
    run(s, "m1b", state="FAILURE")
    pub(s, "me9", "e9", task="shop.on_err", parent_id="t1", group="eg9")
    assert check_c4(s.history, DONE) == []


# -- what simq records, and real canvases keep C1-C4 ------------------------------------


def make_app() -> tuple[celery.Celery, Any, Any, Any]:
    app = simq.App("canvas")

    @app.task(shared=False, name="canvas.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, name="canvas.tsum")
    def tsum(xs: list[int]) -> int:
        return sum(xs)

    @app.task(shared=False, name="canvas.on_err")
    def on_err(task_id: str) -> str:
        return task_id

    return app, add, tsum, on_err


def test_published_events_record_group_chord_chain_and_links() -> None:
    """A canvas's messages carry group, group_index, chord, chain, link and link_error."""
    app, add, tsum, on_err = make_app()
    with simq.Simulation(app) as sim:
        r1 = chain(add.s(1, 2), add.s(3), add.s(4)).delay()
        r2 = chord([add.s(i, i) for i in range(2)], tsum.s()).delay()
        r3 = add.s(1, 1).set(link=[add.s(5)], link_error=[on_err.s()]).delay()
        sim.run()
        assert (r1.get(), r2.get(), r3.get()) == (10, 2, 2)
        first = sim.history.where(kind="published", task_id=r1.parent.parent.id).first()
        assert first["chain"] == [r1.parent.id, r1.id]
        header = sim.history.where(kind="published", chord=r2.id)
        assert [e["group_index"] for e in header] == [0, 1]
        assert {e["group"] for e in header} == {r2.parent.id}
        linked = sim.history.where(kind="published", task_id=r3.id).first()
        assert (linked["link"], linked["link_error"]) == (["canvas.add"], ["canvas.on_err"])
        plain = sim.history.where(kind="published", task=["canvas.tsum"]).first()
        assert "chain" not in plain.details and "chord" not in plain.details
        assert run_all(sim.history, CheckConfig(complete=True)) == []
        assert sim.check() == []


def test_a_failing_task_with_an_errback_keeps_c4() -> None:
    """One failure sends its one-argument errback once: C4 holds on the simulation."""
    app, add, _, on_err = make_app()
    with simq.Simulation(app) as sim:
        add.s(1, "x").on_error(on_err.s()).delay()
        sim.run()
        sent = sim.history.where(kind="published", task="canvas.on_err")
        assert len(sent) == 1
        assert sim.check() == []


def test_the_conformance_recorder_records_the_same_canvas_keys(tmp_path: Any) -> None:
    """On a real Celery producer, the recorder's ``published`` carries chain, chord, links."""
    from simq_conformance.adapters._celery_recorder import CeleryRecorder
    from simq_conformance.sink import Sink, collect

    app = celery.Celery("rec", broker="memory://", backend="cache+memory://", set_as_current=False)

    @app.task(shared=False, name="probes.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, name="probes.on_err")
    def on_err(task_id: str) -> str:
        return task_id

    recorder = CeleryRecorder(Sink(tmp_path), publish_only=True).install()
    try:
        steps = chain(add.s(1, 2), add.s(3)).on_error(on_err.s()).apply_async()
        joined = chord([add.s(1, 1), add.s(2, 2)], add.s(5)).apply_async()
    finally:
        recorder.uninstall()
    history = collect(tmp_path)
    first = history.where(kind="published", task_id=steps.parent.id).first()
    assert (first["chain"], first["link_error"]) == ([steps.id], ["probes.on_err"])
    header = history.where(kind="published", chord=joined.id)
    assert [e["group_index"] for e in header] == [0, 1]


@pytest.mark.parametrize(("backend", "bodies"), [("redis", 1), ("database", 2)])
def test_a_chain_step_run_twice_sends_its_chord_twice_and_keeps_c1_to_c4(
    backend: str, bodies: int
) -> None:
    """A parent redelivered after a lost connection sends its chord step twice; the
    Redis counter fires the body once, chord_unlock twice, and C3 sees why (no alarm)."""
    app = celery.Celery("dup", set_as_current=False)

    @app.task(shared=False, name="dup.add", acks_late=True)
    def add(x: int, y: int) -> int:
        time.sleep(5)
        return x + y

    @app.task(shared=False, name="dup.tsum")
    def tsum(xs: list[int]) -> int:
        return sum(xs)

    with simq.Simulation(app, workers=2, result_backend=backend) as sim:
        r = chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s()).delay()
        sim.lose_connection("worker-1", at=2)
        sim.run()
        published = sim.history.where(kind="published", chord=r.id)
        header = [e for e in published if e["task"] != "celery.chord_unlock"]
        assert len(header) == 4  # the chord's two header tasks, sent twice
        # On the polling backends, chord_unlock names the body it polls for too.
        unlocks = len(published) - len(header)
        assert (unlocks > 0) == (backend != "redis")
        assert len(sim.history.where(kind="published", task_id=r.id)) == bodies
        assert sim.check() == []


def test_task_replace_with_a_chain_inside_a_chain_keeps_c1() -> None:
    """Task.replace gives the replaced task's id to the replacement's last step: the
    replaced task's own earlier message is not a step of the replacement (no C1 alarm)."""
    app, add, _, _ = make_app()

    @app.task(shared=False, bind=True, name="canvas.rep")
    def rep(self: celery.Task, x: int) -> Any:
        return self.replace(chain(add.s(x, 1), add.s(2)))

    with simq.Simulation(app) as sim:
        r = chain(add.s(1, 1), rep.s(), add.s(3)).delay()
        sim.run()
        assert r.get() == 8
        assert len(sim.history.where(kind="published", task_id=r.parent.id)) == 2
        assert sim.check() == []
