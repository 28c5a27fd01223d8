"""Every row of the ack decision table (CELERY_SEMANTICS.md §3.1), provoked by a scripted
fault, for acks_late off and on, with the task's whole history.

The outcome rows (returned, Retry, exception, Reject, Ignore) run on a message that a
crash sent back to the broker: a redelivered message follows the same row. The other rows
are the faults themselves: revoke, expiry, a dead child, terminate, a hard time limit, a
worker crash and a lost connection.

The broker is the RabbitMQ model, where Celery's worker runs an event loop: an ack or a
reject that ``Request.on_failure`` asks for goes out when the pool callback returns
(``Consumer.call_soon_ack``: ``hub.call_soon``), so after the FAILURE it stores next.
"""

from __future__ import annotations

import time

import celery
import pytest
from celery.exceptions import Ignore, Reject

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)
#: Celery's revoke command stores REVOKED itself from 5.6.2 (worker/control.py _revoke
#: calls backend.mark_as_revoked); 5.5's only adds the id to the worker's revoked set.
REVOKE_MARKS_REVOKED = (celery.VERSION.major, celery.VERSION.minor, celery.VERSION.micro) >= (
    5,
    6,
    2,
)

#: billiard's mark_as_worker_lost (billiard/pool.py:1365-1369): the status, then the job
#: number (this worker process's first job is 0).
LOST = "WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL) Job: 0.')"


def build(app, options):
    """``act(how)`` sleeps 4 s, then ends as ``how`` says; ``blocker`` holds a slot 10 s."""

    class Base(app.Task):
        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            if args and args[0] == "linger":
                time.sleep(4)  # SUCCESS is stored; the child is still busy

    attempts = []

    @app.task(bind=True, base=Base, name="shop.act", **options)
    def act(self, how):
        attempts.append(self.request.retries)
        again = self.request.delivery_info["redelivered"]
        time.sleep(1 if how == "quicker-again" and again else 4)
        if how == "retry" and self.request.retries == 0:
            raise self.retry(countdown=5)
        if how == "raise":
            raise ValueError("boom")
        if how == "reject":
            raise Reject("no", requeue=False)
        if how == "requeue" and len(attempts) == 1:
            raise Reject("again", requeue=True)
        if how == "ignore":
            raise Ignore()
        return "ok"

    @app.task(name="shop.blocker")
    def blocker():
        time.sleep(10)

    return act, blocker, attempts


def run(app, simulation, options, how, script, call):
    act, blocker, attempts = build(app, options)
    sim = simulation(app, workers=0)
    sim.add_worker("w1")
    if script in ("redeliver", "revoke", "expire"):
        blocker.delay()  # keeps the act message reserved, not started, on w1
    r = act.apply_async((how,), **call)
    if script == "redeliver":
        sim.crash_worker("w1", at=1)
        sim.advance(1)
        sim.add_worker("w2")
    elif script == "revoke":
        sim.revoke(r.id, at=1)
    # "expire": the message waits reserved on w1 (already delivered, so RabbitMQ's TTL
    # cannot drop it) and has expired when the blocker frees the slot.
    elif script == "kill":
        sim.kill_child(r.id, at=2)
    elif script == "kill-after-success":
        sim.kill_child(r.id, at=5)
    elif script == "terminate":
        sim.revoke(r.id, at=2, terminate=True)
    elif script == "crash":
        sim.crash_worker("w1", at=2, restart_after=1)
    elif script == "connection":
        sim.lose_connection("w1", at=2, reconnect_after=1)
    sim.run()
    return sim, r, attempts


