"""Retries and timing: G13, G16, G18 of CELERY_SEMANTICS.md §3.2."""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict

from celery import states

from simq.checkers.base import CheckConfig, Violation, per_second, when
from simq.checkers.delivery import evidence
from simq.checkers.index import Delivery, Index, index_of
from simq.history import History

__all__ = ["check_g13", "check_g16", "check_g18"]

#: Events after which a worker's token buckets start full again (new consumer, G7).
_BUCKET_RESETS = frozenset(
    {"worker-online", "worker-crashed", "connection-lost", "connection-restored"}
)


def check_g13(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G13: retry publish ordering, at least once at the retry boundary (§3.2 G13).

    "The retry message is published inside the task body before Retry is raised, and
    before RETRY is stored and before the acks_late ack." For each attempt that ended
    ``retried`` with ``request.retries == k``: a message for the same task id with
    ``retries=k+1`` was published during the attempt, before RETRY was stored, and RETRY
    was stored unless the task's errors are not stored (§4.3). (That the ack follows
    RETRY is G2.)
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        o = d.outcome
        if o is None or o.kind != "retried" or d.start_at is None or d.outcome_at is None:
            continue
        k = d.retries
        published = idx.published.get(d.task_id or "", [])
        lo = bisect.bisect_right(published, d.start_at, key=lambda r: r[0])
        hi = bisect.bisect_left(published, d.outcome_at, key=lambda r: r[0])
        pubs = [(j, e) for j, e in published[lo:hi] if e.details.get("retries") == k + 1]
        retry = [
            (j, e) for j, e in d.states_after(d.start_at) if e.details.get("state") == states.RETRY
        ]
        if not pubs:
            out.append(
                Violation(
                    "G13",
                    (
                        f"{d.label} (retries={k}) ended with retried at {when(o)} but no message with "
                        f"retries={k + 1} was published during the attempt; retry() publishes the "
                        "next message before raising Retry"
                    ),
                    evidence(d.start, o),
                )
            )
        else:
            pub_at, pub = pubs[0]
            for j, st in retry:
                if j < pub_at:
                    out.append(
                        Violation(
                            "G13",
                            (
                                f"{d.label}: RETRY was stored at {when(st)} before the retry message "
                                f"{pub.message_id} was published at {when(pub)}; the message goes "
                                "first"
                            ),
                            evidence(d.start, st, pub),
                        )
                    )
        if not retry and config.stores_errors(d.task, d.ignore_result):
            out.append(
                Violation(
                    "G13",
                    (f"{d.label} ended with retried at {when(o)} without storing RETRY"),
                    evidence(d.start, o),
                )
            )
    return out


