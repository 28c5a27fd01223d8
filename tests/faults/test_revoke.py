"""Revoke and terminate (G10 of CELERY_SEMANTICS.md §3.2, §2.2, and the revoked rows of
§3.1)."""

from __future__ import annotations

import time

import celery
import pytest
from celery import states
from celery.exceptions import TaskRevokedError

#: Celery's revoke command stores REVOKED itself from 5.6.2 (worker/control.py _revoke
#: calls backend.mark_as_revoked); 5.5's only adds the id to the worker's revoked set.
REVOKE_MARKS_REVOKED = (celery.VERSION.major, celery.VERSION.minor, celery.VERSION.micro) >= (
    5,
    6,
    2,
)
REVOKED = "TaskRevokedError('revoked')"
TERMINATED = "TaskRevokedError('terminated')"


def tasks(app):
    effects = []

    @app.task
    def early(i):
        effects.append(("begin", i))
        time.sleep(10)
        effects.append(("end", i))
        return i

    @app.task(acks_late=True)
    def late(i):
        effects.append(("begin", i))
        time.sleep(10)
        effects.append(("end", i))
        return i

    return early, late, effects


def test_revoke_before_delivery_marks_revoked_and_skips_at_receipt(app, simulation, trail):
    """Revoked before it reaches a worker: REVOKED at once (5.6+), and on receipt
    'revoked', REVOKED, ack, never started (§3.1, G10)."""
    early, _, effects = tasks(app)
    sim = simulation(app, prefetch_multiplier=1)
    early.delay(1), early.delay(2)  # one runs, one is reserved: the third waits in the queue
    r = early.delay(3)
    sim.revoke(r.id, at=1)
    sim.run()
    assert trail(sim, r.id) == [
        "0 published m3 retries=0",
        "1 revoke",
        *([f"1 state REVOKED {REVOKED}"] if REVOKE_MARKS_REVOKED else []),
        "10 delivered m3 worker-1",
        "10 revoked m3 revoked",
        f"10 state REVOKED {REVOKED}",
        "10 acked m3",
    ]
    assert ("begin", 3) not in effects
    with pytest.raises(TaskRevokedError, match=r"^revoked$"):
        r.get()


def test_revoke_while_eta_held_skips_the_task_at_its_eta(app, simulation, trail):
    """A revoked ETA-held message never runs: REVOKED at once, and at the ETA it is
    announced revoked and only then acked (G10)."""
    early, _, effects = tasks(app)
    sim = simulation(app)
    r = early.apply_async((1,), countdown=30)
    sim.revoke(r.id, at=5)
    sim.run()
    assert trail(sim, r.id) == [
        "0 published m1 retries=0 eta=2030-01-01T00:00:30+00:00",
        "0 delivered m1 worker-1",
        "5 revoke",
        *([f"5 state REVOKED {REVOKED}"] if REVOKE_MARKS_REVOKED else []),
        "30 revoked m1 revoked",
        f"30 state REVOKED {REVOKED}",
        "30 acked m1",
    ]
    assert effects == []
    assert sim.check() == []


@pytest.mark.parametrize("acks_late", [False, True])
def test_terminate_kills_the_running_task(app, simulation, trail, acks_late):
    """revoke(terminate=True) kills the child: 'revoked' terminated, REVOKED('terminated'),
    the ack (acks_late) or acked at start; the rest of the body never runs (§3.1, G10)."""
    early, late, effects = tasks(app)
    sim = simulation(app)
    r = (late if acks_late else early).delay(1)
    sim.advance(5)
    r.revoke(terminate=True)
    sim.run()
    expected = [
        "0 published m1 retries=0",
        "0 delivered m1 worker-1",
        "0 started m1 worker-1 retries=0",
        "5 control",  # AsyncResult.revoke broadcasts on the control exchange
        "5 revoke terminate",
        "5 revoked m1 terminated",
        f"5 state REVOKED {TERMINATED}",
    ]
    if acks_late:
        expected.append("5 acked m1")
    else:
        expected.insert(3, "0 acked m1")
    assert trail(sim, r.id) == expected
    assert effects == [("begin", 1)]
    with pytest.raises(TaskRevokedError, match=r"^terminated$"):
        r.get()
    assert sim.check() == []


def test_app_control_revoke_terminates_with_a_signal(app, simulation):
    """app.control.revoke(id, terminate=True, signal=...) terminates like AsyncResult.revoke
    and the revoke event carries the signal (G10)."""
    _, late, effects = tasks(app)
    sim = simulation(app)
    r = late.delay(1)
    sim.advance(1)
    app.control.revoke(r.id, terminate=True, signal="SIGKILL")
    sim.run()
    revoke = sim.history.where(kind="revoke").first()
    assert (revoke["terminate"], revoke["signal"], revoke["workers"]) == (
        True,
        "SIGKILL",
        ["worker-1"],
    )
    assert r.state == states.REVOKED
    assert effects == [("begin", 1)]


