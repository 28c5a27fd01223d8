"""How an attempt ends: G3, G8, G9, G10, G11, G12 of CELERY_SEMANTICS.md §3.2."""

from __future__ import annotations

from simq import states
from simq.checkers.base import CheckConfig, Violation, exc_type, when
from simq.checkers.delivery import evidence
from simq.checkers.index import Delivery, Index, Ref, index_of
from simq.history import Event, History

__all__ = ["check_g3", "check_g8", "check_g9", "check_g10", "check_g11", "check_g12"]

#: ``revoke`` ids live in a worker's memory for this long (CELERY_WORKER_REVOKE_EXPIRES).
REVOKE_EXPIRES = 10800.0
_REVOCABLE = frozenset({None, states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})


def _stored(refs: list[Ref], state: str, exc: str | None = None) -> list[Event]:
    return [
        e
        for _, e in refs
        if e.details.get("state") == state
        and (exc is None or exc_type(e.details.get("result")) == exc)
    ]


def _settled(d: Delivery, kind: str, requeue: bool | None = None) -> bool:
    s = d.settle
    if s is None:
        return False
    if s.kind == "ack-failed":
        return True  # the channel died: the worker's decision cannot be seen
    return s.kind == kind and (requeue is None or bool(s.details.get("requeue")) == requeue)


def _landed(d: Delivery) -> bool:
    """Whether ``d``'s reject reached the broker (not lost with a closed channel)."""
    return d.settle is not None and d.settle.kind == "rejected"


def _ran_again(idx: Index, d: Delivery, i: int, config: CheckConfig) -> list[Delivery]:
    """Later starts of ``d``'s message, leaving out visibility-timeout copies, when ``d``
    settled it for good (an ack that failed on a closed channel leaves it to the broker)."""
    s = d.settle
    if s is None or s.kind not in ("acked", "rejected") or bool(s.details.get("requeue")):
        return []
    restored = [
        j
        for j, e in idx.returns.get(d.message_id, ())
        if e.details.get("reason") == "visibility-timeout"
    ]
    # On redis/sqs a visibility-timeout restore duplicates the message: G6's business.
    return [
        x
        for x in idx.started_after(d.message_id, i)
        if not (
            config.emulates_acks and (x.copy or any(j < (x.start_at or x.at) for j in restored))
        )
    ]


def _settle_text(d: Delivery) -> str:
    s = d.settle
    if s is None:
        return "never acked or rejected"
    requeue = f" (requeue={bool(s.details.get('requeue'))})" if s.kind == "rejected" else ""
    return f"{s.kind}{requeue} at {when(s)}"


