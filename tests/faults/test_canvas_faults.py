"""Canvas under faults: what Celery's own chord, chain and group code does when a worker
crashes, a child dies, a visibility timeout copies a message or a group is revoked, on
each kind of chord support (``Simulation(result_backend=)``, issue 9).

Each docstring says whether the chord body runs once, twice or never, and why, citing
the Celery code (5.7.0) that decides it; the history is the evidence.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import celery
import pytest
from celery import states
from celery.exceptions import ChordError, TaskRevokedError, WorkerLostError

import simq

MODES = ["redis", "database"]


def tasks(app: celery.Celery) -> tuple[Any, Any, Any]:
    """``late`` (acks_late) and ``early`` header tasks of 10 s, and the ``tsum`` body."""

    @app.task(shared=False, name="shop.late", acks_late=True)
    def late(x: int, y: int) -> int:
        time.sleep(10)
        return x + y

    @app.task(shared=False, name="shop.early")
    def early(x: int, y: int) -> int:
        time.sleep(10)
        return x + y

    @app.task(shared=False, name="shop.tsum")
    def tsum(xs: list[int]) -> int:
        return sum(xs)

    return late, early, tsum


def starts(sim: simq.Simulation, name: str) -> list[str]:
    """The attempts of task ``name`` that started, in order."""
    ids = {e.task_id for e in sim.history.where(kind="published", task=name)}
    return [e["attempt"] for e in sim.history.where(kind="started") if e.task_id in ids]


def run_for(sim: simq.Simulation, seconds: float) -> None:
    sim.run(until=sim.now + dt.timedelta(seconds=seconds))


@pytest.mark.parametrize("mode", MODES)
def test_header_task_redelivered_after_a_crash_feeds_the_body_once(
    app: simq.App, mode: str
) -> None:
    """An acks_late header task running when its worker crashes is redelivered and runs
    again; the body runs ONCE in both modes. The crashed attempt wrote nothing, so the
    part is counted once: redis by RedisBackend.on_chord_part_return (called from
    mark_as_done after the second attempt's SUCCESS), database by celery.chord_unlock,
    which publishes the body only when GroupResult.ready() (celery/app/builtins.py
    unlock_chord). Evidence: each header task started twice (m2.1 then m2.2 ...), the body
    once, with the header's results."""
    late, _, tsum = tasks(app)
    with simq.Simulation(app, result_backend=mode, concurrency=2) as sim:
        result = celery.chord([late.s(1, 1), late.s(2, 2)], tsum.s()).apply_async()
        sim.crash_worker("worker-1", at=5, restart_after=3)
        run_for(sim, 60)
        assert result.get() == 6
        header = starts(sim, "shop.late")
        assert len(header) == 4 and all(a.endswith(".1") for a in header[:2])
        assert not any(a.endswith(".1") for a in header[2:])  # redelivered attempts
        assert len(starts(sim, "shop.tsum")) == 1
        unlock = starts(sim, "celery.chord_unlock")
        assert (len(unlock) > 0) == (mode == "database")


@pytest.mark.parametrize("mode", MODES)
def test_worker_crash_mid_chord_loses_an_early_acked_part_and_the_body_never_runs(
    app: simq.App, mode: str
) -> None:
    """Early-acked header tasks running when the worker crashes are lost (acked before
    they ran, G4): they stay PENDING, and the body NEVER runs in either mode. Redis:
    the part counter never reaches the chord size (CHORD_PART_RETURN_LUA only claims
    the dispatch when readycount == size). Database: celery.chord_unlock finds
    GroupResult.ready() false and retries every result_chord_retry_interval, for ever
    (max_retries=None in celery/app/builtins.py)."""
    _, early, tsum = tasks(app)
    with simq.Simulation(app, result_backend=mode, concurrency=2) as sim:
        result = celery.chord([early.s(1, 1), early.s(2, 2)], tsum.s()).apply_async()
        sim.crash_worker("worker-1", at=5, restart_after=3)
        run_for(sim, 60)
        assert result.state == states.PENDING
        assert len(starts(sim, "shop.early")) == 2
        assert starts(sim, "shop.tsum") == []
        unlock = starts(sim, "celery.chord_unlock")
        if mode == "database":
            assert len(unlock) > 50  # one poll a second (the default interval), still going
        else:
            assert unlock == []


@pytest.mark.parametrize("mode", MODES)
def test_child_killed_in_a_chain_step_fails_the_rest_of_the_chain(app: simq.App, mode: str) -> None:
    """A child killed (SIGKILL) in a chain's middle step: the early-acked step fails with
    WorkerLostError (Request.on_failure), Celery's backend.mark_as_failure marks every
    later step of request.chain FAILURE too, and they never run."""
    _, early, _ = tasks(app)
    with simq.Simulation(app, result_backend=mode) as sim:
        last = celery.chain(early.s(1, 1), early.s(2), early.s(3)).apply_async()
        middle = last.parent
        sim.kill_child(middle.id, at=15)
        sim.run()
        assert last.parent.parent.get() == 2
        with pytest.raises(WorkerLostError):
            middle.get()
        assert last.state == states.FAILURE
        assert isinstance(last.result, WorkerLostError)
        assert len(starts(sim, "shop.early")) == 2  # the last step never started


def test_visibility_timeout_copy_of_a_header_task_counts_once_on_redis(app: simq.App) -> None:
    """redis transport, visibility_timeout 5 s, acks_late 10 s header tasks: every 5 s a
    copy of each unacked header message is delivered again and runs alongside (kombu
    restores unacked messages). On the redis backend the body runs ONCE: each copy's
    SUCCESS after the first is refused (state-discarded), and CHORD_PART_RETURN_LUA
    counts a part once per task id and header index, and returns -1 for copies arriving
    after the chord's 'done' marker (celery/backends/redis.py)."""
    late, _, tsum = tasks(app)
    app.conf.broker_transport_options = {"visibility_timeout": 5}
    with simq.Simulation(app, transport="redis", concurrency=3) as sim:
        result = celery.chord([late.s(1, 1), late.s(2, 2)], tsum.s()).apply_async()
        run_for(sim, 40)
        assert result.get() == 6
        assert len(starts(sim, "shop.late")) > 2
        assert len(sim.history.where(kind="state-discarded")) > 0
        assert len(starts(sim, "shop.tsum")) == 1


def test_visibility_timeout_copy_of_chord_unlock_runs_the_body_twice_on_database(
    app: simq.App,
) -> None:
    """The same run on the database backend runs the body TWICE. The evidence: the
    chord_unlock retry waiting for its ETA in a busy worker is unacked, so the redis
    transport delivers a copy after the visibility timeout (requeued ... copy); both
    attempts run at 10 s, both find GroupResult.ready() true and both publish the body
    (unlock_chord has no claim: celery/app/builtins.py). The second body's SUCCESS is
    refused (state-discarded); its side effects happen twice."""
    late, _, tsum = tasks(app)
    app.conf.broker_transport_options = {"visibility_timeout": 5}
    with simq.Simulation(app, result_backend="database", transport="redis", concurrency=3) as sim:
        result = celery.chord([late.s(1, 1), late.s(2, 2)], tsum.s()).apply_async()
        run_for(sim, 40)
        assert result.get() == 6
        unlock = sim.history.where(kind="published", task="celery.chord_unlock").first()
        copies = sim.history.where(kind="requeued", task_id=unlock.task_id)
        assert [e["reason"] for e in copies] == ["visibility-timeout"]
        assert len(sim.history.where(kind="succeeded", task_id=unlock.task_id)) == 2
        assert len(sim.history.where(kind="published", task="shop.tsum")) == 2
        assert len(starts(sim, "shop.tsum")) == 2
        (discarded,) = sim.history.where(kind="state-discarded", task_id=result.id)
        assert discarded["state"] == states.SUCCESS


@pytest.mark.parametrize("mode", MODES)
def test_revoking_a_group_and_a_chord_header(app: simq.App, mode: str) -> None:
    """GroupResult.revoke() before the members run: the worker discards each (REVOKED,
    never started). Revoking a chord's header fails the body with ChordError and the body
    NEVER runs: the worker's mark_as_revoked calls on_chord_part_return with REVOKED,
    which RedisBackend turns into ChordError ("Dependency ... raised TaskRevokedError");
    on database, celery.chord_unlock finds the group ready and its join raises
    TaskRevokedError, sent to chord_error_from_stack. The body's get() raises the header's
    TaskRevokedError (AsyncResult._maybe_reraise_parent_error)."""
    _, early, tsum = tasks(app)
    with simq.Simulation(app, result_backend=mode) as sim:
        early.delay(0, 0)  # occupies the only child
        group = celery.group(early.s(1, 1), early.s(2, 2)).apply_async()
        body = celery.chord([early.s(3, 3), early.s(4, 4)], tsum.s()).apply_async()
        sim.advance(1)
        group.revoke()
        body.parent.revoke()
        sim.run()
        assert [r.state for r in group.results] == [states.REVOKED] * 2
        assert [r.state for r in body.parent.results] == [states.REVOKED] * 2
        assert body.state == states.FAILURE
        assert isinstance(body.result, ChordError)
        assert "TaskRevokedError" in str(body.result)
        with pytest.raises(TaskRevokedError):  # get() re-raises the parent's error first
            body.get()
        assert len(starts(sim, "shop.early")) == 1
        assert starts(sim, "shop.tsum") == []
