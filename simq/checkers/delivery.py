"""Delivery and acknowledgement: G1, G2, G5, G6 of CELERY_SEMANTICS.md §3.2.

Each check reads a history through :func:`simq.checkers.index.index_of` and returns the
violations it finds, each carrying the events that show it.
"""

from __future__ import annotations

import bisect

from simq.checkers.base import SYNLOOP_DRAIN, CheckConfig, Violation, when
from simq.checkers.index import Delivery, Index, Ref, index_of
from simq.history import Event, History

__all__ = ["check_g1", "check_g2"]


def evidence(*items: Event | None) -> tuple[Event, ...]:
    """The non-None events, without repeats, in the order given."""
    out: list[Event] = []
    for item in items:
        if item is not None and not any(item is e for e in out):
            out.append(item)
    return tuple(out)


def premature_settle(d: Delivery, guarantee: str, slack: float = 0.0) -> list[Violation]:
    """A delivery acked or rejected before it started, off the revoke/unknown-task/decode paths.

    Within ``slack`` seconds before the start it is not premature: on a real prefork
    worker the parent acks when the child reports acceptance, and the child records its
    start a moment later, in another process.
    """
    s = d.settle
    if s is None or s.kind == "ack-failed":
        return []
    if d.start_at is not None and d.start_at < (d.settle_at or 0):
        return []
    if slack > 0 and any(x is not None and x.time - s.time <= slack for x in (d.start, d.revoked)):
        # (Celery acks an expired or revoked message before its task_revoked signal.)
        return []
    if d.revoked_at is not None and d.revoked_at < (d.settle_at or 0):
        return []
    if d.unregistered_at is not None and d.unregistered_at < (d.settle_at or 0):
        return []
    return [
        Violation(
            guarantee,
            (
                f"{d.label} was {s.kind} by {d.worker} at {when(s)} before it started (delivered "
                f"at {when(d.event)}); a worker acks or rejects an unstarted message only when it "
                "is revoked, expired, of an unknown task or undecodable"
            ),
            evidence(d.event, s),
        )
    ]


def redeliveries(idx: Index, config: CheckConfig, late: bool, guarantee: str) -> list[Violation]:
    """Each redelivery needs an earlier return to the queue; amqp/redis flag it redelivered.

    Linear in a message's deliveries: the returns before each delivery are counted with
    a bisection, not listed again for every delivery.
    """
    out = []
    flags = config.transport in ("amqp", "redis")
    vt = config.effective_visibility_timeout
    timeout = None if vt is None else vt - config.transport_tolerance
    times = [e.time for e in idx.events] if timeout is not None else []
    for message_id, ds in idx.by_message.items():
        if config.late(ds[0].task) != late or len(ds) < 2:
            continue
        returns = idx.returns.get(message_id, [])
        returned_at = [j for j, _ in returns]
        silent = _silent_intervals(ds, returns, timeout, times)
        starts = sorted(a for a, _ in silent)
        ends = sorted(b for _, b in silent)
        for k, d in enumerate(ds):
            if k == 0:
                continue
            back = bisect.bisect_left(returned_at, d.at)
            back += bisect.bisect_left(starts, d.at) - bisect.bisect_left(ends, d.at)
            if back >= k and (not flags or d.redelivered):
                continue
            # A violation: list the returns (the linear part, only here).
            shown = [e for j, e in returns if j < d.at] + _silent_returns(ds[:k], returns, d.at)
            if back < k:
                out.append(
                    Violation(
                        guarantee,
                        (
                            f"{d.label} was delivered again to {d.worker} at {when(d.event)} "
                            f"(delivery {k + 1}) but had gone back to the queue only {back} "
                            "time(s): a message comes back only after reject(requeue=True), a "
                            "requeue by the broker (lost holder, visibility timeout) or a restart"
                        ),
                        evidence(*(p.event for p in ds[:k]), *shown, d.event),
                    )
                )
            else:
                out.append(
                    Violation(
                        guarantee,
                        (
                            f"{d.label} was delivered again to {d.worker} at {when(d.event)} "
                            f"without the redelivered flag ({config.transport} sets it on every "
                            "message that returns to the queue)"
                        ),
                        # A silent return (a visibility-timeout restore nobody recorded)
                        # has no event to show: the delivery itself is the evidence.
                        evidence(*shown[-1:], d.event),
                    )
                )
    return out


#: Faults after which the broker takes a worker's unacked messages back.
_RETURNING_FAULTS = frozenset(
    {"worker-crashed", "connection-lost", "worker-offline", "broker-restarted"}
)