def check_g3(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G3: a child process dies; this is not redelivery (§3.2 G3, §3.1).

    "The worker will acknowledge the message if the child process executing the task is
    terminated ... even when acks_late is enabled." For each ``child-lost``: after a
    stored SUCCESS nothing changes; with retry_on_worker_lost and retries left a retry
    message (retries+1) and RETRY(WorkerLostError) follow; with acks_late and
    reject_on_worker_lost the message is rejected with requeue and runs again, no state
    stored; otherwise FAILURE(WorkerLostError) is stored, acks_late acks (or rejects
    without requeue when acks_on_failure is off) and the task never runs again. A
    ``child-killed`` fault ends its attempt with ``child-lost``.
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        for j, kill in d.marks_of("child-killed"):
            if d.outcome is not None and d.outcome.kind != "child-lost" and (d.outcome_at or 0) > j:
                out.append(
                    Violation(
                        "G3",
                        (
                            f"{d.label}: its child was killed at {when(kill)} yet the attempt ended "
                            f"with {d.outcome.kind} at {when(d.outcome)}"
                        ),
                        evidence(kill, d.outcome),
                    )
                )
            elif d.outcome is None and config.complete:
                out.append(
                    Violation(
                        "G3",
                        (
                            f"{d.label}: its child was killed at {when(kill)} and no child-lost was "
                            "recorded"
                        ),
                        evidence(d.start, kill),
                    )
                )
        if d.outcome is not None and d.outcome.kind == "child-lost" and d.outcome_at is not None:
            out += _child_lost(idx, d, d.outcome_at, d.outcome, config)
    return out


def _child_lost(
    idx: Index, d: Delivery, i: int, lost: Event, config: CheckConfig
) -> list[Violation]:
    late = config.late(d.task)
    after = d.states_after(i)
    failures = _stored(after, states.FAILURE)
    out: list[Violation] = []

    def bad(text: str, *proof: Event | None) -> None:
        out.append(
            Violation(
                "G3",
                f"{d.label}: the child died at {when(lost)}; {text}",
                evidence(d.start, lost, *proof),
            )
        )

    max_retries = config.setting("max_retries", d.task)
    retries_left = max_retries is None or d.retries < max_retries
    if idx.succeeded_before(d.task_id, i) is not None:
        for f in failures:
            bad(f"SUCCESS was already stored, yet FAILURE was stored at {when(f)}", f)
        if late and not _settled(d, "acked"):
            bad(
                f"SUCCESS was already stored, so the message is acked, but it was "
                f"{_settle_text(d)}",
                d.settle,
            )
    elif config.setting("retry_on_worker_lost", d.task) and retries_left:
        pubs = [
            e
            for j, e in idx.published.get(d.task_id or "", ())
            if j > i and e.details.get("retries") == d.retries + 1
        ]
        if not pubs:
            bad(
                f"retry_on_worker_lost with retries left ({d.retries} < {max_retries}) "
                f"publishes a retry message with retries={d.retries + 1}, and none was"
            )
        if config.stores_errors(d.task) and not _stored(after, states.RETRY, "WorkerLostError"):
            bad("retry_on_worker_lost stores RETRY(WorkerLostError), and it was not stored")
        for f in failures:
            bad(f"retry_on_worker_lost retries, yet FAILURE was stored at {when(f)}", f)
        if late and not _settled(d, "acked"):
            bad(
                f"after the retry is published the message is acked, but it was {_settle_text(d)}",
                d.settle,
            )
    elif (
        late
        and config.setting("reject_on_worker_lost", d.task)
        and not (config.setting("retry_on_worker_lost", d.task))
    ):
        # §3.1: once retry_on_worker_lost has no retries left, RoWL is not applied.
        if not _settled(d, "rejected", requeue=True):
            bad(
                f"with acks_late and reject_on_worker_lost the message is rejected with "
                f"requeue, but it was {_settle_text(d)}",
                d.settle,
            )
        for _, st in after:
            bad(
                f"a requeued attempt stores no state, yet {st.details.get('state')} was "
                f"stored at {when(st)}",
                st,
            )
        if _landed(d) and config.complete and not idx.came_back(d.message_id, i):
            bad("the requeued message never ran again although the run drained")
    else:
        if config.stores_errors(d.task) and not _stored(after, states.FAILURE, "WorkerLostError"):
            bad("FAILURE(WorkerLostError) is stored, and it was not")
        if late:
            aof = bool(config.setting("acks_on_failure", d.task))
            want = ("acked", None) if aof else ("rejected", False)
            if not _settled(d, *want):
                bad(
                    f"with acks_late (acks_on_failure={aof}) the message is "
                    f"{'acked' if aof else 'rejected without requeue'}, but it was "
                    f"{_settle_text(d)}",
                    d.settle,
                )
        for x in _ran_again(idx, d, i, config):
            bad(
                f"a lost child is not redelivered, yet the task ran again on {x.worker} at "
                f"{when(x.start)}",
                x.start,
            )
    return out


def check_g8(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G8: ``Reject`` and ``Ignore`` (§3.2 G8).

    ``Ignore``: "no state will be recorded for the task, but the message is still
    acknowledged". ``Reject(requeue=False)`` stores FAILURE(Reject) (5.7) and rejects the
    acks_late message; ``Reject(requeue=True)`` "only takes effect when acks_late is
    enabled": then the message is requeued and runs again with no state stored, else it
    ran once and stays PENDING.
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        o, i = d.outcome, d.outcome_at
        if o is not None and i is not None and o.kind in ("ignored", "declined"):
            out += _reject_or_ignore(idx, d, o, i, config)
    return out


def _reject_or_ignore(
    idx: Index, d: Delivery, o: Event, i: int, config: CheckConfig
) -> list[Violation]:
    out: list[Violation] = []
    late = config.late(d.task)

    def bad(text: str, *proof: Event | None) -> None:
        out.append(Violation("G8", f"{d.label} {text}", evidence(d.start, o, *proof)))

    after = d.states_after(i)
    if o.kind == "ignored":
        for _, st in after:
            bad(
                f"raised Ignore at {when(o)}, yet {st.details.get('state')} was stored at "
                f"{when(st)}",
                st,
            )
        if late and not _settled(d, "acked"):
            bad(
                f"raised Ignore at {when(o)}: the message is acked, but it was {_settle_text(d)}",
                d.settle,
            )
        return out
    if not o.details.get("requeue"):
        if config.stores_errors(d.task) and not _stored(after, states.FAILURE, "Reject"):
            bad(
                f"raised Reject(requeue=False) at {when(o)}: FAILURE(Reject) is stored "
                "(5.7), and it was not"
            )
        if late and not _settled(d, "rejected", requeue=False):
            bad(
                f"raised Reject(requeue=False) at {when(o)}: the message is rejected "
                f"without requeue, but it was {_settle_text(d)}",
                d.settle,
            )
        return out
    for _, st in after:
        bad(
            f"raised Reject(requeue=True) at {when(o)}: no state is stored, yet "
            f"{st.details.get('state')} was stored at {when(st)}",
            st,
        )
    if late:
        if not _settled(d, "rejected", requeue=True):
            bad(
                f"raised Reject(requeue=True) at {when(o)}: the message is requeued, "
                f"but it was {_settle_text(d)}",
                d.settle,
            )
        elif (
            _landed(d)
            and config.complete
            and not (idx.deliveries_after(d.message_id, i) or idx.came_back(d.message_id, i))
        ):
            bad(
                f"raised Reject(requeue=True) at {when(o)} and was never delivered "
                "again although the run drained"
            )
    else:
        for x in _ran_again(idx, d, i, config):
            bad(
                f"raised Reject(requeue=True) at {when(o)} without acks_late (a no-op: "
                f"the message was acked at start), yet ran again at {when(x.start)}",
                x.start,
            )
    return out


def _receipt_revoked(
    idx: Index, d: Delivery, reason: str, g: str, config: CheckConfig
) -> list[Violation]:
    """The revoke/expiry path at receipt or start: REVOKED stored, acked, never started."""
    r = d.revoked
    assert r is not None and d.revoked_at is not None
    out: list[Violation] = []
    if d.start_at is not None and d.start_at < d.revoked_at:
        return out  # a revoke of a running task: G10
    # Every write of a delivery that never started is its revoke's (a real worker may
    # record it just before the revoked event); a discarded one counts, since after
    # SUCCESS it is the backend's call (G15).
    writes = d.states + d.discarded
    if config.stores_errors(d.task) and not _stored(writes, states.REVOKED, "TaskRevokedError"):
        out.append(
            Violation(
                g,
                (
                    f"{d.label} was revoked ({reason}) by {d.worker} at {when(r)} without storing "
                    "REVOKED(TaskRevokedError)"
                ),
                evidence(d.event, r),
            )
        )
    if not _settled(d, "acked"):
        out.append(
            Violation(
                g,
                (
                    f"{d.label} was revoked ({reason}) at {when(r)}: the message is acked, but it was "
                    f"{_settle_text(d)}"
                ),
                evidence(r, d.settle),
            )
        )
    if d.start is not None:
        out.append(
            Violation(
                g,
                (f"{d.label} was revoked ({reason}) at {when(r)}, yet started at {when(d.start)}"),
                evidence(r, d.start),
            )
        )
    return out


def check_g9(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G9: expiry (§3.2 G9).

    "When a worker receives an expired task it will mark the task as REVOKED." Expiry is
    checked at receipt and again before execution. So no delivery starts after its
    ``expires``; one received after it is revoked with reason ``expired``
    (``expired=True``), stored REVOKED(TaskRevokedError) and acked; nothing is revoked
    as expired before it expires.
    """
    idx = index_of(history)
    out: list[Violation] = []
    slack = config.slack
    for d in idx.deliveries:
        expires, r = d.expires, d.revoked
        if r is not None and r.details.get("reason") == "expired":
            if expires is None or r.time <= expires - slack:
                out.append(
                    Violation(
                        "G9",
                        (
                            f"{d.label} was revoked as expired at {when(r)} but its expiry is "
                            f"{_expiry(d)}"
                        ),
                        evidence(d.publication, r),
                    )
                )
            if r.details.get("expired") is False:
                out.append(
                    Violation(
                        "G9",
                        (f"{d.label} was revoked as expired at {when(r)} with expired=False"),
                        (r,),
                    )
                )
            out += _receipt_revoked(idx, d, "expired", "G9", config)
        if expires is None:
            continue
        if d.start is not None and d.start.time > expires + slack:
            out.append(
                Violation(
                    "G9",
                    (
                        f"{d.label} started on {d.worker} at {when(d.start)} although it expired at "
                        f"{_expiry(d)}; an expired task is "
                        "revoked, not run"
                    ),
                    evidence(d.publication, d.event, d.start),
                )
            )
        elif (
            d.event.time > expires + slack
            and r is None
            and d.start is None
            and config.complete
            and d.release is None
        ):
            out.append(
                Violation(
                    "G9",
                    (
                        f"{d.label} was delivered to {d.worker} at {when(d.event)}, after it expired, "
                        "and was never revoked"
                    ),
                    evidence(d.publication, d.event),
                )
            )
    return out


def _expiry(d: Delivery) -> str:
    pub = d.publication
    value = pub.details.get("expires") if pub is not None else None
    return str(value) if value is not None else "none"


def check_g10(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G10: revoke and terminate (§3.2 G10).

    "When a worker receives a revoke request it will skip executing the task, but it
    won't terminate an already executing task unless the terminate option is set." After
    a ``revoke`` reached a worker, no attempt of that task starts there (until it
    restarts, within the 10800 s the id is kept); a task revoked at receipt is stored
    REVOKED and acked; ``terminate=True`` ends a running attempt with revoked
    ('terminated') and REVOKED stored, ``terminate=False`` lets it finish; the immediate
    REVOKED of 5.6+ never overwrites a ready, STARTED or custom state.
    """
    idx = index_of(history)
    out: list[Violation] = []
    revoked_ids = {e.task_id for _, e in idx.revokes}
    for d in idx.deliveries:
        r = d.revoked
        if r is None or r.details.get("reason") != "revoked":
            continue
        out += _receipt_revoked(idx, d, "revoked", "G10", config)
        if d.task_id not in revoked_ids:
            out.append(
                Violation(
                    "G10",
                    (
                        f"{d.label} was revoked by {d.worker} at {when(r)} but no revoke for task "
                        f"{d.task_id} was sent"
                    ),
                    (r,),
                )
            )
    for i, rv in idx.revokes:
        out += _revoke(idx, i, rv, config)
    return out


def _revoke(idx: Index, i: int, rv: Event, config: CheckConfig) -> list[Violation]:
    out: list[Violation] = []
    reached = rv.details.get("workers")
    if reached is None:
        reached = sorted({d.worker for d in idx.deliveries if d.worker})
    terminate = bool(rv.details.get("terminate"))
    for w in reached:
        forgets = idx.next_fault(w, frozenset({"worker-crashed", "worker-online"}), i)
        for d in idx.by_worker.get(w, []):
            if d.task_id != rv.task_id:
                continue
            s = d.start
            if (
                s is not None
                and d.start_at is not None
                and i < d.start_at < forgets
                and s.time - rv.time < REVOKE_EXPIRES
            ):
                out.append(
                    Violation(
                        "G10",
                        (
                            f"{d.label} started on {w} at {when(s)} although its revoke reached {w} "
                            f"at {when(rv)}"
                        ),
                        evidence(rv, s),
                    )
                )
            if not d.running_at(i):
                continue
            o = d.outcome
            killed = o is not None and o.kind == "revoked"
            if terminate and not killed and (o is not None or config.complete):
                out.append(
                    Violation(
                        "G10",
                        (
                            f"{d.label} was running on {w} when revoke(terminate=True) came at "
                            f"{when(rv)}, yet it {'ended with ' + o.kind if o else 'was never'}"
                            f"{' at ' + when(o) if o else ' terminated'}"
                        ),
                        evidence(d.start, rv, o),
                    )
                )
            elif terminate and killed and d.outcome_at is not None:
                assert o is not None
                if config.stores_errors(d.task) and not _stored(
                    d.states_after(d.outcome_at), states.REVOKED
                ):
                    out.append(
                        Violation(
                            "G10",
                            (f"{d.label} was terminated at {when(o)} without storing REVOKED"),
                            evidence(rv, o),
                        )
                    )
            elif (
                not terminate
                and killed
                and not any(
                    i < k < (d.outcome_at or 0)
                    and x.task_id == rv.task_id
                    and x.details.get("terminate")
                    for k, x in idx.revokes
                )
            ):
                assert o is not None
                out.append(
                    Violation(
                        "G10",
                        (
                            f"{d.label} was terminated at {when(o)} by a revoke without terminate "
                            f"({when(rv)}); a running task is left to finish"
                        ),
                        evidence(rv, o),
                    )
                )
    out += _immediate_mark(idx, i, rv)
    return out


def _immediate_mark(idx: Index, i: int, rv: Event) -> list[Violation]:
    """5.6+: the REVOKED written by the revoke itself only replaces an unready state."""
    for j, st in idx.states.get(rv.task_id or "", ()):
        if j <= i or st.worker is not None:
            continue
        if st.details.get("state") != states.REVOKED:
            return []
        before = idx.stored_before(rv.task_id, j)
        old = before[1].details.get("state") if before else None
        if old in _REVOCABLE:
            return []
        return [
            Violation(
                "G10",
                (
                    f"the revoke of task {rv.task_id} at {when(rv)} stored REVOKED over {old}; it "
                    "only replaces PENDING, RECEIVED, RETRY or REJECTED"
                ),
                evidence(before[1] if before else None, rv, st),
            )
        ]
    return []


def _limit_fired(d: Delivery, j: int, e: Event, g: str, slack: float) -> list[Violation]:
    if d.start is None or d.start_at is None or j < d.start_at:
        return [
            Violation(
                g,
                f"{d.label}: a time limit fired at {when(e)} before it started",
                evidence(d.event, e),
            )
        ]
    limit = e.details.get("limit")
    ran = e.time - d.start.time
    if limit is not None and ran < float(limit) - slack:
        return [
            Violation(
                g,
                (
                    f"{d.label}: the {e.details.get('which')} time limit ({limit} s) fired at "
                    f"{when(e)}, only {ran:g} s after it started"
                ),
                evidence(d.start, e),
            )
        ]
    return []


def _overran(idx: Index, d: Delivery, which: str, config: CheckConfig) -> list[Violation]:
    limit = config.setting("soft_time_limit" if which == "soft" else "time_limit", d.task)
    if limit is None or d.start is None or d.marks_of("time-limit", which=which):
        return []
    end = idx.attempt_end(d)
    if end - d.start.time <= float(limit) + config.slack:
        return []
    g = "G11" if which == "soft" else "G12"
    return [
        Violation(
            g,
            (
                f"{d.label} ran from {when(d.start)} for {end - d.start.time:g} s, past its "
                f"{which} time limit of {limit} s, and the limit never fired"
            ),
            evidence(d.start, d.outcome),
        )
    ]


def check_g11(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G11: the soft time limit (§3.2 G11).

    "SoftTimeLimitExceeded is raised inside the task": caught, the task may still
    succeed; uncaught, FAILURE(SoftTimeLimitExceeded) is stored. The limit fires no
    sooner than ``limit`` after the start and only in a running attempt; a failure with
    SoftTimeLimitExceeded follows a soft limit; with ``config.soft_time_limit`` an attempt
    never runs past it (plus ``slack``) without the limit firing.
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        for j, e in d.marks_of("time-limit", which="soft"):
            out += _limit_fired(d, j, e, "G11", config.slack)
        o = d.outcome
        if (
            o is not None
            and o.kind == "failed"
            and d.outcome_at is not None
            and exc_type(o.details.get("exception")) == "SoftTimeLimitExceeded"
        ):
            if not d.marks_of("time-limit", which="soft"):
                out.append(
                    Violation(
                        "G11",
                        (
                            f"{d.label} failed with SoftTimeLimitExceeded at {when(o)} but no soft "
                            "time limit fired"
                        ),
                        evidence(d.start, o),
                    )
                )
            if config.stores_errors(d.task) and not _stored(
                d.states + d.discarded, states.FAILURE, "SoftTimeLimitExceeded"
            ):
                out.append(
                    Violation(
                        "G11",
                        (
                            f"{d.label} failed with SoftTimeLimitExceeded at {when(o)} without "
                            "storing FAILURE(SoftTimeLimitExceeded)"
                        ),
                        evidence(d.start, o),
                    )
                )
        out += _overran(idx, d, "soft", config)
    return out


def check_g12(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G12: the hard time limit (§3.2 G12).

    "The worker processing the task will be killed and replaced with a new one"; the
    parent stores FAILURE(TimeLimitExceeded). acks_late with acks_on_timeout acks;
    acks_late without it stores FAILURE, rejects with requeue and runs the task again;
    early ack was acked at start. The limit fires no sooner than ``limit`` after the
    start, the attempt then ends as failed (never succeeded), and with
    ``config.time_limit`` an attempt never runs past it (plus ``slack``) unchecked.
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        out += _overran(idx, d, "hard", config)
        hard = d.marks_of("time-limit", which="hard")
        if hard:
            out += _hard_limit(idx, d, *hard[0], config)
    return out


def _hard_limit(idx: Index, d: Delivery, j: int, e: Event, config: CheckConfig) -> list[Violation]:
    out = _limit_fired(d, j, e, "G12", config.slack)

    def bad(text: str, *proof: Event | None) -> None:
        out.append(
            Violation(
                "G12",
                f"{d.label}: the hard time limit fired at {when(e)}; " + text,
                evidence(d.start, e, *proof),
            )
        )

    o = d.outcome
    if o is not None and (d.outcome_at or 0) > j and o.kind != "failed":
        bad(f"the child is killed, yet the attempt ended with {o.kind} at {when(o)}", o)
    if config.stores_errors(d.task) and not _stored(
        d.states_after(j), states.FAILURE, "TimeLimitExceeded"
    ):
        bad("FAILURE(TimeLimitExceeded) is stored, and it was not")
    if not config.late(d.task):
        return out
    aot = bool(config.setting("acks_on_timeout", d.task))
    if aot and not _settled(d, "acked"):
        bad(
            f"with acks_late and acks_on_timeout the message is acked, but it was "
            f"{_settle_text(d)}",
            d.settle,
        )
    elif not aot:
        if not _settled(d, "rejected", requeue=True):
            bad(
                f"with acks_late and acks_on_timeout=False the message is rejected with "
                f"requeue, but it was {_settle_text(d)}",
                d.settle,
            )
        elif _landed(d) and config.complete and not idx.came_back(d.message_id, j):
            bad("the requeued message never ran again although the run drained")
    return out