def check_g16(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G16: the ETA is a lower bound, and rate limits stack on top of it (§3.2 G16).

    "The task is guaranteed to be executed at some time after the specified date and
    time, but not necessarily at that exact time." No attempt starts before its
    message's ETA (less ``slack``). With ``config.rate_limit`` for a task (a token bucket
    of capacity 1 per worker, §6): the n-th start on a worker after the m-th is at least
    ``(n - m) / rate`` after the m-th message became available (delivered, ETA passed).
    """
    idx = index_of(history)
    out: list[Violation] = []
    for d in idx.deliveries:
        eta = d.eta
        if d.start is not None and eta is not None and d.start.time < eta - config.slack:
            pub = d.publication
            out.append(
                Violation(
                    "G16",
                    (
                        f"{d.label} started on {d.worker} at {when(d.start)}, before its ETA "
                        f"{pub.details.get('eta') if pub else eta}"
                    ),
                    evidence(pub, d.event, d.start),
                )
            )
    out += _rate_limits(idx, config)
    return out


def _rate_limits(idx: Index, config: CheckConfig) -> list[Violation]:
    out: list[Violation] = []
    resets: dict[str | None, list[int]] = defaultdict(list)
    for j, e in idx.faults:
        if e.kind in _BUCKET_RESETS:
            resets[e.worker].append(j)
    runs: dict[tuple[str | None, str | None, int], list[Delivery]] = defaultdict(list)
    for d in idx.deliveries:
        if d.start_at is None:
            continue
        era = sum(1 for j in resets.get(d.worker, ()) if j < d.start_at)
        runs[(d.worker, d.task, era)].append(d)
    for (worker, task, _), ds in runs.items():
        rate = per_second(config.setting("rate_limit", task))
        if rate is None:
            continue
        ds.sort(key=lambda d: d.start_at or 0)
        best = float("-inf")  # max over earlier starts m of available_m - m / rate
        for n, d in enumerate(ds):
            assert d.start is not None
            if n:
                earliest = best + n / rate
                if d.start.time < earliest - config.slack - 1e-6:
                    out.append(
                        Violation(
                            "G16",
                            (
                                f"{d.label} started on {worker} at {when(d.start)}, sooner than its "
                                f"rate limit ({config.setting('rate_limit', task)}) allows after "
                                f"{n} earlier start(s): not before {earliest - d.start.time:g} s later"
                            ),
                            evidence(*(x.start for x in ds[max(0, n - 3) : n]), d.start),
                        )
                    )
            available = max(d.event.time, d.eta or float("-inf"))
            best = max(best, available - n / rate)
    return out


def check_g18(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G18: a per-task monotonic retry counter (§3.2 G18).

    "Across PUBs for the same task id that come from retry(), retries increases by
    exactly 1 each time. Broker redeliveries re-deliver the same retries value." Each
    attempt starts with its message's ``retries``; a message published for a task id
    while an attempt of it runs (or right after its child died, retry_on_worker_lost)
    carries that attempt's ``retries + 1``.
    """
    idx = index_of(history)
    out: list[Violation] = []
    attempts: dict[str | None, list[Delivery]] = defaultdict(list)
    for d in idx.deliveries:
        if d.start is None or d.start_at is None:
            continue
        attempts[d.task_id].append(d)
        pub = d.publication
        got, want = d.start.details.get("retries"), pub.details.get("retries") if pub else None
        if got is not None and want is not None and int(got) != int(want):
            out.append(
                Violation(
                    "G18",
                    (
                        f"{d.label} started at {when(d.start)} with retries={got} but its message "
                        f"was published with retries={want}; a redelivery keeps the retries value"
                    ),
                    evidence(pub, d.event, d.start),
                )
            )
    for task_id, pubs in idx.published.items():
        publishers = _Publishers(attempts.get(task_id, []))
        for j, p in pubs:
            r = p.details.get("retries")
            if not r:
                continue
            live = publishers.at(j)
            if live and not any(d.retries == int(r) - 1 for d in live):
                out.append(
                    Violation(
                        "G18",
                        (
                            f"message {p.message_id} of task {task_id} was published at {when(p)} with "
                            f"retries={r} while attempt(s) with retries="
                            f"{', '.join(str(d.retries) for d in live)} ran; a retry carries the "
                            "attempt's retries + 1"
                        ),
                        evidence(*(d.start for d in live), p),
                    )
                )
    return out


class _Publishers:
    """The attempts of one task that can publish its next message at a given index.

    An attempt publishes while it runs, and retry_on_worker_lost publishes from the
    parent right after its child died (until another attempt starts). Publications are
    asked about in history order, so one sweep over the attempts answers them all.
    """

    def __init__(self, attempts: list[Delivery]) -> None:
        self.order = {id(d): n for n, d in enumerate(attempts)}  # delivery order
        self.by_start = sorted(attempts, key=lambda d: d.start_at or 0)
        self.starts = [d.start_at or 0 for d in self.by_start]
        lost = [d for d in attempts if d.outcome is not None and d.outcome.kind == "child-lost"]
        self.lost = sorted(lost, key=lambda d: d.outcome_at or 0)
        self.lost_at = [d.outcome_at or 0 for d in self.lost]
        self.next = 0  # attempts in by_start[:next] started before the last index asked
        self.active: list[tuple[int, int, Delivery]] = []  # (stop, n, attempt)

    def at(self, j: int) -> list[Delivery]:
        while self.next < len(self.by_start) and self.starts[self.next] < j:
            d = self.by_start[self.next]
            heapq.heappush(self.active, (_stop(d), self.next, d))
            self.next += 1
        while self.active and self.active[0][0] < j:
            heapq.heappop(self.active)
        found = [d for _, _, d in self.active if d.running_at(j) and not _crashed_before(d, j)]
        # A lost child's parent publishes until another attempt starts.
        k = bisect.bisect_left(self.starts, j)
        since = self.starts[k - 1] if k else -1
        lo = bisect.bisect_right(self.lost_at, since)
        hi = bisect.bisect_left(self.lost_at, j)
        found += [d for d in self.lost[lo:hi] if (d.start_at or 0) < j]
        return sorted({id(d): d for d in found}.values(), key=lambda d: self.order[id(d)])


def _stop(d: Delivery) -> int:
    """The last index at which ``d`` may still be running (its outcome, death or cancel)."""
    ends = [j for j in (d.outcome_at, d.died_at) if j is not None]
    ends += [j for j, e in d.marks if e.kind == "cancelled"]
    return min(ends) if ends else 1 << 62


def _crashed_before(d: Delivery, j: int) -> bool:
    crashed = d.release is not None and d.release.kind == "worker-crashed"
    return crashed and d.release_at is not None and d.release_at < j
