"""The pool child running a task dies: kill_child, os._exit, SystemExit, KeyboardInterrupt
(G3 of CELERY_SEMANTICS.md §3.2 and the "child died" rows of §3.1)."""

from __future__ import annotations

import os
import re
import time

import celery
import pytest
from celery import signals, states
from celery.exceptions import WorkerLostError

from simq.exceptions import UnknownTarget

#: On the polling transport Celery 5.7 sends an ack at once (Consumer.call_soon_ack).
POLLING_ACKS_AT_ONCE = pytest.mark.celery_version(
    min="5.7", why="Celery 5.5 queues acks for synloop's next turn (Consumer.call_soon)"
)

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)

#: billiard's mark_as_worker_lost (billiard/pool.py:1365-1369) names the job: its number
#: counts the jobs of this worker process from 0 (billiard's job_counter).
SIGKILL_LOST = "WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL) Job: 0.')"


def sigkill_lost(job: int) -> str:
    return f"WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL) Job: {job}.')"


def sleeper(app, **options):
    """A task that records each attempt as (retries, redelivered), then sleeps 10 s."""
    attempts = []

    @app.task(bind=True, name="shop.sleeper", **options)
    def sleeper_task(self):
        attempts.append((self.request.retries, self.request.delivery_info["redelivered"]))
        time.sleep(10)
        return "done"

    return sleeper_task, attempts


def test_killed_child_of_an_early_ack_task_stores_failure(app, simulation, trail):
    """By default the message was acked at start; FAILURE(WorkerLostError) is stored and
    the task never runs again (§3.1, G3)."""
    task, attempts = sleeper(app)
    sim = simulation(app)
    r = task.delay()
    sim.kill_child(r.id, at=2)
    with pytest.raises(
        WorkerLostError, match=r"^Worker exited prematurely: signal 9 \(SIGKILL\) Job: 0\.$"
    ):
        r.get()
    sim.run()
    assert trail(sim, r.id) == [
        "0 published m1 retries=0",
        "0 delivered m1 worker-1",
        "0 started m1 worker-1 retries=0",
        "0 acked m1",
        "2 child-killed m1 exitcode=-9",
        "2 child-lost m1 exitcode=-9",
        f"2 state FAILURE {SIGKILL_LOST}",
    ]
    assert attempts == [(0, False)]
    assert sim.check() == []


@pytest.mark.parametrize(
    ("exitcode", "message"),
    [
        (-9, "signal 9 (SIGKILL)"),
        (-15, "signal 15 (SIGTERM)"),
        (0, "exitcode 0"),
        (3, "exitcode 3"),
    ],
)
def test_the_exit_code_names_the_lost_worker(app, simulation, exitcode, message):
    """A negative exit code is reported as the signal, a positive one as the exit code,
    then billiard's job number (billiard/common.py human_status, pool.py:1365) (G3)."""
    task, _ = sleeper(app)
    sim = simulation(app)
    r = task.delay()
    sim.kill_child(r.id, at=1, exitcode=exitcode)
    with pytest.raises(
        WorkerLostError, match=rf"^Worker exited prematurely: {re.escape(message)} Job: 0\.$"
    ):
        r.get()


@pytest.mark.parametrize(
    ("transport", "ack_first"),
    [
        ("amqp", False),
        ("redis", False),
        ("sqs", False),
        pytest.param("polling", True, marks=POLLING_ACKS_AT_ONCE),
    ],
)
def test_killed_child_is_acked_even_with_acks_late(app, simulation, trail, transport, ack_first):
    """With acks_late alone the lost child's message is acked and FAILURE is stored:
    one run (G3). Request.on_failure asks for the ack before mark_as_failure
    (request.py:766-790) through Consumer.call_soon_ack: on an event loop (amqp, redis,
    sqs) the ack goes out after the callback, so FAILURE lands first; on Celery 5.7's
    synchronous loop (kombu's polling transports) it goes out at once."""
    task, attempts = sleeper(app, acks_late=True)
    sim = simulation(app, transport=transport)
    r = task.delay()
    sim.kill_child(r.id, at=2)
    sim.run()
    ack, failure = "2 acked m1", f"2 state FAILURE {SIGKILL_LOST}"
    assert trail(sim, r.id)[-4:] == [
        "2 child-killed m1 exitcode=-9",
        "2 child-lost m1 exitcode=-9",
        *((ack, failure) if ack_first else (failure, ack)),
    ]
    assert attempts == [(0, False)]
    assert sim.check() == []


