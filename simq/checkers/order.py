"""Matching events to deliveries by order, for histories without attempt ids.

Internal to the checkers. A history whose events carry ``attempt`` ids is filed by id;
one without them (recorded before simq wrote them, or by a recorder that does not) is
filed by these rules: an event goes to the delivery of its message on its worker whose
last step came just before, and backend writes (which carry no message id) to the
attempt of that task on that worker that the steps around them point to.
"""

from __future__ import annotations

from simq.checkers.model import Delivery, Index, Ref

__all__ = [
    "WRITES_BEFORE",
    "done",
    "last_step",
    "latest",
    "next_step",
    "reattribute",
    "stored_revoked",
]

#: Outcomes recorded after the attempt's backend write (child-lost, revoked and declined
#: come first: Reject(requeue=False) stores its FAILURE after the decline, in the parent).
WRITES_BEFORE = frozenset({"succeeded", "failed", "retried", "ignored"})


def latest(cands: list[Delivery], i: int) -> Delivery | None:
    """The delivery with the last step before ``i``: its start, outcome or a mark (a
    child-lost, hard time limit or cancel is followed by its write), or its revoke or
    unknown-task notice at receipt."""
    best: Delivery | None = None
    best_at = -1
    for d in cands:
        j = last_step(d, i)
        if j is not None and j > best_at:
            best, best_at = d, j
    return best


def next_step(d: Delivery, i: int) -> float:
    """Index of ``d``'s first outcome or mark after ``i`` (infinity if none)."""
    steps = (d.outcome_at, d.died_at, *(k for k, _ in d.marks))
    return min((j for j in steps if j is not None and j > i), default=float("inf"))


def last_step(d: Delivery, i: int) -> int | None:
    """Index of ``d``'s last step before ``i`` (start, outcome, mark, receipt notice)."""
    steps = (d.start_at, d.revoked_at, d.unregistered_at, d.outcome_at, *(k for k, _ in d.marks))
    return max((j for j in steps if j is not None and j < i), default=None)


def reattribute(idx: Index, d: Delivery, field: str) -> None:
    """Move backend writes the single pass gave the wrong attempt of one task and worker.

    Processes of a real worker record in their own order: the REVOKED write of a
    message revoked at receipt may come before its ``revoked`` event, and an attempt's
    RETRY may land after a retry message was already refused there. A delivery revoked
    at receipt writes only REVOKED; a started, unrevoked one writes no REVOKED when a
    sibling revoked at receipt lacks its write.
    """
    writes: list[Ref] = getattr(d, field)
    if not writes:
        return
    siblings = [x for x in idx.by_task_worker.get((d.task_id, d.worker), ()) if x is not d]
    keep: list[Ref] = []
    for j, e in writes:
        revoked_write = e.details.get("state") == "REVOKED"
        if d.start is None and d.revoked is not None and not revoked_write:
            dest = [
                x
                for x in siblings
                if x.start_at is not None
                and x.start_at < j
                and (x.outcome_at is None or x.outcome_at >= j)
            ]
        elif d.start is not None and d.revoked is None and revoked_write:
            dest = sorted(
                (
                    x
                    for x in siblings
                    if x.start is None
                    and x.revoked_at is not None
                    and not stored_revoked(getattr(x, field))
                ),
                key=lambda x: abs((x.revoked_at or 0) - j),
            )
        else:
            dest = []
        if dest:
            getattr(dest[0], field).append((j, e))
            getattr(dest[0], field).sort(key=lambda r: r[0])
        else:
            keep.append((j, e))
    setattr(d, field, keep)


def stored_revoked(writes: list[Ref]) -> bool:
    return any(e.details.get("state") == "REVOKED" for _, e in writes)


def done(d: Delivery) -> bool:
    """Whether nothing more can be filed under ``d`` by order alone."""
    return d.settle is not None and d.start is not None and d.outcome is not None
