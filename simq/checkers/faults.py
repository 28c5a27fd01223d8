"""Whole-worker faults: G4 (worker loss), G7 (connection loss), G17 (shutdown), §3.2."""

from __future__ import annotations

from simq.checkers.base import SYNLOOP_DRAIN, CheckConfig, Violation, when
from simq.checkers.delivery import evidence
from simq.checkers.index import Delivery, Index, index_of
from simq.history import Event, History

__all__ = ["check_g4", "check_g7", "check_g17"]

#: Events a broker records about a dead worker's messages (they name the former holder).
_BROKER_SIDE = frozenset({"requeued", "lost", "worker-offline", "worker-crashed"})
_BACK = frozenset({"worker-online"})
_RECONNECT = frozenset({"connection-restored", "worker-online", "worker-crashed"})
_CANCEL_WINDOW_ENDS = _RECONNECT | {"shutdown"}


def _comes_back(idx: Index, d: Delivery, i: int, g: str, fault: Event) -> list[Violation]:
    """In a drained run, ``d``'s message went back to the queue after index ``i``.

    Back means requeued by the broker or delivered again; an explicit ``lost`` (a broker
    that keeps nothing across a restart) is reported, not silent, so it passes too.
    """
    m = d.message_id
    # A visibility-timeout copy restored from this very delivery already put it back.
    requeued = idx.requeued_after(m, i) or any(
        j > d.at and e.details.get("copy") and e.worker == d.worker for j, e in idx.restores_of(d)
    )
    if requeued or idx.delivered_after(m, i) or idx.lost_after(m, i):
        return []
    return [
        Violation(
            g,
            (
                f"{d.label} was unacked on {d.worker} at the {fault.kind} at {when(fault)} and never "
                "went back to the queue although the run drained"
            ),
            evidence(d.event, d.start, fault),
        )
    ]