def test_acks_late_without_acks_on_failure_rejects_the_lost_child(app, simulation, trail):
    """With acks_late and acks_on_failure=False the lost child's message is rejected
    without requeue, and FAILURE is stored (§3.1, request.py:766-790), first on an event
    loop (the reject goes out after the callback)."""
    # 5.5 has only the combined flag; acks_on_failure is new in 5.7 (app/task.py).
    flag = "acks_on_failure" if CELERY_VERSION >= (5, 7) else "acks_on_failure_or_timeout"
    task, attempts = sleeper(app, acks_late=True, **{flag: False})
    sim = simulation(app)
    r = task.delay()
    sim.kill_child(r.id, at=2)
    sim.run()
    assert trail(sim, r.id)[-2:] == [
        f"2 state FAILURE {SIGKILL_LOST}",
        "2 rejected m1 requeue=False",
    ]
    assert attempts == [(0, False)]


def test_reject_on_worker_lost_requeues_and_runs_again(app, simulation, trail):
    """acks_late + reject_on_worker_lost: rejected with requeue, nothing stored, and the
    next run has the same request.retries (§3.1, G3 die_requeue)."""
    task, attempts = sleeper(app, acks_late=True, reject_on_worker_lost=True)
    sim = simulation(app)
    r = task.delay()
    sim.kill_child(r.id, at=2)
    assert r.get() == "done"
    assert trail(sim, r.id) == [
        "0 published m1 retries=0",
        "0 delivered m1 worker-1",
        "0 started m1 worker-1 retries=0",
        "2 child-killed m1 exitcode=-9",
        "2 child-lost m1 exitcode=-9",
        "2 rejected m1 requeue=True",
        "2 delivered m1 worker-1 redelivered",
        "2 started m1 worker-1 retries=0",
        "12 state SUCCESS 'done'",
        "12 succeeded m1",
        "12 acked m1",
    ]
    assert attempts == [(0, False), (0, True)]
    assert sim.check() == []


def test_reject_on_worker_lost_setting_applies_to_acks_late_tasks(simulation):
    """task_reject_on_worker_lost fills an unset reject_on_worker_lost (§1.2, G3)."""
    import simq

    app = simq.App("shop", task_reject_on_worker_lost=True, task_acks_late=True)
    task, attempts = sleeper(app)
    sim = simulation(app)
    r = task.delay()
    sim.kill_child(r.id, at=2)
    assert r.get() == "done"
    assert attempts == [(0, False), (0, True)]


def test_reject_on_worker_lost_without_acks_late_has_no_effect(app, simulation):
    """Without acks_late the message was acked at start: FAILURE, no second run (§3.1)."""
    task, attempts = sleeper(app, reject_on_worker_lost=True)
    sim = simulation(app)
    r = task.delay()
    sim.kill_child(r.id, at=2)
    with pytest.raises(WorkerLostError):
        r.get()
    sim.run()
    assert attempts == [(0, False)]
    assert not sim.history.where(kind="rejected")


@pytest.mark.celery_version(min="5.7", why="Task.retry_on_worker_lost is new in 5.7 (app/task.py)")
@pytest.mark.parametrize("acks_late", [False, True])
def test_retry_on_worker_lost_retries_then_fails_when_exhausted(app, simulation, trail, acks_late):
    """retry_on_worker_lost publishes a retry (retries+1, eta now+default_retry_delay) and
    stores RETRY; the second death with max_retries=1 is FAILURE: PENDING->RETRY->FAILURE
    (§3.1, G3 die_retry, G18)."""
    task, attempts = sleeper(
        app, acks_late=acks_late, retry_on_worker_lost=True, max_retries=1, default_retry_delay=7
    )
    sim = simulation(app)
    r = task.delay()
    sim.kill_child(r.id, at=2)
    sim.advance(10)
    sim.kill_child(r.id, at=2)
    sim.run()
    first = [
        "2 child-killed m1 exitcode=-9",
        "2 child-lost m1 exitcode=-9",
        "2 published m2 retries=1 eta=2030-01-01T00:00:09+00:00",
        f"2 state RETRY {SIGKILL_LOST}",
    ]
    second = [
        "12 child-killed m2 exitcode=-9",
        "12 child-lost m2 exitcode=-9",
    ]
    # The worker's second job: billiard numbers them from 0.
    if acks_late:
        assert trail(sim, r.id)[3:] == [
            *first,
            "2 acked m1",
            "2 delivered m2 worker-1",
            "9 started m2 worker-1 retries=1",
            *second,
            f"12 state FAILURE {sigkill_lost(1)}",
            "12 acked m2",
        ]
    else:
        assert trail(sim, r.id)[4:] == [
            *first,
            "2 delivered m2 worker-1",
            "9 started m2 worker-1 retries=1",
            "9 acked m2",
            *second,
            f"12 state FAILURE {sigkill_lost(1)}",
        ]
    assert attempts == [(0, False), (1, False)]
    assert [e["state"] for e in sim.history.where(kind="state")] == [states.RETRY, states.FAILURE]
    assert sim.check() == []