def test_revoke_without_terminate_lets_the_running_task_finish(app, simulation, trail):
    """Without terminate the running task completes; the worker running it does not mark
    it REVOKED, so SUCCESS is stored (G10)."""
    early, _, effects = tasks(app)
    sim = simulation(app)
    r = early.delay(1)
    sim.revoke(r.id, at=5)
    assert r.get() == 1
    assert trail(sim, r.id)[-3:] == ["5 revoke", "10 state SUCCESS 1", "10 succeeded m1"]
    assert effects == [("begin", 1), ("end", 1)]


@pytest.mark.celery_version(
    min="5.6.2",
    why="5.5's revoke command does not store REVOKED (worker/control.py _revoke has no "
    "mark_as_revoked)",
)
def test_a_revoke_seen_by_an_idle_worker_is_overwritten_by_the_run(app, simulation, trail):
    """With two workers the one not running the task marks it REVOKED; the run then stores
    SUCCESS over it: REVOKED -> SUCCESS (§2.2, G10)."""
    early, _, _ = tasks(app)
    sim = simulation(app, workers=2)
    r = early.delay(1)
    sim.revoke(r.id, at=5)
    sim.advance(6)
    assert r.state == states.REVOKED
    sim.run()
    assert r.state == states.REVOKED  # AsyncResult caches the first ready state (§2.3)
    r = app.AsyncResult(r.id)
    assert trail(sim, r.id)[-4:] == [
        "5 revoke",
        f"5 state REVOKED {REVOKED}",
        "10 state SUCCESS 1",
        "10 succeeded m1",
    ]
    assert r.state == states.SUCCESS


def test_a_started_task_is_not_marked_revoked_by_another_worker(app, simulation):
    """A task that stored STARTED keeps it: revoke marks only PENDING/RECEIVED/RETRY/
    REJECTED states (§2.2, test_revoke_keeps_state_of_task_started_elsewhere)."""

    @app.task(track_started=True)
    def tracked():
        time.sleep(10)
        return "done"

    sim = simulation(app, workers=2)
    r = tracked.delay()
    sim.revoke(r.id, at=5)
    sim.run()
    assert [e["state"] for e in sim.history.where(kind="state")] == [states.STARTED, states.SUCCESS]


def test_a_revoke_while_no_worker_is_online_is_lost(app, simulation, trail):
    """A revoke broadcast while no worker is up reaches nobody: a later worker runs the
    task (G10, the expected negative case)."""
    early, _, effects = tasks(app)
    sim = simulation(app)
    sim.crash_worker("worker-1")
    r = early.delay(1)
    sim.revoke(r.id)
    sim.add_worker("w2")
    assert r.get() == 1
    assert sim.history.where(kind="revoke").first()["workers"] == []
    assert not sim.history.where(kind="state", state=states.REVOKED)
    assert effects == [("begin", 1), ("end", 1)]


def test_revoked_ids_are_forgotten_when_the_worker_restarts(app, simulation, trail):
    """The revoked set lives in the worker's memory: after a crash and restart the
    redelivered message runs, and its SUCCESS replaces REVOKED (G10, no --statedb)."""
    early, _, _ = tasks(app)
    sim = simulation(app, prefetch_multiplier=1)
    early.delay(0)
    r = early.delay(1)
    sim.revoke(r.id, at=1)
    sim.crash_worker("worker-1", at=2, restart_after=1)
    sim.run()
    assert app.AsyncResult(r.id).get() == 1
    marked = [states.REVOKED] if REVOKE_MARKS_REVOKED else []
    assert [e["state"] for e in sim.history.where(kind="state", task_id=r.id)] == [
        *marked,
        states.SUCCESS,
    ]
    assert not sim.history.where(kind="revoked", task_id=r.id)


def test_revoke_takes_several_ids_at_a_time(app, simulation):
    """revoke accepts a list of ids; each gets its own revoke event (G10)."""
    early, _, _ = tasks(app)
    sim = simulation(app, workers=0)
    a, b = early.delay(1), early.delay(2)
    sim.add_worker("w1", queues=["elsewhere"])
    sim.revoke([a.id, b.id])
    assert [e.task_id for e in sim.history.where(kind="revoke")] == [a.id, b.id]
    state = states.REVOKED if REVOKE_MARKS_REVOKED else states.PENDING
    assert (a.state, b.state) == (state, state)