# The act message m2 is reserved behind the blocker on w1, which crashes at +1; w2 starts.
REDELIVERED = [
    "0 published m2 retries=0",
    "0 delivered m2 w1",
    "1 worker-crashed w1",
    "1 requeued m2 worker-crashed",
    "1 worker-offline w1",
    "1 worker-online w2",
    "1 delivered m2 w2 redelivered",
    "1 started m2 w2 retries=0",
]
# The act message m1 starts at once on w1.
RUNNING = ["0 published m1 retries=0", "0 delivered m1 w1", "0 started m1 w1 retries=0"]
EARLY = [*RUNNING, "0 acked m1"]
REVOKED_AT_START = [
    "0 published m2 retries=0",
    "0 delivered m2 w1",
    "1 revoke",
    *(["1 state REVOKED TaskRevokedError('revoked')"] if REVOKE_MARKS_REVOKED else []),
    "10 revoked m2 revoked",
    "10 state REVOKED TaskRevokedError('revoked')",
    "10 acked m2",
]
EXPIRED_AT_RECEIPT = [
    "0 published m2 retries=0",
    "0 delivered m2 w1",
    "10 revoked m2 expired",
    "10 state REVOKED TaskRevokedError('expired')",
    "10 acked m2",
]
RETRY_TAIL = [
    "5 published m3 retries=1 eta=2030-01-01T00:00:10+00:00",
    "5 state RETRY",
    "5 retried m2",
]
KILLED = ["2 child-killed m1 exitcode=-9", "2 child-lost m1 exitcode=-9"]
RTWL = [
    *KILLED,
    "2 published m2 retries=1 eta=2030-01-01T00:00:05+00:00",
    f"2 state RETRY {LOST}",
]
TERMINATED = [
    "2 revoke terminate",
    "2 revoked m1 terminated",
    "2 state REVOKED TaskRevokedError('terminated')",
]
# billiard's on_hard_timeout: error_callback (Request.on_failure: ack or reject first, then
# FAILURE unless requeued, request.py:766-790), then timeout_callback (Request.on_timeout:
# FAILURE again, request.py:539-614).
TIME_LIMIT = ["2 time-limit m1 hard 2", "2 failed m1 TimeLimitExceeded(2)"]
FAILED_BY_TIME_LIMIT = "2 state FAILURE TimeLimitExceeded(2)"
TIMED_OUT = [*TIME_LIMIT, FAILED_BY_TIME_LIMIT, FAILED_BY_TIME_LIMIT]
# 5.7 stores FAILURE(Reject) for Reject(requeue=False) (worker/request.py on_failure,
# #4222); 5.5 only rejects it.
REJECT_FAILURE = ["5 state FAILURE Reject('no', False)"] if CELERY_VERSION >= (5, 7) else []
# 5.7's on_failure keeps a SUCCESS stored before the child was lost (_success_was_stored);
# 5.5 stores FAILURE(WorkerLostError) over it, which the result backend discards.
AFTER_SUCCESS = [] if CELERY_VERSION >= (5, 7) else ["5 state-discarded FAILURE"]
LATE = {"acks_late": True}
RTWL_OPTIONS = {"retry_on_worker_lost": True, "max_retries": 1, "default_retry_delay": 3}

