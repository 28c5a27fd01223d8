"""Checking a history takes work linear in its length, however often a message comes back.

Work is counted, not timed: the lines of ``simq/checkers`` that run while every checker
judges a history, through ``sys.settrace``. Doubling the redeliveries of one message (or
the retries of one task) may at most double that count, give or take the fixed part; a
checker that went over a message's deliveries again for each delivery would quadruple
it (issue 8, item 9c).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from checker_support import T0

from simq.checkers import CheckConfig, run_all
from simq.history import Event, History

LATE = CheckConfig(acks_late={"*": True}, complete=True)
LATE_REDIS = CheckConfig(transport="redis", acks_late={"*": True}, complete=True)
EARLY = CheckConfig(complete=True)


def poison(n: int, attempts: bool = True) -> History:
    """An acks_late message rejected with requeue ``n`` times, then run to success."""
    events: list[Event] = []

    def add(kind: str, message: str | None = "m1", **details: Any) -> None:
        task = "t1" if kind != "worker-online" else None
        events.append(Event(kind, T0, task, message, "w1", details))

    add("worker-online", None, concurrency=1, queues=["celery"], prefetch_multiplier=4)
    events.append(Event("published", T0, "t1", "m1", None, {"task": "shop.p", "retries": 0}))
    for k in range(1, n + 2):
        tag = {"attempt": f"m1.{k}"} if attempts else {}
        add("delivered", queue="celery", redelivered=k > 1, **tag)
        add("started", task="shop.p", retries=0, **tag)
        if k <= n:
            add("declined", requeue=True, **tag)
            add("rejected", requeue=True, **tag)
        else:
            add("state", None, state="SUCCESS", result=1, **tag)
            add("succeeded", **tag)
            add("acked", **tag)
    return History(events)


def retried(n: int) -> History:
    """A task that retries ``n`` times, a new message each time, then succeeds."""
    events: list[Event] = []

    def add(kind: str, m: int | None, t: float, **details: Any) -> None:
        worker = None if kind == "published" else "w1"
        events.append(Event(kind, T0 + t, "t1", f"m{m}" if m else None, worker, details))

    events.append(
        Event("worker-online", T0, None, None, "w1", {"concurrency": 1, "prefetch_multiplier": 4})
    )
    add("published", 1, 0, task="shop.r", retries=0)
    for k in range(1, n + 2):
        tag = {"attempt": f"m{k}.1"}
        add("delivered", k, k, queue="celery", redelivered=False, **tag)
        add("started", k, k, task="shop.r", retries=k - 1, **tag)
        add("acked", k, k, **tag)
        if k <= n:
            add("published", k + 1, k, task="shop.r", retries=k)
            add("state", None, k, state="RETRY", result=None, **tag)
            add("retried", k, k, exception=None, when=1, **tag)
        else:
            add("state", None, k, state="SUCCESS", result=1, **tag)
            add("succeeded", k, k, **tag)
    return History(events)


def lines_run(history: History, config: CheckConfig) -> int:
    """How many lines of simq/checkers run while every checker judges ``history``."""
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        nonlocal count
        if "simq/checkers" not in frame.f_code.co_filename.replace("\\", "/"):
            return None
        if event == "line":
            count += 1
        return trace

    before = sys.gettrace()
    sys.settrace(trace)
    try:
        violations = run_all(history, config)
    finally:
        sys.settrace(before)
    assert violations == [], "\n".join(v.describe() for v in violations)
    return count


@pytest.mark.parametrize(
    ("make", "config"),
    [
        pytest.param(lambda n: poison(n), LATE, id="requeued-with-attempt-ids"),
        pytest.param(lambda n: poison(n, attempts=False), LATE, id="requeued-without-ids"),
        pytest.param(lambda n: poison(n), LATE_REDIS, id="requeued-on-redis"),
        pytest.param(retried, EARLY, id="retried"),
    ],
)
def test_checking_work_grows_linearly(make: Callable[[int], History], config: CheckConfig):
    """Twice the redeliveries (or retries) take at most about twice the checking work."""
    small, large = lines_run(make(100), config), lines_run(make(200), config)
    assert large <= 2.2 * small, f"{small} lines for 100, {large} for 200"