def _silent_intervals(
    ds: list[Delivery],
    returns: list[tuple[int, Event]],
    timeout: float | None,
    times: list[float],
) -> list[tuple[int, float]]:
    """For each delivery that went back unrecorded, ``(from index, next recorded return)``.

    A fault that released the delivery, or (on Redis and SQS, ``timeout`` seconds) its
    visibility timeout running out while it was unacked, counts as a silent return for
    every later delivery up to the next ``requeued`` of the same holder (or of no holder),
    which records the return itself: a real broker restores a message inside itself.
    """
    by_worker: dict[str | None, list[int]] = {}
    for j, e in returns:
        by_worker.setdefault(e.worker, []).append(j)
    out: list[tuple[int, float]] = []
    for p in ds:
        starts = []
        r, at = p.release, p.release_at
        if r is not None and at is not None and r.kind in _RETURNING_FAULTS:
            starts.append(at)
        if timeout is not None:
            due = bisect.bisect_left(times, p.event.time + timeout, lo=p.at + 1)
            settled = p.settle is not None and p.settle.kind in ("acked", "rejected")
            if due < len(times) and not (settled and (p.settle_at or 0) < due):
                starts.append(due - 1)  # restored just before the event at ``due``
        if not starts:
            continue
        start = min(starts)  # one return per delivery, however it went back
        nxt = float("inf")
        for worker in {None, p.worker}:
            mine = by_worker.get(worker, [])
            k = bisect.bisect_left(mine, start)
            if k < len(mine):
                nxt = min(nxt, mine[k])
        out.append((start, nxt))
    return out


def _silent_returns(
    earlier: list[Delivery], returns: list[tuple[int, Event]], before: int
) -> list[Event]:
    """Faults that returned an earlier delivery to the queue with no ``requeued`` event.

    A real broker restores a dead holder's messages inside the broker: a recording of a
    real deployment shows the fault and then the redelivery, nothing in between.
    """
    out = []
    for p in earlier:
        r, at = p.release, p.release_at
        if r is None or at is None or at >= before or r.kind not in _RETURNING_FAULTS:
            continue
        if not any(at < j < before and e.worker in (None, p.worker) for j, e in returns):
            out.append(r)
    return out


def orphan_settles(idx: Index, config: CheckConfig, late: bool, guarantee: str) -> list[Violation]:
    """Acks and rejects of no unsettled delivery: a second ack, or a tag never delivered."""
    out = []
    for _, e in idx.orphans:
        if e.kind not in ("acked", "rejected"):
            continue
        pub = idx.publications.get(e.message_id or f"task:{e.task_id}")
        task = pub[1].details.get("task") if pub else None
        if config.late(task) != late:
            continue
        out.append(
            Violation(
                guarantee,
                (
                    f"{task or '?'}[{e.task_id}] message {e.message_id} was {e.kind} by {e.worker} at "
                    f"{when(e)} but had no unsettled delivery there (already acked or rejected, or "
                    "never delivered)"
                ),
                (e,),
            )
        )
    return out


def orphan_starts(idx: Index, config: CheckConfig, late: bool, guarantee: str) -> list[Violation]:
    return [
        Violation(
            guarantee,
            (
                f"{e.details.get('task', '?')}[{e.task_id}] message {e.message_id} started on "
                f"{e.worker} at {when(e)} without a delivery of that message to that worker"
            ),
            (e,),
        )
        for _, e in idx.orphans
        if e.kind == "started" and config.late(e.details.get("task")) == late
    ]


