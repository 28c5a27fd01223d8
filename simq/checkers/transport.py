"""The broker's side of delivery: G5 (prefetch) and G6 (visibility timeout), §3.2."""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict

from simq.checkers.base import SYNLOOP_DRAIN, CheckConfig, Violation, when
from simq.checkers.delivery import evidence
from simq.checkers.index import Delivery, Index, index_of
from simq.history import Event, History

__all__ = ["check_g5", "check_g6"]


def check_g5(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G5: the prefetch and reservation bound (§3.2 G5).

    "Prefetch count = worker_prefetch_multiplier x concurrency; 0 means unlimited. ETA
    messages do not count." A worker is sent a message only while it holds fewer unacked,
    non-ETA messages than its window (so it never holds more than the window but for an
    ETA that fires), and with ``eta_task_limit`` never more ETA-held messages than that.
    A message with an ETA header is ETA-held until its timer fires, even if the ETA was
    already due when it arrived: Celery widens the window for it all the same.
    The window comes from ``config.prefetch`` or the worker's ``worker-online`` event.
    """
    idx = index_of(history)
    out: list[Violation] = []
    at = {d.at: d for d in idx.deliveries}
    times = [e.time for e in idx.events]
    counted: dict[str | None, list[Delivery]] = defaultdict(list)  # unacked, not ETA-held
    timers: dict[str | None, list[tuple[int, int, Delivery]]] = defaultdict(list)
    etas: dict[str | None, list[Delivery]] = defaultdict(list)  # for eta_task_limit
    online: dict[str | None, Event] = {}
    limit = config.eta_task_limit
    for i, e in enumerate(idx.events):
        if e.kind == "worker-online":
            online[e.worker] = e
            continue
        d = at.get(i)
        if d is None:
            continue
        w = e.worker
        heap = timers[w]
        while heap and heap[0][0] <= i:  # its ETA passed or it started: it counts now
            counted[w].append(heapq.heappop(heap)[2])
        mine = counted[w] = [x for x in counted[w] if x.unacked_at(i)]
        window = config.window(w)
        if window is None and w in online:
            info = online[w].details
            window = int(info.get("concurrency") or 0) * int(info.get("prefetch_multiplier") or 0)
        if window and len(mine) >= window:
            out.append(
                Violation(
                    "G5",
                    (
                        f"{w} was sent {d.label} at {when(e)} while it held {len(mine)} "
                        f"unacked non-ETA message(s) ({', '.join(x.message_id for x in mine)}); "
                        f"its prefetch window is {window}"
                    ),
                    evidence(*(x.event for x in mine), e),
                )
            )
        if config.sync_loop and d.eta is not None:
            leaves = _turn_ends(idx, d, times, config.slack)
        else:
            leaves = _leaves_eta_hold(d, times, config.transport_tolerance)
        if leaves <= i:
            mine.append(d)
            continue
        heapq.heappush(heap, (leaves, i, d))
        if limit is not None:
            held = etas[w] = [
                x
                for x in etas[w]
                if x.unacked_at(i) and _leaves_eta_hold(x, times, config.transport_tolerance) > i
            ]
            if len(held) + 1 > limit:
                out.append(
                    Violation(
                        "G5",
                        (
                            f"{w} held {len(held) + 1} ETA messages at {when(e)} when it was "
                            f"sent {d.label}; worker_eta_task_limit is {limit}"
                        ),
                        evidence(*(x.event for x in held), e),
                    )
                )
            held.append(d)
    return out


def _turn_ends(idx: Index, d: Delivery, times: list[float], slack: float) -> int:
    """On Celery's synchronous loop, the index from which ETA message ``d`` counts.

    Without an event loop the prefork pool takes one job per child (billiard's
    ``putlocks``), and the worker's timer thread waits for a free child to hand ``d``
    over (``apply_eta_task``), then lowers the prefetch count: the hold lasts until
    ``d`` starts. ``synloop`` gives the channel a changed count only as a turn begins,
    and a turn ends when its drain returns a message, or at an empty poll
    ``SYNLOOP_DRAIN`` after it began. The count is stale until then: the channel may
    take one message more, the first it fetches after ``d`` started (which ends the
    turn), and none after. So ``d`` counts from the delivery after that first one
    (deliveries within ``slack`` of the start aside), and at the latest two drains past
    the start: a turn ends within one drain and a poll interval of it. Recorded on
    ``filesystem://``, window 1: the ETA task started when the task before it was acked,
    and the next message was fetched 1 ms later, while the ETA task ran unacked.
    """
    if d.start_at is not None:
        base = d.start_at
    elif d.revoked_at is not None and d.settle_at is not None:
        base = d.settle_at  # revoked when its ETA fired: acked, the count lowered
    else:
        return len(times)  # still held: it never reached a child
    if base >= len(times):
        return base
    fired = times[base]
    latest = bisect.bisect_right(times, fired + 2 * SYNLOOP_DRAIN + slack, lo=base)
    jitter = bisect.bisect_right(times, fired + slack, lo=base)
    first = next(
        (x.at for x in idx.by_worker.get(d.worker or "", []) if x is not d and x.at >= jitter),
        None,
    )
    ends = latest if first is None else first + 1
    return min(max(jitter, ends), latest)


def _leaves_eta_hold(d: Delivery, times: list[float], slack: float = 0.0) -> int:
    """Index from which ``d`` counts against the window: its ETA passed, or it started.

    Any message with an ETA header, even one already due when it arrives, is held on
    the worker's timer outside the window (Celery's strategy.py: ``if req.eta:``
    ``qos.increment_eventually()`` and ``call_at(eta, apply_eta_task)``; the count drops
    again in ``apply_eta_task``). With no slack (the simulator) it leaves the hold when
    it starts or once time moves past its ETA or, for a due ETA, past the instant it
    was delivered, whichever comes first; with a slack, a real worker's timer and next
    consumer turn get that much longer past the ETA or the start. A message without an
    ETA header counts from its delivery.
    """
    eta = d.eta
    if eta is None:
        return d.at
    if d.start_at is None and d.revoked_at is not None and d.settle_at is not None:
        # Revoked when it was received or its ETA fired: it never runs. Celery acks it
        # and lowers the prefetch count again (qos.decrement_eventually) together, on the
        # consumer's next turn (call_soon): until then the broker may send one more.
        return d.settle_at
    if slack:
        passed = bisect.bisect_right(times, eta, lo=d.at)  # first index with time > eta
    else:
        # The simulator (no slack) holds a due ETA too, on a zero-delay timer that fires
        # in the instant it was delivered: the first index past that instant, or past
        # the ETA if later.
        passed = bisect.bisect_right(times, max(eta, times[d.at]), lo=d.at)
    leaves = min(passed, d.start_at if d.start_at is not None else passed)
    if slack:
        # Any message with an ETA header, even one already due, raises the prefetch
        # count when received (strategy.py: qos.increment_eventually) and lowers it
        # only after its timer hands it to the pool (apply_eta_task:
        # decrement_eventually, applied on the consumer's next turn): until then the
        # broker may send one more. A real worker's turn comes within the transport
        # slack (seen on RabbitMQ, window 1: a retry with a 0.1 s countdown started,
        # and the next message came 5 ms later; a polling transport's turn waits for
        # its next poll).
        return (
            bisect.bisect_right(times, times[leaves] + slack, lo=d.at)
            if leaves < len(times)
            else leaves
        )
    return leaves


def check_g6(history: History | Index, config: CheckConfig) -> list[Violation]:
    """G6: the visibility timeout of redis and sqs (§3.2 G6).

    "If a task isn't acknowledged within the visibility timeout the task will be
    redelivered to another worker and executed." On amqp nothing is restored by timeout.
    On redis/sqs a restore comes no earlier than the visibility timeout after the delivery
    and only for an unacked message; in a drained run, a delivery left unacked longer
    than the timeout is restored (the documented duplicate; duplicates are tolerated).
    """
    idx = index_of(history)
    out: list[Violation] = []
    vt = config.effective_visibility_timeout
    restores = [
        (j, e)
        for j, e in enumerate(idx.events)
        if e.kind == "requeued" and e.details.get("reason") == "visibility-timeout"
    ]
    if not config.emulates_acks:
        for _, e in restores:
            out.append(
                Violation(
                    "G6",
                    (
                        f"message {e.message_id} of task {e.task_id} was restored by visibility "
                        f"timeout at {when(e)}; amqp has no visibility timeout"
                    ),
                    (e,),
                )
            )
        for d in idx.deliveries:
            if d.copy:
                out.append(
                    Violation(
                        "G6",
                        (
                            f"{d.label} was delivered to {d.worker} at {when(d.event)} as a copy of "
                            "a message still held elsewhere; amqp never duplicates a delivery"
                        ),
                        (d.event,),
                    )
                )
        return out
    if vt is None:
        return out
    used: set[int] = set()
    wipes = _wiping_restarts(idx)
    for j, e in restores:
        out += _early_restore(idx, j, e, vt, config.transport_tolerance, used, wipes)
    if config.complete:
        for d in idx.deliveries:
            out += _never_restored(idx, d, vt, config.transport_tolerance)
    return out


_RESTARTED = frozenset({"broker-restarted"})


def _wiping_restarts(idx: Index) -> list[tuple[int, Event]]:
    """Broker restarts that lost messages: the broker kept nothing, unacked records too."""
    lost_at = {
        e.time
        for refs in idx.lost.values()
        for _, e in refs
        if "restart" in str(e.details.get("reason", ""))
    }
    return [
        (j, e)
        for j, e in idx.faults
        if e.kind == "broker-restarted" and (e.details.get("lost") or e.time in lost_at)
    ]


def _early_restore(
    idx: Index,
    j: int,
    e: Event,
    vt: float,
    slack: float,
    used: set[int],
    wipes: list[tuple[int, Event]],
) -> list[Violation]:
    """Pair a restore with the oldest delivery it can restore: unacked, not restored yet.

    A restore that names its attempt is paired with that delivery, in constant time.
    """
    tag = e.details.get("attempt")
    d = idx.by_attempt.get(str(tag)) if tag is not None else None
    if d is not None and d.at < j:
        return _restored(d, j, e, vt, slack, used, wipes)
    key = e.message_id or f"task:{e.task_id}"
    before = [
        d
        for d in idx.by_message.get(key, ())
        if d.at < j and (e.worker is None or d.worker == e.worker)
    ]
    if not before:
        return [
            Violation(
                "G6",
                (
                    f"message {key} of task {e.task_id} was restored at {when(e)} but was never "
                    "delivered before"
                ),
                (e,),
            )
        ]
    wipe = max(((k, w) for k, w in wipes if k < j), key=lambda r: r[0], default=None)
    open_ = [
        d
        for d in before
        if d.at not in used
        and not (
            d.settle is not None
            and d.settle.kind in ("acked", "rejected")
            and (d.settle_at or 0) < j
        )
    ]
    if wipe is not None and open_ and all(d.at < wipe[0] for d in open_):
        return _restored_after_wipe(open_[-1], e, wipe[1])
    if not open_:
        d = before[-1]
        if idx.twins(d):
            return []  # copies held side by side: which one was acked cannot be told
        return _restored_settled(d, e, settled=d.settle is not None)
    ripe = [d for d in open_ if e.time - d.event.time >= vt - slack]
    if ripe:
        used.add(ripe[0].at)
        return []
    if any(idx.twins(x) for x in before if e.time - x.event.time >= vt - slack):
        return []  # an old enough copy held side by side may be the one restored
    d = open_[0]
    return _restored_early(d, e, vt)


def _restored(
    d: Delivery,
    j: int,
    e: Event,
    vt: float,
    slack: float,
    used: set[int],
    wipes: list[tuple[int, Event]],
) -> list[Violation]:
    """Judge restore ``e`` of the delivery it names, ``d``."""
    settled = (
        d.settle is not None and d.settle.kind in ("acked", "rejected") and (d.settle_at or 0) < j
    )
    if settled or d.at in used:
        return _restored_settled(d, e, settled)
    used.add(d.at)
    wipe = max(((k, w) for k, w in wipes if k < j), key=lambda r: r[0], default=None)
    if wipe is not None and d.at < wipe[0]:
        return _restored_after_wipe(d, e, wipe[1])
    if e.time - d.event.time >= vt - slack:
        return []
    return _restored_early(d, e, vt)


def _restored_settled(d: Delivery, e: Event, settled: bool) -> list[Violation]:
    how = f"{d.settle.kind} at {when(d.settle)}" if settled and d.settle else "restored already"
    return [
        Violation(
            "G6",
            (
                f"{d.label} was restored at {when(e)} although it was {how}; only unacked "
                "messages are restored"
            ),
            evidence(d.event, d.settle, e),
        )
    ]


def _restored_after_wipe(d: Delivery, e: Event, wipe: Event) -> list[Violation]:
    return [
        Violation(
            "G6",
            (
                f"{d.label} was restored at {when(e)} although the broker restart at "
                f"{when(wipe)} lost its messages, unacked ones included"
            ),
            evidence(d.event, wipe, e),
        )
    ]


def _restored_early(d: Delivery, e: Event, vt: float) -> list[Violation]:
    return [
        Violation(
            "G6",
            (
                f"{d.label} was restored at {when(e)}, {e.time - d.event.time:g} s after its delivery "
                f"to {d.worker}; the visibility timeout is {vt:g} s"
            ),
            evidence(d.event, e),
        )
    ]


def _redelivered_after_timeout(idx: Index, d: Delivery, vt: float) -> bool:
    """Whether ``d``'s message was delivered again, flagged redelivered, once ``d`` had
    been held ``vt`` seconds: a real Redis restores a message inside the broker, and its
    recording shows only the redelivery. That redelivery may come after ``d``'s ack: the
    restored copy waits in the queue until a worker has room for it, and an ack removes
    only the unacked record, not a copy already restored."""
    return any(
        x.redelivered and x.event.time >= d.event.time + vt
        for x in idx.deliveries_after(d.message_id, d.at)
    )


def _never_restored(idx: Index, d: Delivery, vt: float, slack: float) -> list[Violation]:
    if idx.twins(d):
        return []  # copies held side by side: which one waited cannot be told
    key = d.message_id
    ends: list[tuple[int, Event]] = []
    if d.settle is not None and d.settle.kind in ("acked", "rejected") and d.settle_at:
        ends.append((d.settle_at, d.settle))
    # Copies share their message's delivery tag (kombu's Redis): the first ack of any
    # delivery of the message takes it out of the unacked index, for every copy.
    first = idx.first_settle_after(key, d.at)
    if first is not None:
        ends.append(first)
    if d.attempt is not None:
        # The broker's returns of this very delivery (its restore, or a copy of it).
        ends += [(j, e) for j, e in idx.restores_of(d) if j > d.at and e.kind == "requeued"]
    else:
        ends += [
            (j, e)
            for j, e in idx.returns.get(key, ())
            if j > d.at and e.kind == "requeued" and (e.worker is None or e.worker == d.worker)
        ]
    ends += idx.lost_after(key, d.at)[:1]
    restart = idx.next_fault(None, _RESTARTED, d.at)
    if restart < len(idx.events):
        ends.append((restart, idx.events[restart]))
    end = min(ends, key=lambda r: r[0]) if ends else None
    until = end[1].time if end is not None else idx.end_time
    if until - d.event.time <= vt + slack:
        return []
    if end is not None and end[1].kind == "requeued":
        return []
    if _redelivered_after_timeout(idx, d, vt - slack):
        return []
    how = f"until it was {end[1].kind} at {when(end[1])}" if end else "until the run ended"
    return [
        Violation(
            "G6",
            (
                f"{d.label} stayed unacked on {d.worker} from {when(d.event)} {how}, longer than "
                f"the visibility timeout ({vt:g} s), and was never restored"
            ),
            evidence(d.event, end[1] if end else None),
        )
    ]
