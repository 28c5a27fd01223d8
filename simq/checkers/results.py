"""The result backend: G14 and G15 of CELERY_SEMANTICS.md §3.2."""

from __future__ import annotations

from celery import states

from simq.checkers.base import CheckConfig, Violation, when
from simq.checkers.delivery import evidence
from simq.checkers.index import Index, index_of
from simq.history import Event, History

__all__ = ["check_g14", "check_g15"]


def check_g14(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G14: deduplicating successful tasks, when opted in (§3.2 G14).

    With ``worker_deduplicate_successful_tasks`` (and an acks_late task, a message
    flagged redelivered and a persistent backend), "if the backend state is SUCCESS,
    execution is skipped": such an attempt writes no state (not even one the backend
    discards) and ends, if at all, as succeeded.
    """
    idx = index_of(history)
    out: list[Violation] = []
    if not (config.deduplicate_successful_tasks and config.persistent_backend):
        return out
    for d in idx.deliveries:
        if d.start is None or d.start_at is None or not d.redelivered or not config.late(d.task):
            continue
        done = idx.succeeded_before(d.task_id, d.start_at)
        if done is None:
            continue
        success = done[1]
        writes = sorted(d.states + d.discarded, key=lambda r: r[0])
        for _, st in writes:
            out.append(
                Violation(
                    "G14",
                    (
                        f"{d.label} was redelivered and started at {when(d.start)} after SUCCESS was "
                        f"stored at {when(success)}, yet it ran: it wrote {st.details.get('state')} at "
                        f"{when(st)}; a deduplicated task is skipped"
                    ),
                    evidence(success, d.start, st),
                )
            )
        o = d.outcome
        if o is not None and o.kind != "succeeded":
            out.append(
                Violation(
                    "G14",
                    (
                        f"{d.label} was redelivered and started at {when(d.start)} after SUCCESS was "
                        f"stored at {when(success)}, yet it ran and ended with {o.kind} at {when(o)}"
                    ),
                    evidence(success, d.start, o),
                )
            )
    return out


def check_g15(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G15: SUCCESS is terminal in key-value backends (§3.2 G15, §2.2).

    "After ST(SUCCESS), no later ST changes the stored state in Redis, memcached or file
    backends, even if duplicate executions write FAILURE, RETRY or STARTED." With
    ``config.kv_backend``: no write after a SUCCESS (until the result is forgotten)
    changes the stored state or result, and a write is discarded (``state-discarded``)
    only when the stored state is SUCCESS.
    """
    idx = index_of(history)
    out: list[Violation] = []
    if not config.kv_backend:
        return out
    for task_id, writes in idx.states.items():
        forgotten = idx.forgotten.get(task_id, [])
        success: Event | None = None
        success_at = -1
        for j, st in writes:
            if success is not None and any(success_at < f < j for f in forgotten):
                success = None
            if success is None:
                if st.details.get("state") == states.SUCCESS:
                    success, success_at = st, j
                continue
            if (st.details.get("state"), st.details.get("result")) != (
                states.SUCCESS,
                success.details.get("result"),
            ):
                out.append(
                    Violation(
                        "G15",
                        (
                            f"task {task_id}: {st.details.get('state')} was stored at {when(st)} over "
                            f"the SUCCESS stored at {when(success)}; in a key-value backend SUCCESS "
                            "is final"
                        ),
                        (success, st),
                    )
                )
    for task_id, discards in idx.discarded.items():
        for j, dis in discards:
            before = idx.stored_before(task_id, j)
            if before is None or before[1].details.get("state") != states.SUCCESS:
                old = before[1].details.get("state") if before else "PENDING"
                out.append(
                    Violation(
                        "G15",
                        (
                            f"task {task_id}: a write of {dis.details.get('state')} was discarded at "
                            f"{when(dis)} although the stored state was {old}; only writes after "
                            "SUCCESS are discarded"
                        ),
                        evidence(before[1] if before else None, dis),
                    )
                )
    return out