def check_g4(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G4: whole-worker loss redelivers every unacked message (§3.2 G4).

    "Even if the worker is killed the message will be redelivered to another worker";
    a kill loses executing tasks "unless the tasks have the acks_late option set". At a
    ``worker-crashed``: every message delivered to the worker and not acked or rejected
    is delivered again (in a drained run; on redis/sqs not before the visibility timeout);
    an early-acked task running there never runs again and gets no more outcome or state
    from that attempt (the "stuck STARTED" signature), and a history that names attempts
    records its loss on the task itself (``lost`` [worker-crashed], and only for such a
    task); and a dead worker records nothing until it comes back online.
    """
    idx = index_of(history)
    out: list[Violation] = []
    vt = config.effective_visibility_timeout
    out += _misplaced_losses(idx, config)
    for i, crash in idx.faults:
        if crash.kind != "worker-crashed":
            continue
        mine = idx.by_worker.get(crash.worker or "", [])
        for d in mine:
            if d.unacked_at(i):
                if config.complete and not _lost_in_consumer(idx, d, config):
                    out += _comes_back(idx, d, i, "G4", crash)
                if vt is not None:
                    out += _restored_too_soon(idx, d, i, crash, vt, config)
            elif d.running_at(i) and _acked_before(d, i):
                out += _lost_early_task(idx, d, i, crash)
                if d.attempt is not None and d.lost is None:
                    out.append(
                        Violation(
                            "G4",
                            (
                                f"{d.label} was acked at start and running on {d.worker} when it "
                                f"crashed at {when(crash)}, and its loss was not recorded (a lost "
                                "event with reason worker-crashed for its attempt)"
                            ),
                            evidence(d.start, crash),
                        )
                    )
        out += _silent_while_dead(idx, i, crash)
    return out


def _lost_in_consumer(idx: Index, d: Delivery, config: CheckConfig) -> bool:
    """``d`` was unacked when its worker crashed and was recorded lost with it, on a
    transport that keeps unacked messages only in the consuming process (kombu's virtual
    QoS: a killed worker never puts them back; recorded on filesystem:// and SQLAlchemy)."""
    j = d.lost_at
    if not config.consumer_holds_unacked or j is None:
        return False
    crashes = [
        i for i, e in idx.faults if e.kind == "worker-crashed" and e.worker == d.worker and i < j
    ]
    return bool(crashes) and d.unacked_at(crashes[-1])


def _misplaced_losses(idx: Index, config: CheckConfig) -> list[Violation]:
    """``lost`` [worker-crashed] only for an attempt acked at start that ran at a crash,
    or, where the consumer holds unacked messages, for one it held unacked."""
    out = [
        Violation(
            "G4",
            (
                f"task {e.task_id} message {e.message_id} was recorded lost with {e.worker} at "
                f"{when(e)}, but no attempt acked at start was running there when it crashed"
            ),
            (e,),
        )
        for _, e in idx.orphans
        if e.kind == "lost"
    ]
    for d in idx.deliveries:
        lost, j = d.lost, d.lost_at
        if lost is None or j is None:
            continue
        if _lost_in_consumer(idx, d, config):
            continue
        if d.died_at is None or d.died_at > j or not _acked_before(d, d.died_at):
            out.append(
                Violation(
                    "G4",
                    (
                        f"{d.label} was recorded lost at {when(lost)}, but it was not an attempt "
                        f"acked at start and running on {d.worker} when it crashed; an unacked "
                        "message goes back to the queue"
                    ),
                    evidence(d.event, d.start, d.settle, lost),
                )
            )
    return out


def _restored_too_soon(
    idx: Index, d: Delivery, i: int, crash: Event, vt: float, config: CheckConfig
) -> list[Violation]:
    """On redis/sqs a crashed holder's message comes back only by visibility timeout.

    The restore of ``d`` itself is the one judged: its ``requeued`` when the history
    names attempts and records it, else the next delivery of the message (a real broker
    restores silently) that no other recorded return explains.
    """
    soon = d.event.time + vt - config.transport_tolerance
    if d.attempt is not None:
        own = [
            (j, e)
            for j, e in idx.restores_of(d)
            if j > i and e.kind == "requeued" and not e.details.get("copy")
        ]
        if own:
            e = own[0][1]
            if e.time >= soon:
                return []
            return [
                Violation(
                    "G4",
                    (
                        f"{d.label} was restored at {when(e)} after {crash.worker} crashed at "
                        f"{when(crash)}, sooner than the visibility timeout ({vt} s) after its "
                        f"delivery at {when(d.event)}; {config.transport} only restores it by "
                        "timeout"
                    ),
                    evidence(d.event, crash, e),
                )
            ]
    others = [
        j
        for j, e in idx.returns.get(d.message_id, ())
        if j > i and (d.attempt is None or e.details.get("attempt") != d.attempt)
    ]
    for x in idx.deliveries_after(d.message_id, i):
        if x.copy:
            continue
        if d.attempt is not None and any(j < x.at for j in others):
            return []  # brought back by another attempt's return, not this one's
        if x.event.time >= soon:
            return []
        return [
            Violation(
                "G4",
                (
                    f"{d.label} was delivered again at {when(x.event)} after {crash.worker} "
                    f"crashed at {when(crash)}, sooner than the visibility timeout ({vt} s) "
                    f"after its delivery at {when(d.event)}; {config.transport} only restores "
                    "it by timeout"
                ),
                evidence(d.event, crash, x.event),
            )
        ]
    return []


def _acked_before(d: Delivery, i: int) -> bool:
    """Whether ``d`` was acked before index ``i`` (not merely released by a lost channel)."""
    return d.settle is not None and d.settle.kind == "acked" and (d.settle_at or 0) < i


def _lost_early_task(idx: Index, d: Delivery, i: int, crash: Event) -> list[Violation]:
    out = []
    for x in idx.started_after(d.message_id, i):
        if not (x.copy or idx.duplicated_before(d.message_id, x.start_at or x.at)):
            out.append(
                Violation(
                    "G4",
                    (
                        f"{d.label} was acked at start and running on {d.worker} when it crashed at "
                        f"{when(crash)}, yet started again on {x.worker} at {when(x.start)}; an "
                        "early-acked task dies with its worker"
                    ),
                    evidence(d.start, crash, x.start),
                )
            )
    if d.outcome is not None and d.outcome_at is not None and d.outcome_at > i:
        out.append(
            Violation(
                "G4",
                (
                    f"{d.label} reported {d.outcome.kind} at {when(d.outcome)} although {d.worker} "
                    f"crashed at {when(crash)} while running it"
                ),
                evidence(d.start, crash, d.outcome),
            )
        )
    for _, st in d.states_after(i):
        out.append(
            Violation(
                "G4",
                (
                    f"{d.label}: {st.details.get('state')} was stored at {when(st)} by the attempt "
                    f"that died with {d.worker} at {when(crash)}"
                ),
                evidence(d.start, crash, st),
            )
        )
    return out


def _silent_while_dead(idx: Index, i: int, crash: Event) -> list[Violation]:
    back = idx.next_fault(crash.worker, _BACK, i)
    out = []
    for e in idx.events[i + 1 : back]:
        if e.worker == crash.worker and e.kind not in _BROKER_SIDE:
            out.append(
                Violation(
                    "G4",
                    (
                        f"{crash.worker} crashed at {when(crash)} and was not back online, yet "
                        f"recorded {e.kind} at {when(e)} (task {e.task_id}, message {e.message_id})"
                    ),
                    (crash, e),
                )
            )
    return out


def check_g7(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G7: broker connection loss (§3.2 G7).

    "Unacked messages are redelivered by the broker"; the worker clears its reserved
    requests and ETA timers, "they can't be acked anyway, as a delivery tag is specific
    to the current channel". At a ``connection-lost``: every message the worker held
    unacked is delivered again (drained run); none of those not yet started starts on
    that worker from the old delivery; none is acked or rejected through the dead channel;
    the worker gets no delivery until it reconnects; running acks_late tasks keep running
    unless ``cancel_long_running_tasks_on_connection_loss``, which cancels them with RETRY.
    """
    idx = index_of(history)
    out: list[Violation] = []
    for i, lost in idx.faults:
        if lost.kind != "connection-lost":
            continue
        for d in idx.by_worker.get(lost.worker or "", []):
            if not d.unacked_at(i):
                continue
            if config.complete:
                out += _comes_back(idx, d, i, "G7", lost)
            if d.start is not None and d.start_at is not None and d.start_at > i:
                out.append(
                    Violation(
                        "G7",
                        (
                            f"{d.label} started on {d.worker} at {when(d.start)} from a delivery "
                            f"made before the connection was lost at {when(lost)}; reserved and ETA "
                            "messages of a closed channel are dropped"
                        ),
                        evidence(d.event, lost, d.start),
                    )
                )
            s = d.settle
            if s is not None and s.kind in ("acked", "rejected") and (d.settle_at or 0) > i:
                out.append(
                    Violation(
                        "G7",
                        (
                            f"{d.label} was {s.kind} at {when(s)} through the channel that closed at "
                            f"{when(lost)}; a delivery tag dies with its channel, the ack must fail"
                        ),
                        evidence(d.event, lost, s),
                    )
                )
            if d.running_at(i) and config.late(d.task):
                out += _cancel_rule(idx, d, i, lost, config)
        back = idx.next_fault(lost.worker, _RECONNECT, i)
        for e in idx.events[i + 1 : back]:
            if e.kind == "delivered" and e.worker == lost.worker:
                out.append(
                    Violation(
                        "G7",
                        (
                            f"{e.worker} was sent message {e.message_id} of task {e.task_id} at "
                            f"{when(e)} while disconnected (since {when(lost)})"
                        ),
                        (lost, e),
                    )
                )
    return out


def _cancel_rule(
    idx: Index, d: Delivery, i: int, lost: Event, config: CheckConfig
) -> list[Violation]:
    # Celery cancels at the loss itself; a cancel after reconnecting has another cause.
    back = idx.next_fault(d.worker, _CANCEL_WINDOW_ENDS, i)
    cancels = [(j, e) for j, e in d.marks_of("cancelled") if i < j < back]
    if not config.cancel_long_running_tasks_on_connection_loss:
        return [
            Violation(
                "G7",
                (
                    f"{d.label} was cancelled at {when(e)} after the connection loss at {when(lost)}; "
                    "running acks_late tasks keep running unless "
                    "worker_cancel_long_running_tasks_on_connection_loss is set"
                ),
                evidence(d.start, lost, e),
            )
            for _, e in cancels
        ]
    if not cancels:
        return [
            Violation(
                "G7",
                (
                    f"{d.label} kept running on {d.worker} after the connection loss at {when(lost)}; "
                    "with worker_cancel_long_running_tasks_on_connection_loss it is cancelled"
                ),
                evidence(d.start, lost, d.outcome),
            )
        ]
    j, cancel = cancels[0]
    out = []
    retry = [st for k, st in d.states_after(j) if st.details.get("state") == "RETRY"]
    if not retry and config.stores_errors(d.task, d.ignore_result):
        out.append(
            Violation(
                "G7",
                (
                    f"{d.label} was cancelled at {when(cancel)} without storing RETRY('cancelled by "
                    "Celery')"
                ),
                evidence(d.start, lost, cancel),
            )
        )
    if d.outcome is not None and d.outcome_at is not None and d.outcome_at > j:
        out.append(
            Violation(
                "G7",
                (
                    f"{d.label} was cancelled at {when(cancel)} yet ended with {d.outcome.kind} at "
                    f"{when(d.outcome)}"
                ),
                evidence(cancel, d.outcome),
            )
        )
    return out


def check_g17(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G17: warm and cold shutdown (§3.2 G17).

    Warm: "the worker will finish all currently executing tasks before it actually
    terminates"; prefetched messages not started go back to the queue. Cold: running
    early-ack tasks are cancelled with RETRY and never re-run (their message was acked);
    running unacked acks_late tasks are cancelled without RETRY (5.6+; see
    ``config.cancel_without_retry``) and redelivered, unless their hard time limit fires
    before the pool notices the terminated child: Celery then acks the message and
    stores nothing (:func:`_acked_by_its_hard_limit`). In both, the worker starts nothing
    after the shutdown began, except on Celery's synchronous consumer loop
    (``config.sync_loop``): there the prefork pool was handed every reserved task when
    it was received, and a warm shutdown runs them all, so a task delivered before the
    warm shutdown, or in the two polls that follow (:func:`_handed_to_pool`), may
    start after it began (seen on ``filesystem://`` and ``sqla+sqlite``; on the event
    loop a reserved task stays with the consumer until a child is free, and the
    shutdown returns it).
    """
    idx = index_of(history)
    out: list[Violation] = []
    for i, stop in idx.faults:
        if stop.kind != "shutdown":
            continue
        warm = stop.details.get("warm", True) is not False
        w = stop.worker
        back = idx.next_fault(w, _BACK, i)
        # A later shutdown (a cold one escalating a warm one) or a crash takes over.
        offline = idx.next_fault(
            w, frozenset({"worker-offline", "worker-crashed", "shutdown", "connection-lost"}), i
        )
        crashed = offline < len(idx.events) and idx.events[offline].kind != "worker-offline"
        handed = _handed_to_pool(idx, w, i, stop, config) if warm else -1
        for d in idx.by_worker.get(w or "", []):
            if (
                d.start is not None
                and d.start_at is not None
                and i < d.start_at < back
                and not d.at <= handed
                and not _child_took_it(d, i, stop, warm, config)
            ):
                out.append(
                    Violation(
                        "G17",
                        (
                            f"{d.label} started on {w} at {when(d.start)} after the "
                            f"{'warm' if warm else 'cold'} shutdown began at {when(stop)}"
                        ),
                        evidence(stop, d.start),
                    )
                )
            if d.unacked_at(i) and d.start_at is None and config.complete and not _revoked(d, i):
                out += _comes_back(idx, d, i, "G17", stop)
            if not d.running_at(i):
                continue
            if warm:
                out += _warm(idx, d, i, stop, offline, crashed, config)
            else:
                out += _cold(idx, d, i, stop, config)
    return out


def _handed_to_pool(idx: Index, w: str | None, i: int, stop: Event, config: CheckConfig) -> int:
    """On Celery's synchronous loop, the last delivery a warm shutdown at ``i`` still runs.

    ``synloop`` hands every received task to the prefork pool at once, and the warm
    shutdown lets the pool run them all. The SIGTERM is noticed only between polls, and
    then the loop still runs one more turn (``try: state.maybe_shutdown() finally:
    _loop_cycle()``, celery/worker/loops.py): the poll in flight and that last one may
    each receive a message (one per ``drain_events`` of kombu's virtual transports,
    which waits up to :data:`SYNLOOP_DRAIN` seconds), and the pool runs them too
    (recorded on sqla+sqlite: two messages delivered 0.45 s and 1.46 s after the warm
    shutdown began, then started). -1 on the event loop: nothing after the shutdown.
    """
    if not config.sync_loop:
        return -1
    window = 2 * SYNLOOP_DRAIN + config.transport_tolerance
    fetched = [
        d.at
        for d in idx.by_worker.get(w or "", [])
        if d.at > i and d.event.time - stop.time <= window
    ][:2]
    return fetched[-1] if fetched else i


def _child_took_it(d: Delivery, i: int, stop: Event, warm: bool, config: CheckConfig) -> bool:
    """On the synchronous loop, a task the pool held before a cold shutdown, started by a
    child within ``slack`` of it: the child took the job before the signal reached it
    (recorded on sqla+sqlite: a start 3 ms after the cold shutdown was sent)."""
    return (
        config.sync_loop
        and not warm
        and d.at < i
        and d.start is not None
        and d.start.time - stop.time <= config.slack
    )


def _revoked(d: Delivery, i: int) -> bool:
    """``d`` was revoked (or expired) and its ack followed, before or after index ``i``.

    Celery acks a revoked message itself (request.py ``_announce_revoked``), through the
    consumer's ``call_soon``: a prefork worker's hub may send it only when the loop next
    wakes, as late as the shutdown. A shutdown takes a while, and the consumer's timer
    still runs meanwhile: an ETA request whose task was revoked is skipped and acked when
    its ETA fires, after the shutdown began (seen on RabbitMQ: a cold shutdown at 0.54 s,
    the revoked ETA task acked at 1.05 s, the worker offline at 1.56 s). Nothing of it
    has to go back to the queue.
    """
    return d.revoked_at is not None and d.settle is not None and d.settle.kind == "acked"


def _warm(
    idx: Index, d: Delivery, i: int, stop: Event, offline: int, crashed: bool, config: CheckConfig
) -> list[Violation]:
    out = []
    for j, e in d.marks_of("cancelled"):
        if j > offline:
            continue  # cancelled by what took over: a cold shutdown
        out.append(
            Violation(
                "G17",
                (
                    f"{d.label} was cancelled at {when(e)} by the warm shutdown of {d.worker} begun at "
                    f"{when(stop)}; a warm shutdown lets running tasks finish"
                ),
                evidence(stop, e),
            )
        )
    if crashed:
        return out
    done = d.outcome_at is not None and d.outcome_at < offline
    if not done and (offline < len(idx.events) or config.complete):
        out.append(
            Violation(
                "G17",
                (
                    f"{d.label} was running on {d.worker} at the warm shutdown ({when(stop)}) and the "
                    "worker went offline before it finished"
                ),
                evidence(d.start, stop, idx.events[offline] if offline < len(idx.events) else None),
            )
        )
    return out


def _cold(idx: Index, d: Delivery, i: int, stop: Event, config: CheckConfig) -> list[Violation]:
    if d.outcome_at is not None and d.outcome_at < i:
        return []
    acked = d.settle is not None and d.settle.kind == "acked" and (d.settle_at or 0) < i
    cancels = [(j, e) for j, e in d.marks_of("cancelled") if j > i]
    if acked and config.late(d.task):
        return []  # finished but not yet acked: left alone
    if not cancels:
        return [
            Violation(
                "G17",
                (
                    f"{d.label} was running on {d.worker} at the cold shutdown ({when(stop)}) and was "
                    "not cancelled"
                ),
                evidence(d.start, stop, d.outcome),
            )
        ]
    j, cancel = cancels[0]
    retry = [st for _, st in d.states_after(j) if st.details.get("state") == "RETRY"]
    out = []
    if acked:
        if not retry and config.stores_errors(d.task, d.ignore_result):
            out.append(
                Violation(
                    "G17",
                    (
                        f"{d.label} (acked at start) was cancelled by the cold shutdown at "
                        f"{when(cancel)} without storing RETRY('cancelled by Celery')"
                    ),
                    evidence(d.start, stop, cancel),
                )
            )
        for x in idx.started_after(d.message_id, j):
            if not (x.copy or idx.duplicated_before(d.message_id, x.start_at or x.at)):
                out.append(
                    Violation(
                        "G17",
                        (
                            f"{d.label} (acked at start) was cancelled by the cold shutdown at "
                            f"{when(cancel)} yet ran again on {x.worker} at {when(x.start)}"
                        ),
                        evidence(cancel, x.start),
                    )
                )
    else:
        for st in retry if config.cancel_without_retry else ():
            out.append(
                Violation(
                    "G17",
                    (
                        f"{d.label} (acks_late, unacked) stored RETRY at {when(st)} when the cold "
                        "shutdown cancelled it; only early-acked tasks are cancelled with RETRY"
                    ),
                    evidence(cancel, st),
                )
            )
        if config.complete and d.unacked_at(i) and not _acked_by_its_hard_limit(d, j):
            out += _comes_back(idx, d, i, "G17", stop)
    return out


def _acked_by_its_hard_limit(d: Delivery, cancel_at: int) -> bool:
    """The hard time limit of ``d``'s attempt fired after the cold shutdown cancelled it,
    and Celery acked the message then.

    The pool notices the terminated child only as it shuts down (about 1 s later on the
    synchronous loop, 0.5 s on an event loop); a limit due before fires first, and
    ``Request.on_failure`` acks an acks_late message (``acks_on_timeout``) while
    ``state.should_terminate`` keeps it from storing anything: the message is gone, with
    no result (recorded with Celery 5.7.0 on Redis, ``filesystem://`` and ``sqla+sqlite``;
    see ``Pool._limit_first``).
    """
    fired = [k for k, _ in d.marks_of("time-limit", which="hard") if k > cancel_at]
    s = d.settle
    return bool(fired) and s is not None and s.kind == "acked" and (d.settle_at or 0) > fired[0]
