"""Broker and worker invariants that hold for any fault-free workload, read from the history.

Each example draws a workload (task kinds, call options) and a simulation shape (workers,
concurrency, prefetch multiplier, priority queues, seed), runs it until idle and checks
the history alone: no message is lost or duplicated (§3.2 G1, G2), the prefetch window
is never exceeded (§3.2 G5), and every task id ends in exactly one ready state unless
Celery leaves it PENDING (§3.1, §3.2 G8).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter, defaultdict
from typing import Any

import attrs
import celery
from celery import states
from celery.exceptions import Ignore, Reject
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simq
from simq.history import Event, History

QUEUES = ("celery", "q2")
KINDS = ("ok", "fail", "retry", "sleep", "ignore", "reject")


@attrs.frozen
class Call:
    """One task call of a workload."""

    kind: str
    late: bool
    arg: int
    countdown: int | None
    expires: int | None
    priority: int | None
    queue: str


@attrs.frozen
class Shape:
    """The simulated infrastructure of one example."""

    seed: int
    worker_queues: tuple[tuple[str, ...], ...]
    concurrency: int
    multiplier: int
    max_priority: int | None


def task_name(kind: str, late: bool) -> str:
    return f"{kind}_late" if late else kind


def make_app(max_priority: int | None) -> celery.Celery:
    """An app with every task kind, in an early-ack and an acks_late variant."""
    app = celery.Celery("props")
    app.conf.task_queue_max_priority = max_priority
    rejections: Counter[str] = Counter()

    for late in (False, True):
        # shared=False: each example's app has its own tasks (a shared task would be
        # added to every later app, and the first registered under a name wins).
        opts: dict[str, Any] = {"acks_late": late, "shared": False}

        @app.task(name=task_name("ok", late), **opts)
        def ok(n: int) -> int:
            return n

        @app.task(name=task_name("fail", late), acks_on_failure_or_timeout=not late, **opts)
        def fail(n: int) -> int:
            raise ValueError(n)

        @app.task(name=task_name("retry", late), bind=True, max_retries=2, **opts)
        def retry(self: celery.Task, n: int) -> int:
            # Fails the first n attempts; n == 3 exhausts max_retries=2.
            if self.request.retries < n:
                raise self.retry(countdown=self.request.retries + 1)
            return n

        @app.task(name=task_name("sleep", late), **opts)
        def sleep(n: int) -> int:
            time.sleep(n)
            return n

        @app.task(name=task_name("ignore", late), **opts)
        def ignore(n: int) -> int:
            raise Ignore()

        @app.task(name=task_name("reject", late), bind=True, **opts)
        def reject(self: celery.Task, n: int) -> int:
            # Rejects (with requeue) the first n + 1 deliveries of its id, then returns.
            rejections[self.request.id] += 1
            if rejections[self.request.id] <= n + 1:
                raise Reject("not yet", requeue=True)
            return n

    return app


calls = st.builds(
    Call,
    kind=st.sampled_from(KINDS),
    late=st.booleans(),
    arg=st.integers(0, 3),
    countdown=st.none() | st.integers(1, 5),
    expires=st.none() | st.integers(1, 12),
    priority=st.none() | st.integers(0, 9),
    queue=st.sampled_from(QUEUES),
)


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    n = draw(st.integers(1, 3))
    subsets = st.sampled_from([("celery",), ("q2",), QUEUES])
    worker_queues = [draw(subsets) for _ in range(n)]
    covered = {q for qs in worker_queues for q in qs}
    if covered != set(QUEUES):
        # Every queue has a consumer, so running to idle drains the workload.
        worker_queues[0] = QUEUES
    return Shape(
        seed=draw(st.integers(0, 2**32 - 1)),
        worker_queues=tuple(worker_queues),
        concurrency=draw(st.integers(1, 3)),
        multiplier=draw(st.integers(0, 4)),
        max_priority=draw(st.sampled_from([None, 10])),
    )


def run(shape: Shape, workload: list[Call]) -> History:
    """Run ``workload`` on ``shape`` until idle; the history of the run."""
    app = make_app(shape.max_priority)
    with simq.Simulation(app, seed=shape.seed, workers=0) as sim:
        for queues in shape.worker_queues:
            sim.add_worker(
                concurrency=shape.concurrency,
                queues=list(queues),
                prefetch_multiplier=shape.multiplier,
            )
        for call in workload:
            app.tasks[task_name(call.kind, call.late)].apply_async(
                (call.arg,),
                countdown=call.countdown,
                expires=call.expires,
                priority=call.priority,
                queue=call.queue,
            )
            sim.advance(0.5)
        sim.run()
        return sim.history


def _eta(event: Event) -> float | None:
    eta = event["eta"]
    return None if eta is None else dt.datetime.fromisoformat(eta).timestamp()


def check_messages(history: History) -> None:
    """Every message is delivered until one final disposition (or expires in the queue);
    none is held twice."""
    where: dict[str, str] = {}  # message_id -> "ready" | "held" | "done"
    finals: Counter[str] = Counter()
    for event in history:
        mid = event.message_id
        if event.kind == "lost" and event.details.get("reason") == "expired":
            # RabbitMQ drops a message whose TTL (``expires``) ran out in the queue (G9).
            assert where.get(mid) == "ready", f"expired while {where.get(mid)}: {event}"
            where[mid] = "done"
            finals[mid] += 1
            continue
        assert event.kind != "lost", f"message lost: {event}"
        if mid is None:
            continue
        if event.kind == "published":
            assert mid not in where, f"message published twice: {event}"
            where[mid] = "ready"
        elif event.kind == "delivered":
            assert where.get(mid) == "ready", f"delivered while {where.get(mid)}: {event}"
            where[mid] = "held"
        elif event.kind in ("acked", "rejected", "requeued"):
            assert where.get(mid) == "held", f"{event.kind} while {where.get(mid)}: {event}"
            requeue = event.kind == "requeued" or (event.kind == "rejected" and event["requeue"])
            where[mid] = "ready" if requeue else "done"
            finals[mid] += not requeue
        else:
            assert mid in where, f"event for a message never published: {event}"
    assert {m for m, w in where.items() if w != "done"} == set()
    assert {m for m, n in finals.items() if n != 1} == set()


def check_prefetch(history: History) -> None:
    """No worker holds more unacked messages than its prefetch window, ETA ones aside.

    A message whose ETA is in the future when delivered raises the window while it waits
    (§3.2 G5, ``qos.increment_eventually``) and lowers it again when the ETA fires, but a
    broker cannot take back what it already delivered: two ETAs firing together leave a
    worker above its window until it acks, as in Celery. So the bound is checked on the
    messages that were due when delivered, and every delivery must find room counting
    the ETA messages already due by then.
    """
    etas = {e.message_id: _eta(e) for e in history.where(kind="published")}
    windows: dict[str, int] = {}
    held: dict[str, dict[str, bool]] = defaultdict(dict)  # worker -> {message: due at delivery}
    for event in history:
        worker, mid = event.worker or "", event.message_id or ""
        if event.kind == "worker-online":
            windows[worker] = event["concurrency"] * event["prefetch_multiplier"]
        elif event.kind == "delivered":
            eta = etas[mid]
            if windows[worker]:
                due = [m for m in held[worker] if (etas[m] or 0.0) < event.time]
                assert len(due) < windows[worker], (
                    f"{worker} was sent {mid} while holding {len(due)} due messages"
                    f" (window {windows[worker]}): {event}"
                )
            held[worker][mid] = eta is None or eta <= event.time
        elif event.kind in ("acked", "rejected", "requeued"):
            held[worker].pop(mid, None)
        for name, window in windows.items():
            count = sum(held[name].values())
            assert window == 0 or count <= window, (
                f"{name} holds {count} unacked non-ETA messages > window {window} at {event}"
            )


def check_outcomes(history: History) -> None:
    """Each task id has one ready state, or none when Celery leaves it PENDING (or the
    broker dropped it as expired)."""
    names = {e.task_id: e["task"] for e in history.where(kind="published")}
    for task_id, name in names.items():
        events = history.where(task_id=task_id)
        ready = events.where(kind="state", state=list(states.READY_STATES))
        if events.where(kind="lost", reason="expired") and not ready:
            continue  # RabbitMQ dropped it (TTL, G9): it stays PENDING or RETRY
        pending = len(events.where(kind="ignored")) or (
            not name.endswith("_late") and len(events.where(kind="declined", requeue=True))
        )
        assert len(ready) == (0 if pending else 1), (name, events.kinds())
        if pending:
            assert len(events.where(kind="state")) == 0, (name, events.kinds())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), workload=st.lists(calls, min_size=1, max_size=10))
def test_broker_never_loses_or_duplicates_a_message(shape: Shape, workload: list[Call]) -> None:
    """Every published message is delivered until exactly one final ack or reject (§3.2 G1, G2)."""
    check_messages(run(shape, workload))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), workload=st.lists(calls, min_size=1, max_size=10))
def test_prefetch_window_is_never_exceeded(shape: Shape, workload: list[Call]) -> None:
    """A worker never holds more due, unacked messages than concurrency x multiplier (§3.2 G5)."""
    check_prefetch(run(shape, workload))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), workload=st.lists(calls, min_size=1, max_size=10))
def test_every_task_ends_ready_or_pending(shape: Shape, workload: list[Call]) -> None:
    """Each task id ends with one ready state, or PENDING after Ignore or Reject (§3.1, §3.2 G8)."""
    check_outcomes(run(shape, workload))