# fmt: off
CASES = [
    # -- revoked or expired when received or before start: ACK, REVOKED ------------------
    ("revoked-early", {}, "return", "revoke", {}, REVOKED_AT_START, []),
    ("revoked-late", LATE, "return", "revoke", {}, REVOKED_AT_START, []),
    ("expired-early", {}, "return", "expire", {"expires": 5}, EXPIRED_AT_RECEIPT, []),
    ("expired-late", LATE, "return", "expire", {"expires": 5}, EXPIRED_AT_RECEIPT, []),
    # -- returned normally: acked@start / ACK after SUCCESS -------------------------------
    ("returned-early", {}, "return", "redeliver", {}, [
        *REDELIVERED, "1 acked m2", "5 state SUCCESS 'ok'", "5 succeeded m2"], [0]),
    ("returned-late", LATE, "return", "redeliver", {}, [
        *REDELIVERED, "5 state SUCCESS 'ok'", "5 succeeded m2", "5 acked m2"], [0]),
    # -- raised Retry: acked@start / ACK after RETRY --------------------------------------
    ("retry-early", {}, "retry", "redeliver", {}, [
        *REDELIVERED, "1 acked m2", *RETRY_TAIL, "5 delivered m3 w2",
        "10 started m3 w2 retries=1", "10 acked m3", "14 state SUCCESS 'ok'", "14 succeeded m3"],
        [0, 1]),
    ("retry-late", LATE, "retry", "redeliver", {}, [
        *REDELIVERED, *RETRY_TAIL, "5 acked m2", "5 delivered m3 w2",
        "10 started m3 w2 retries=1", "14 state SUCCESS 'ok'", "14 succeeded m3", "14 acked m3"],
        [0, 1]),
    # -- raised another exception: acked@start / AoF ACK / not AoF REJ(requeue=False) -----
    ("exception-early", {}, "raise", "redeliver", {}, [
        *REDELIVERED, "1 acked m2", "5 state FAILURE ValueError('boom')",
        "5 failed m2 ValueError('boom')"], [0]),
    ("exception-late", LATE, "raise", "redeliver", {}, [
        *REDELIVERED, "5 state FAILURE ValueError('boom')", "5 failed m2 ValueError('boom')",
        "5 acked m2"], [0]),
    ("exception-late-no-aof", {**LATE, "acks_on_failure": False}, "raise", "redeliver", {}, [
        *REDELIVERED, "5 state FAILURE ValueError('boom')", "5 failed m2 ValueError('boom')",
        "5 rejected m2 requeue=False"], [0]),
    # -- Reject(requeue=False): FAILURE(Reject); acked@start / REJ(requeue=False) ---------
    ("reject-early", {}, "reject", "redeliver", {}, [
        *REDELIVERED, "1 acked m2", "5 declined m2", *REJECT_FAILURE], [0]),
    ("reject-late", LATE, "reject", "redeliver", {}, [
        *REDELIVERED, "5 declined m2", *REJECT_FAILURE, "5 rejected m2 requeue=False"], [0]),
    # -- Reject(requeue=True): no-op, no state / REJ(requeue=True), redelivered -----------
    ("requeue-early", {}, "requeue", "redeliver", {}, [
        *REDELIVERED, "1 acked m2", "5 declined m2"], [0]),
    ("requeue-late", LATE, "requeue", "redeliver", {}, [
        *REDELIVERED, "5 declined m2", "5 rejected m2 requeue=True",
        "5 delivered m2 w2 redelivered", "5 started m2 w2 retries=0", "9 state SUCCESS 'ok'",
        "9 succeeded m2", "9 acked m2"], [0, 0]),
    # -- Ignore: acked@start / ACK, no state ----------------------------------------------
    ("ignore-early", {}, "ignore", "redeliver", {}, [
        *REDELIVERED, "1 acked m2", "5 ignored m2"], [0]),
    ("ignore-late", LATE, "ignore", "redeliver", {}, [
        *REDELIVERED, "5 ignored m2", "5 acked m2"], [0]),
    # -- hard time limit: FAILURE; acked@start / AoT ACK / not AoT REJ(requeue=True) ------
    ("time-limit-early", {"time_limit": 2}, "return", "none", {}, [*EARLY, *TIMED_OUT], [0]),
    ("time-limit-late", {**LATE, "time_limit": 2}, "return", "none", {}, [
        *RUNNING, *TIME_LIMIT, FAILED_BY_TIME_LIMIT, FAILED_BY_TIME_LIMIT, "2 acked m1"], [0]),
    # Requeued: on_failure stores nothing, on_timeout stores FAILURE once.
    ("time-limit-late-no-aot", {**LATE, "time_limit": 2, "acks_on_timeout": False},
     "quicker-again", "none", {}, [
        *RUNNING, *TIME_LIMIT, FAILED_BY_TIME_LIMIT, "2 rejected m1 requeue=True",
        "2 delivered m1 w1 redelivered", "2 started m1 w1 retries=0", "3 state SUCCESS 'ok'",
        "3 succeeded m1", "3 acked m1"],
     [0, 0]),
    # -- child died, default: FAILURE(WorkerLostError); acked@start / AoF ACK / REJ(False) -
    ("child-died-early", {}, "return", "kill", {}, [*EARLY, *KILLED, f"2 state FAILURE {LOST}"],
     [0]),
    ("child-died-late", LATE, "return", "kill", {}, [
        *RUNNING, *KILLED, f"2 state FAILURE {LOST}", "2 acked m1"], [0]),
    ("child-died-late-no-aof", {**LATE, "acks_on_failure": False}, "return", "kill", {}, [
        *RUNNING, *KILLED, f"2 state FAILURE {LOST}", "2 rejected m1 requeue=False"], [0]),
    # -- child died, RoWL: no effect early / REJ(requeue=True), no state, runs again ------
    ("child-died-rowl-early", {"reject_on_worker_lost": True}, "return", "kill", {}, [
        *EARLY, *KILLED, f"2 state FAILURE {LOST}"], [0]),
    ("child-died-rowl-late", {**LATE, "reject_on_worker_lost": True}, "return", "kill", {}, [
        *RUNNING, *KILLED, "2 rejected m1 requeue=True", "2 delivered m1 w1 redelivered",
        "2 started m1 w1 retries=0", "6 state SUCCESS 'ok'", "6 succeeded m1", "6 acked m1"],
     [0, 0]),
    # -- child died, RtWL with retries left: retry message + RETRY; ACK with acks_late ----
    ("child-died-rtwl-early", RTWL_OPTIONS, "return", "kill", {}, [
        *EARLY, *RTWL, "2 delivered m2 w1", "5 started m2 w1 retries=1", "5 acked m2",
        "9 state SUCCESS 'ok'", "9 succeeded m2"], [0, 1]),
    ("child-died-rtwl-late", {**LATE, **RTWL_OPTIONS}, "return", "kill", {}, [
        *RUNNING, *RTWL, "2 acked m1", "2 delivered m2 w1", "5 started m2 w1 retries=1",
        "9 state SUCCESS 'ok'", "9 succeeded m2", "9 acked m2"], [0, 1]),
    # -- child died, RtWL exhausted: FAILURE; acked@start / AoF ACK (RoWL not applied) ----
    ("child-died-rtwl-exhausted-early", {"retry_on_worker_lost": True, "max_retries": 0},
     "return", "kill", {}, [*EARLY, *KILLED, f"2 state FAILURE {LOST}"], [0]),
    ("child-died-rtwl-exhausted-late", {**LATE, "retry_on_worker_lost": True,
                                        "reject_on_worker_lost": True, "max_retries": 0},
     "return", "kill", {}, [*RUNNING, *KILLED, f"2 state FAILURE {LOST}", "2 acked m1"], [0]),
    # -- child died after storing SUCCESS: SUCCESS kept; acked@start / ACK ----------------
    ("child-died-after-success-early", {}, "linger", "kill-after-success", {}, [
        *EARLY, "4 state SUCCESS 'ok'", "5 child-killed m1 exitcode=-9",
        "5 child-lost m1 exitcode=-9", *AFTER_SUCCESS], [0]),
    ("child-died-after-success-late", LATE, "linger", "kill-after-success", {}, [
        *RUNNING, "4 state SUCCESS 'ok'", "5 child-killed m1 exitcode=-9",
        "5 child-lost m1 exitcode=-9", *AFTER_SUCCESS, "5 acked m1"], [0]),
    # -- revoked with terminate while running: REVOKED('terminated'); acked@start / ACK ---
    ("terminated-early", {}, "return", "terminate", {}, [*EARLY, *TERMINATED], [0]),
    ("terminated-late", LATE, "return", "terminate", {}, [*RUNNING, *TERMINATED, "2 acked m1"],
     [0]),
    # -- whole worker killed: the early-acked run is lost / the message is redelivered ----
    ("worker-killed-early", {}, "return", "crash", {}, [
        *EARLY, "2 worker-crashed w1", "2 lost m1 worker-crashed", "2 worker-offline w1",
        "3 worker-online w1"], [0]),
    ("worker-killed-late", LATE, "return", "crash", {}, [
        *RUNNING, "2 worker-crashed w1", "2 requeued m1 worker-crashed", "2 worker-offline w1",
        "3 worker-online w1", "3 delivered m1 w1 redelivered", "3 started m1 w1 retries=0",
        "7 state SUCCESS 'ok'", "7 succeeded m1", "7 acked m1"], [0, 0]),
    # -- broker connection lost: acked@start / redelivered, the later ack fails ------------
    ("connection-lost-early", {}, "return", "connection", {}, [
        *EARLY, "2 connection-lost w1", "3 connection-restored w1", "4 state SUCCESS 'ok'",
        "4 succeeded m1"], [0]),
    ("connection-lost-late", LATE, "return", "connection", {}, [
        *RUNNING, "2 connection-lost w1", "2 requeued m1 connection-lost",
        "3 connection-restored w1", "3 delivered m1 w1 redelivered", "4 state SUCCESS 'ok'",
        "4 succeeded m1", "4 ack-failed m1", "4 started m1 w1 retries=0",
        "8 state-discarded SUCCESS", "8 succeeded m1", "8 acked m1"], [0, 0]),
]
# fmt: on

