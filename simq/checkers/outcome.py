"""How an attempt ends: G3 (child lost) and G8 (Reject, Ignore) of CELERY_SEMANTICS.md §3.2."""

from __future__ import annotations

from celery import states

from simq.checkers.base import CheckConfig, Violation, exc_type, when
from simq.checkers.delivery import evidence
from simq.checkers.index import Delivery, Index, Ref, index_of
from simq.history import Event, History

__all__ = ["check_g3", "check_g8"]


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
    # On redis/sqs a visibility-timeout restore duplicates the message: G6's business.
    return [
        x
        for x in idx.started_after(d.message_id, i)
        if not (
            config.emulates_acks
            and (x.copy or idx.duplicated_before(d.message_id, x.start_at or x.at))
        )
    ]


def _settle_text(d: Delivery) -> str:
    s = d.settle
    if s is None:
        return "never acked or rejected"
    requeue = f" (requeue={bool(s.details.get('requeue'))})" if s.kind == "rejected" else ""
    return f"{s.kind}{requeue} at {when(s)}"


def _killed_past_hard_limit(d: Delivery, kill: Event, config: CheckConfig) -> bool:
    """The child was killed once its hard time limit was already due, and the limit fired.

    billiard then reports the job's hard time limit (``TimeLimitExceeded``: FAILURE, the
    ack decision of a timeout), not a lost child: G12 judges it. Recorded on
    ``filesystem://``, where the prefork pool checks limits from a thread that wakes once
    a second: a 1 s hard limit due at +1.10 s, the child killed at +1.34 s, the limit
    reported at +2.00 s.
    """
    if d.start is None:
        return False
    for _, mark in d.marks_of("time-limit", which="hard"):
        limit = mark.details.get("limit")
        if limit is not None and kill.time >= d.start.time + float(limit) - config.slack:
            return True
    return False


def check_g3(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G3: a child process dies; this is not redelivery (§3.2 G3, §3.1).

    "The worker will acknowledge the message if the child process executing the task is
    terminated ... even when acks_late is enabled." For each ``child-lost``: after a
    stored SUCCESS nothing changes (5.7; ``config.lost_child_keeps_success``); with
    retry_on_worker_lost and retries left a retry message (retries+1) and
    RETRY(WorkerLostError) follow; with acks_late and reject_on_worker_lost the message
    is rejected with requeue and runs again, no state stored; otherwise
    FAILURE(WorkerLostError) is stored, acks_late acks (or rejects without requeue when
    acks_on_failure is off) and the task never runs again. A ``child-killed`` fault ends
    its attempt with ``child-lost``.
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        for j, kill in d.marks_of("child-killed"):
            if _killed_past_hard_limit(d, kill, config):
                continue
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

    # The parent process died before its ack or reject went out (a hook's BaseException
    # after Request.on_failure asked for it, sent later on an event loop): the message
    # is released with the worker and redelivered, which G4 judges.
    r = d.release
    parent_died = (
        d.settle is None and r is not None and "worker-crashed" in (r.kind, r.details.get("reason"))
    )

    def settled(kind: str, requeue: bool | None = None) -> bool:
        return parent_died or _settled(d, kind, requeue)

    max_retries = config.setting("max_retries", d.task)
    retries_left = max_retries is None or d.retries < max_retries
    if config.lost_child_keeps_success and idx.succeeded_before(d.task_id, i) is not None:
        for f in failures:
            bad(f"SUCCESS was already stored, yet FAILURE was stored at {when(f)}", f)
        if late and not settled("acked"):
            bad(
                f"SUCCESS was already stored, so the message is acked, but it was "
                f"{_settle_text(d)}",
                d.settle,
            )
    elif config.setting("retry_on_worker_lost", d.task) and retries_left:
        pubs = [
            e
            for j, e in idx.published_after(d.task_id, i)
            if e.details.get("retries") == d.retries + 1
        ]
        if not pubs:
            bad(
                f"retry_on_worker_lost with retries left ({d.retries} < {max_retries}) "
                f"publishes a retry message with retries={d.retries + 1}, and none was"
            )
        stores = config.stores_errors(d.task, d.ignore_result)
        if stores and not _stored(after, states.RETRY, "WorkerLostError"):
            bad("retry_on_worker_lost stores RETRY(WorkerLostError), and it was not stored")
        for f in failures:
            bad(f"retry_on_worker_lost retries, yet FAILURE was stored at {when(f)}", f)
        if late and not settled("acked"):
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
        if not settled("rejected", requeue=True):
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
        stores = config.stores_errors(d.task, d.ignore_result)
        if stores and not _stored(after, states.FAILURE, "WorkerLostError"):
            bad("FAILURE(WorkerLostError) is stored, and it was not")
        if late:
            aof = bool(config.setting("acks_on_failure", d.task))
            want = ("acked", None) if aof else ("rejected", False)
            if not settled(*want):
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
    acknowledged". ``Reject(requeue=False)`` stores FAILURE(Reject) (5.7; see
    ``config.reject_stores_failure``) and rejects the acks_late message;
    ``Reject(requeue=True)`` "only takes effect when acks_late is enabled": then the message is requeued and runs again with no state stored, else it
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
        if (
            config.reject_stores_failure
            and config.stores_errors(d.task, d.ignore_result)
            and not _stored(after, states.FAILURE, "Reject")
        ):
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
            and not (idx.delivered_after(d.message_id, i) or idx.came_back(d.message_id, i))
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