def check_g1(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G1: early ack is the default, and it happens at execution start (§3.2 G1).

    "With acks_late=False the message is acked just before it's executed, so a task that
    has started is never re-executed by Celery." For each delivery of an early-ack task:
    the ack follows ``started`` and precedes the attempt's outcome; nothing is acked
    before it starts except on the revoke, expiry and unknown-task paths; a redelivery
    follows a return to the queue; an acked message never starts again (on redis/sqs a
    visibility-timeout copy may: G6). Messages lost with their worker are G4's.
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        if config.late(d.task):
            continue
        out += premature_settle(d, "G1", config.slack)
        if d.start is None or d.start_at is None:
            continue
        s = d.settle
        if s is None:
            if (d.release is None or d.release_at is None or d.release_at < d.start_at) and (
                d.outcome is not None or config.complete
            ):
                out.append(
                    Violation(
                        "G1",
                        (
                            f"{d.label} started on {d.worker} at {when(d.start)} and was never acked; "
                            "early ack happens when the task starts"
                        ),
                        evidence(d.event, d.start, d.outcome),
                    )
                )
        elif (d.settle_at or 0) < d.start_at:
            pass  # reported by premature_settle
        elif s.kind == "rejected":
            out.append(
                Violation(
                    "G1",
                    (
                        f"{d.label} was rejected by {d.worker} at {when(s)} after it started; "
                        "an early-ack task is acked when it starts, so a later reject is a no-op "
                        "(§3.1)"
                    ),
                    evidence(d.start, d.outcome, s),
                )
            )
        elif (
            s.kind == "acked"
            and d.outcome_at is not None
            and (d.settle_at or 0) > d.outcome_at
            and not (config.slack > 0 and s.time - d.start.time <= config.slack)
            and not (
                config.acks_wait_for_turn
                and s.time - d.start.time <= SYNLOOP_DRAIN + config.transport_tolerance
            )
        ):
            # (Within slack of the start it is the prefork race of premature_settle: a
            # short task may end in the child before the parent's ack is recorded. On
            # Celery 5.5's synchronous loop the ack waits for the loop's next turn.)
            assert d.outcome is not None
            out.append(
                Violation(
                    "G1",
                    (
                        f"{d.label} was acked at {when(s)}, after its attempt ended with "
                        f"{d.outcome.kind} at {when(d.outcome)}; without acks_late the ack comes "
                        "when the task starts"
                    ),
                    evidence(d.start, d.outcome, s),
                )
            )
    out += redeliveries(idx, config, late=False, guarantee="G1")
    out += orphan_starts(idx, config, late=False, guarantee="G1")
    out += orphan_settles(idx, config, late=False, guarantee="G1")
    out += _started_again(idx, config)
    return out


def _restored_copy(d: Delivery, ds: list[Delivery], config: CheckConfig) -> bool:
    """Whether ``d`` is a visibility-timeout copy that the history could not record.

    A real Redis restores an unacked message from inside a worker's poll, unseen by any
    recorder (kombu #337): the copy arrives ``redelivered`` while an earlier delivery of
    the same message has been unacked for at least the visibility timeout (less the
    transport slack). Seen in CI: an early-ack task with a 1.5 s countdown on a 1 s
    timeout started twice.
    """
    vt = config.effective_visibility_timeout
    if not d.redelivered or vt is None:
        return False
    return any(
        o is not d
        and o.at < d.at
        and o.unacked_at(d.at)
        and d.event.time - o.event.time >= vt - config.transport_tolerance
        for o in ds
    )


def _started_again(idx: Index, config: CheckConfig) -> list[Violation]:
    out = []
    for message_id, ds in idx.by_message.items():
        if config.late(ds[0].task):
            continue
        first = next(
            (
                d
                for d in ds
                if d.start_at is not None
                and d.settle is not None
                and d.settle.kind == "acked"
                and (d.settle_at or 0) > d.start_at
            ),
            None,
        )
        if first is None or first.settle_at is None:
            continue
        for d in ds:
            if d is first or d.start_at is None or d.start_at < first.settle_at:
                continue
            if config.emulates_acks and (
                d.copy
                or idx.duplicated_before(message_id, d.start_at)
                or _restored_copy(d, ds, config)
                or _restored_copy(first, ds, config)  # the copy may start first
            ):
                continue
            out.append(
                Violation(
                    "G1",
                    (
                        f"{d.label} started again on {d.worker} at {when(d.start)} although it was "
                        f"acked when it started on {first.worker} at {when(first.start)}; an "
                        "early-acked task is never re-executed"
                    ),
                    evidence(first.start, first.settle, d.event, d.start),
                )
            )
    return out


def check_g2(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G2: late ack (§3.2 G2).

    "With acks_late=True the ack comes after the attempt finishes: after SUCCESS is
    stored, after RETRY, after FAILURE (subject to acks_on_failure)." For each delivery
    of an acks_late task: the ack or reject follows the attempt's outcome and every
    backend write of the attempt (except the FAILURE the parent stores for a lost child
    or a hard time limit, which Celery writes after its decision); success and retry are
    acked, a failure is acked or (acks_on_failure=False) rejected without requeue; an
    attempt cut short by a worker crash runs again (at least once). Child loss, Reject,
    Ignore, revoke and time limits are judged by G3, G8, G10 and G12.
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        if not config.late(d.task):
            continue
        out += premature_settle(d, "G2", config.slack)
        if d.start is None or d.start_at is None:
            continue
        s = d.settle
        cancelled = d.marks_of("cancelled")
        if idx.twins(d):
            pass  # copies side by side on one worker: whose ack was whose cannot be told
        elif s is not None and d.settle_at is not None and d.settle_at > d.start_at:
            if d.outcome is None or d.outcome_at is None or d.settle_at < d.outcome_at:
                out.append(
                    Violation(
                        "G2",
                        (
                            f"{d.label} was {s.kind} at {when(s)} while its attempt (started at "
                            f"{when(d.start)}) was still running; with acks_late the ack comes after "
                            "the attempt ends"
                        ),
                        evidence(d.start, s, d.outcome),
                    )
                )
                continue
            for _, st in _states_after_decision(d):
                out.append(
                    Violation(
                        "G2",
                        (
                            f"{d.label}: {st.details.get('state')} was stored at {when(st)}, after "
                            f"the message was {s.kind} at {when(s)}; with acks_late the ack comes "
                            "after the state is stored"
                        ),
                        evidence(d.outcome, s, st),
                    )
                )
            out += _late_decision(d, config)
        elif s is None and d.release is None and config.complete and not cancelled:
            out.append(
                Violation(
                    "G2",
                    (
                        f"{d.label} started on {d.worker} at {when(d.start)} and was never acked or "
                        "rejected although the run drained"
                    ),
                    evidence(d.event, d.start, d.outcome),
                )
            )
        out += _rerun_after_crash(idx, d, config)
    out += redeliveries(idx, config, late=True, guarantee="G2")
    out += orphan_starts(idx, config, late=True, guarantee="G2")
    out += orphan_settles(idx, config, late=True, guarantee="G2")
    return out


def _states_after_decision(d: Delivery) -> list[Ref]:
    """Writes of ``d``'s attempt after its ack decision that G2 does not allow.

    The worker's parent stores FAILURE after acking or rejecting when the child is gone:
    for a lost child (``Request.on_failure``: the ack decision, then ``mark_as_failure``)
    and for a hard time limit (``on_failure`` decides, then ``on_timeout`` stores
    FAILURE), celery/worker/request.py. G3 and G12 judge those writes.
    """
    assert d.settle_at is not None
    if d.marks_of("time-limit", which="hard") or (
        d.outcome is not None and d.outcome.kind == "child-lost"
    ):
        return []
    return d.states_after(d.settle_at)


def _late_decision(d: Delivery, config: CheckConfig) -> list[Violation]:
    outcome, s = d.outcome, d.settle
    assert outcome is not None and s is not None
    if s.kind == "ack-failed" or d.marks_of("time-limit", which="hard"):
        return []
    aof = bool(config.setting("acks_on_failure", d.task))
    if outcome.kind in ("succeeded", "retried"):
        want, requeue = "acked", None
    elif outcome.kind == "failed":
        want, requeue = ("acked", None) if aof else ("rejected", False)
    else:
        return []
    got_requeue = bool(s.details.get("requeue")) if s.kind == "rejected" else None
    if s.kind == want and (requeue is None or got_requeue == requeue):
        return []
    expected = "acked" if want == "acked" else "rejected without requeue"
    return [
        Violation(
            "G2",
            (
                f"{d.label} ended with {outcome.kind} at {when(outcome)} and was {s.kind}"
                f"{'' if got_requeue is None else f'(requeue={got_requeue})'} at {when(s)}; with "
                f"acks_late (acks_on_failure={aof}) it is {expected} (§3.1)"
            ),
            evidence(outcome, s),
        )
    ]


def _rerun_after_crash(idx: Index, d: Delivery, config: CheckConfig) -> list[Violation]:
    r = d.release
    if (
        not config.complete
        or r is None
        or r.kind != "worker-crashed"
        or d.release_at is None
        or d.start_at is None
        or d.release_at < d.start_at
    ):
        return []
    # A visibility-timeout copy restored while it ran also put the message back: a run of
    # that copy, even before the crash, is the run again.
    since = d.release_at
    for j, e in idx.restores_of(d):
        if e.details.get("copy") and j < since:
            since = j
            break
    if idx.came_back(d.message_id, since, since=d.at):
        return []
    if d.lost is not None or idx.lost_after(d.message_id, d.at):
        # The transport lost it with its worker (kombu's virtual transports hold unacked
        # messages in the worker's memory): nothing can run it again; L2 judges the loss.
        return []
    return [
        Violation(
            "G2",
            (
                f"{d.label} was running on {d.worker} (started at {when(d.start)}) when the worker "
                f"crashed at {when(r)}, and never ran again; with acks_late the broker redelivers "
                "it and it runs again"
            ),
            evidence(d.start, r),
        )
    ]