#: Rows whose subject is a task attribute new in Celery 5.7 (app/task.py): 5.5 has only
#: acks_on_failure_or_timeout and no retry_on_worker_lost, and ignores these names.
NEW_IN_5_7 = {
    "exception-late-no-aof": "Task.acks_on_failure is new in 5.7",
    "time-limit-late-no-aot": "Task.acks_on_timeout is new in 5.7",
    "child-died-late-no-aof": "Task.acks_on_failure is new in 5.7",
    "child-died-rtwl-early": "Task.retry_on_worker_lost is new in 5.7",
    "child-died-rtwl-late": "Task.retry_on_worker_lost is new in 5.7",
    "child-died-rtwl-exhausted-late": "Task.retry_on_worker_lost is new in 5.7",
}


def _row(case: tuple) -> object:
    why = NEW_IN_5_7.get(case[0])
    marks = [pytest.mark.celery_version(min="5.7", why=why)] if why else []
    return pytest.param(*case[1:], id=case[0], marks=marks)


@pytest.mark.parametrize(
    ("options", "how", "script", "call", "expected", "attempts"),
    [_row(case) for case in CASES],
)
def test_ack_decision_table_row(
    app, simulation, trail, options, how, script, call, expected, attempts
):
    """Each §3.1 row, provoked by a scripted fault, gives Celery's ack and state history."""
    sim, r, ran = run(app, simulation, options, how, script, call)
    assert trail(sim, r.id) == expected
    assert ran == attempts
    assert sim.check() == []
