"""Tasks a worker discards: G9 (expiry) and G10 (revoke, terminate), §3.2."""

from __future__ import annotations

from celery import states

from simq.checkers.base import SYNLOOP_DRAIN, CheckConfig, Violation, when
from simq.checkers.delivery import evidence
from simq.checkers.index import Delivery, Index, index_of
from simq.checkers.outcome import _settle_text, _settled, _stored
from simq.history import Event, History

__all__ = ["check_g9", "check_g10"]


#: ``revoke`` ids live in a worker's memory for this long (CELERY_WORKER_REVOKE_EXPIRES).
REVOKE_EXPIRES = 10800.0


_REVOCABLE = frozenset({None, states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})


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
    stores = config.stores_errors(d.task, d.ignore_result)
    if stores and not _stored(writes, states.REVOKED, "TaskRevokedError"):
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
    if not _settled(d, "acked") and not _ack_cut_off(d):
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


def _ack_cut_off(d: Delivery) -> bool:
    """``d`` was revoked and its worker lost it (crash, connection loss) before any ack.

    Celery's consumer sends the ack of a revoked message through ``call_soon``
    (consumer.py ``call_soon_ack``): a prefork worker's hub sends it when its loop next
    wakes, and a crash in between leaves the message to the broker, which takes it back
    (G4 and G7 judge that).
    """
    return (
        d.settle is None
        and d.release is not None
        and d.release_at is not None
        and d.revoked_at is not None
        and d.release_at > d.revoked_at
    )


def check_g9(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G9: expiry (§3.2 G9).

    "When a worker receives an expired task it will mark the task as REVOKED." Expiry is
    checked at receipt and again before execution. So no delivery starts after its
    ``expires`` (on the synchronous loop, none handed to the pool after it:
    :func:`_handed_in_time`); one received after it is revoked with reason ``expired``
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
        if (
            d.start is not None
            and d.start.time > expires + slack
            and not _handed_in_time(d, expires + slack, config)
        ):
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


def _handed_in_time(d: Delivery, deadline: float, config: CheckConfig) -> bool:
    """On Celery's synchronous loop, whether ``d`` went to the prefork pool before expiry.

    There ``Request.execute_using_pool`` hands a task to the pool when it is received (or
    when its ETA is due), checking expiry then; nothing checks it again when a child takes
    the task up, so it may start after its expiry (seen on ``filesystem://``: 0.7 s
    after). On the event loop the consumer keeps a reserved task until a child is free.
    """
    if not config.sync_loop:
        return False
    handed = max(d.event.time, d.eta if d.eta is not None else d.event.time)
    return handed <= deadline


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
    # Celery's Request.maybe_expire adds an expired task's id to the worker's revoked
    # set: later deliveries of that id to the same worker (a retry, a copy) are revoked
    # there too, until the worker restarts.
    expired: dict[tuple[str | None, str | None], list[int]] = {}
    for d in idx.deliveries:
        r = d.revoked
        if r is not None and r.details.get("expired") and d.revoked_at is not None:
            expired.setdefault((d.worker, d.task_id), []).append(d.revoked_at)
    restarts = frozenset({"worker-crashed", "worker-online"})
    for d in idx.deliveries:
        r = d.revoked
        if r is None or r.details.get("reason") != "revoked":
            continue
        out += _receipt_revoked(idx, d, "revoked", "G10", config)
        at = d.revoked_at
        if (
            at is not None
            and d.worker is not None
            and any(
                k < at < idx.next_fault(d.worker, restarts, k)
                for k in expired.get((d.worker, d.task_id), ())
            )
        ):
            continue
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
    # On Celery's synchronous loop a worker reads its broadcast queue only when a poll
    # picks it (one message per drain, its queues in turn): the revoke may reach it a
    # turn after it was sent (recorded on filesystem://: an ETA task revoked at +0.35 s
    # started at +1.64 s, the worker having read its task queue first).
    unread = SYNLOOP_DRAIN + config.transport_tolerance if config.sync_loop else 0.0
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
                and not (config.sync_loop and s.time - rv.time <= unread)
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
            # On the synchronous loop the command may be read a turn late: a task that
            # ended before its worker read it was never there to terminate.
            read_late = config.sync_loop and o is not None and o.time - rv.time <= unread
            if terminate and not killed and not read_late and (o is not None or config.complete):
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
                if config.stores_errors(d.task, d.ignore_result) and not _stored(
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