@pytest.mark.celery_version(min="5.7", why="Task.retry_on_worker_lost is new in 5.7 (app/task.py)")
def test_exhausted_retry_on_worker_lost_does_not_apply_reject_on_worker_lost(
    app, simulation, trail
):
    """With retries exhausted, reject_on_worker_lost is not applied: FAILURE and an ack
    (§3.1, request.py:749-790)."""
    task, attempts = sleeper(
        app, acks_late=True, retry_on_worker_lost=True, reject_on_worker_lost=True, max_retries=0
    )
    sim = simulation(app)
    r = task.delay()
    sim.kill_child(r.id, at=2)
    sim.run()
    assert trail(sim, r.id)[-3:] == [
        "2 child-lost m1 exitcode=-9",
        f"2 state FAILURE {SIGKILL_LOST}",
        "2 acked m1",
    ]
    assert attempts == [(0, False)]
    assert sim.check() == []


@pytest.mark.celery_version(min="5.7", why="Task.retry_on_worker_lost is new in 5.7 (app/task.py)")
def test_retry_on_worker_lost_stores_no_retry_when_the_result_is_ignored(app, simulation):
    """With ignore_result the retry is still sent but RETRY is not stored (§3.1)."""
    task, attempts = sleeper(
        app, retry_on_worker_lost=True, ignore_result=True, default_retry_delay=1
    )
    sim = simulation(app)
    r = task.delay()
    sim.kill_child(r.id, at=2)
    sim.run()
    assert attempts == [(0, False), (1, False)]
    assert not sim.history.where(kind="state")


@pytest.mark.celery_version(
    min="5.7",
    why="5.5's Request.on_failure stores FAILURE(WorkerLostError) after a stored SUCCESS "
    "(no _success_was_stored check) and fires the errbacks",
)
def test_a_child_lost_after_success_was_stored_keeps_success(app, simulation, trail):
    """A child killed in after_return, after SUCCESS was stored, keeps SUCCESS: no FAILURE,
    no errback, the acks_late message is acked (§3.1, 5.7)."""
    errbacks = []

    @app.task
    def on_error(request, exc, traceback):
        errbacks.append(exc)

    class Lingering(app.Task):
        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            time.sleep(5)

    @app.task(base=Lingering, acks_late=True)
    def finish():
        return "stored"

    sim = simulation(app)
    r = finish.apply_async(link_error=on_error.s())
    sim.kill_child(r.id, at=1)
    sim.run()
    assert trail(sim, r.id)[-5:] == [
        "0 started m1 worker-1 retries=0",
        "0 state SUCCESS 'stored'",
        "1 child-killed m1 exitcode=-9",
        "1 child-lost m1 exitcode=-9",
        "1 acked m1",
    ]
    assert r.get() == "stored"
    assert errbacks == []


@pytest.mark.parametrize("hook", ["on_success", "after_return"])
def test_a_hook_that_exits_the_child_after_success_keeps_success(app, simulation, hook):
    """os._exit or SystemExit in on_success/after_return ends the child after SUCCESS was
    stored; SUCCESS stays and the test process lives on (§3.1)."""

    def die(self, *args):
        raise SystemExit(2)

    base = type("Dying", (app.Task,), {hook: die})

    @app.task(base=base)
    def finish():
        return "stored"

    sim = simulation(app)
    r = finish.delay()
    assert r.get() == "stored"
    assert sim.history.where(kind="child-lost").first()["exitcode"] == 2
    assert not sim.history.where(kind="state", state=states.FAILURE)


@pytest.mark.celery_version(
    min="5.7",
    why="5.5's Request.on_failure does not turn the job's own SystemExit/KeyboardInterrupt "
    "(reported by billiard 4.3) into WorkerLostError; it tries to store FAILURE(SystemExit), "
    "which json cannot encode (backends/base.py encode_result: Exception only)",
)
@pytest.mark.parametrize(
    ("exc", "message", "code"),
    [
        (SystemExit(3), "exitcode 3", 3),
        (SystemExit(), "exitcode 0", 0),
        (SystemExit("boom"), "exitcode 1", 1),
        (KeyboardInterrupt(), "KeyboardInterrupt", 1),
    ],
)
def test_a_task_raising_system_exit_or_keyboard_interrupt_is_a_dead_child(
    app, simulation, exc, message, code
):
    """SystemExit and KeyboardInterrupt in the body end the child: WorkerLostError, and
    the test process survives (G3, test_on_failure_exit_from_task_itself_is_worker_lost)."""

    @app.task
    def leave():
        raise exc

    sim = simulation(app)
    r = leave.delay()
    with pytest.raises(WorkerLostError, match=rf"^Worker exited prematurely: {message}\.$"):
        r.get()
    assert sim.history.where(kind="child-lost").first()["exitcode"] == code


class Fatal(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


def test_another_base_exception_escaping_the_tracer_fails_the_task_and_the_child_lives(
    app, simulation
):
    """billiard's child reports any BaseException escaping the tracer as the job's failure
    and goes on; only SystemExit and KeyboardInterrupt end it (billiard/pool.py:368-416).
    Request.on_failure stores FAILURE(exc); no child is lost (G3)."""
    inits = []

    @signals.worker_process_init.connect(weak=False)
    def count_init(**_):
        inits.append(1)

    @app.task
    def fatal():
        raise Fatal("deep")

    @app.task
    def ok():
        return "fine"

    try:
        sim = simulation(app)
        r = fatal.delay()
        after = ok.delay()
        assert after.get() == "fine"
        # 5.5's backend prepares only an Exception for storing (backends/base.py
        # encode_result; 5.7: BaseException): json cannot encode Fatal, so the FAILURE
        # write fails in Request.on_failure and the task stays PENDING.
        assert r.state == (states.FAILURE if CELERY_VERSION >= (5, 7) else states.PENDING)
    finally:
        signals.worker_process_init.disconnect(count_init)
    if CELERY_VERSION >= (5, 7):
        stored = sim.history.where(kind="state", task_id=r.id).last()["result"]
        assert (stored["exc_type"], stored["exc_message"]) == ("Fatal", ["deep"])
        assert sim.history.where(task_id=r.id).kinds()[-2:] == ["failed", "state"]
    else:
        assert sim.history.where(task_id=r.id).kinds()[-1] == "failed"
        assert not sim.history.where(kind="state", task_id=r.id)
    assert not sim.history.where(kind="child-lost")
    assert inits == [1]  # one child ran both tasks
    assert sim.check() == []


def test_os_exit_ends_the_child_where_it_stands(app, simulation, trail):
    """os._exit(3) in a task ends only the simulated child: no code after it runs, not even
    finally; FAILURE(WorkerLostError exitcode 3 Job: 0), billiard's mark_as_worker_lost
    (G3, exp3)."""
    effects = []

    @app.task
    def bail():
        effects.append("before")
        try:
            os._exit(3)
            effects.append("after")
        finally:
            effects.append("finally")

    sim = simulation(app)
    r = bail.delay()
    with pytest.raises(WorkerLostError, match=r"^Worker exited prematurely: exitcode 3 Job: 0\.$"):
        r.get()
    assert effects == ["before"]
    assert trail(sim, r.id)[-3:] == [
        "0 acked m1",
        "0 child-lost m1 exitcode=3",
        "0 state FAILURE WorkerLostError('Worker exited prematurely: exitcode 3 Job: 0.')",
    ]


def test_a_fresh_child_takes_the_slot_after_a_death(app, simulation):
    """The dead child is replaced: the next task on that slot runs normally (G3, G12a)."""

    @app.task
    def die():
        os._exit(1)

    @app.task
    def ok():
        return "fine"

    sim = simulation(app)
    die.delay()
    r = ok.delay()
    assert r.get() == "fine"
    assert sim.history.where(kind="started").kinds() == ["started", "started"]


def test_the_killed_child_keeps_side_effects_made_before_the_kill(app, simulation):
    """Effects before the kill stay; the code after the interrupted sleep never runs (G3)."""
    effects = []

    @app.task
    def step():
        effects.append("charged")
        time.sleep(10)
        effects.append("shipped")

    sim = simulation(app)
    r = step.delay()
    sim.kill_child(r.id, at=5)
    sim.run()
    assert effects == ["charged"]


def test_killing_a_task_that_is_not_running_names_the_running_ones(app, simulation):
    """kill_child on a task no child runs is an UnknownTarget listing the running tasks."""
    task, _ = sleeper(app)
    sim = simulation(app, workers=0)
    waiting = task.delay()
    with pytest.raises(
        UnknownTarget, match=rf"^no child is running task '{waiting.id}'; running now: none$"
    ):
        sim.kill_child(waiting.id)
    sim.add_worker()
    sim.advance(1)
    running = sim.history.where(kind="started").first().task_id
    other = task.delay()
    with pytest.raises(
        UnknownTarget, match=rf"^no child is running task '{other.id}'; running now: {running}$"
    ):
        sim.kill_child(other.id)


def test_a_planned_kill_of_a_task_no_longer_running_is_skipped_and_recorded(app, simulation):
    """A kill planned for a moment when the task has already finished acts on nothing:
    the history says so (``fault-skipped``) and the run goes on; nothing is raised into
    whichever later call happens to drive the clock."""
    task, _ = sleeper(app)
    sim = simulation(app)
    first = task.delay()
    sim.kill_child(first.id, at=15)  # it finishes at 10
    second = task.apply_async(countdown=12)
    assert second.get() == "done"
    assert first.get() == "done"
    skipped = sim.history.where(kind="fault-skipped")
    assert [(e.task_id, e["fault"], e.time - sim.started_at) for e in skipped] == [
        (first.id, "kill_child", 15.0)
    ]
    assert skipped.first()["reason"].startswith(f"no child is running task '{first.id}'")
    assert len(sim.history.where(kind="child-killed")) == 0
    assert sim.check() == []


def test_os_kill_of_a_task_own_pid_kills_the_simulated_child_only(app, simulation):
    """Inside a task os.getpid() is the simulated child's pid (101, 102, ...), which may be
    a real process of the machine: os.kill on it signals the simulated child, never that
    process. The child dies by the signal, as ``kill -9 $$`` in a prefork child would."""

    @app.task(name="shop.suicide")
    def suicide():
        os.kill(os.getpid(), 9)
        return "never"

    sim = simulation(app)
    r = suicide.delay()
    with pytest.raises(WorkerLostError, match=r"signal 9 \(SIGKILL\)"):
        r.get()
    assert [e.kind for e in sim.history.where(task_id=r.id, kind="child-lost")] == ["child-lost"]
    assert sim.history.where(kind="child-lost").first()["exitcode"] == -9
    assert sim.check() == []


def test_os_kill_between_simulated_children(app, simulation):
    """One task signals another task's child by its simulated pid; a pid handed out to a
    child that is gone is ProcessLookupError, as for a dead process; signal 0 probes."""
    pids: dict[str, int] = {}

    @app.task(name="shop.victim")
    def victim():
        pids["victim"] = os.getpid()
        time.sleep(10)
        return "survived"

    @app.task(name="shop.killer")
    def killer():
        os.kill(pids["victim"], 0)  # alive: no error
        os.kill(pids["victim"], 15)
        try:
            os.kill(pids["victim"], 0)
        except ProcessLookupError:
            return "gone"
        return "still there"

    sim = simulation(app, concurrency=2)
    v = victim.delay()
    sim.advance(1)
    k = killer.delay()
    assert k.get() == "gone"
    with pytest.raises(WorkerLostError, match=r"signal 15 \(SIGTERM\)"):
        v.get()
    assert sim.check() == []
    # Outside a task (and for pids the simulation never handed out) os.kill is the real one.
    os.kill(os.getpid(), 0)
