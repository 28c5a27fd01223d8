"""Guards against runs that never end, and the words for one that was stopped. Internal.

A poison message (``Reject(requeue=True)`` on every delivery, a child that dies on every
attempt with ``reject_on_worker_lost``) is redelivered at once, as RabbitMQ and Redis
redeliver it: in production the loop is paced only by wall time, in a simulation it
never moves the virtual clock. A task that loops around ``time.sleep`` moves the clock
for ever. Three limits, each a keyword of :class:`~simq.simulation.Simulation`, stop
such runs with a :class:`~simq.exceptions.RunawaySimulation` that says what repeated:

* ``max_instant_steps``: steps of the event loop at one virtual instant, within one
  ``run()``/``advance()``/``get()`` call (a test may call ``get()`` on one task after
  another at one instant);
* ``max_steps``: steps in one ``run()``/``advance()``/``get()`` call;
* ``max_run_time``: virtual seconds a ``run()`` without ``until`` or a ``get()``
  without ``timeout`` may cover.

``None`` turns a guard off.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
from typing import Any

import attrs

from simq import validate

__all__ = [
    "DEFAULT_MAX_INSTANT_STEPS",
    "DEFAULT_MAX_RUN_TIME",
    "DEFAULT_MAX_STEPS",
    "Limits",
    "explain",
]

#: Steps at one virtual instant. A step runs one timer, and one timer may finish many
#: tasks (a batch of 10,000 zero-duration tasks takes 4 steps; no test of simq's own
#: suite takes more than 13 at one instant): only a loop gets near this. A poison
#: message takes two steps and 0.5-2 ms of Celery's tracer per redelivery (billiard's
#: ExceptionInfo), so this stops one within seconds.
DEFAULT_MAX_INSTANT_STEPS = 5_000
#: Steps in one ``run()``, ``advance()`` or ``get()`` call (a task looping around
#: ``time.sleep(1)`` reaches it in about 5 s; simq's own tests take at most 210).
DEFAULT_MAX_STEPS = 1_000_000
#: Virtual time a ``run()`` without ``until`` or a ``get()`` without ``timeout`` covers.
DEFAULT_MAX_RUN_TIME = 365 * 86_400.0

#: How many of the latest events are searched for what repeats.
_RECENT = 2_000


@attrs.frozen
class Limits:
    """The guards of one simulation (``None``: no limit)."""

    max_instant_steps: int | None = DEFAULT_MAX_INSTANT_STEPS
    max_steps: int | None = DEFAULT_MAX_STEPS
    max_run_time: float | None = DEFAULT_MAX_RUN_TIME

    @classmethod
    def checked(
        cls,
        call: str,
        max_instant_steps: Any,
        max_steps: Any,
        max_run_time: Any,
    ) -> Limits:
        """The limits given to ``call``, each checked (a positive int, seconds > 0, or None)."""
        counts = {}
        for name, value in (("max_instant_steps", max_instant_steps), ("max_steps", max_steps)):
            counts[name] = (
                None
                if value is None
                else validate.whole(
                    call, name, value, minimum=1, fix="; pass a larger int, or None for no limit"
                )
            )
        run_time = validate.seconds(call, "max_run_time", max_run_time, none=True, zero=False)
        return cls(counts["max_instant_steps"], counts["max_steps"], run_time)


def explain(sim: Any, limit: str, call: str) -> str:
    """Why ``call`` was stopped by guard ``limit``: what repeated, and how to fix it."""
    loop = sim.loop
    value = getattr(sim.limits, limit)
    if limit == "max_instant_steps":
        head = (
            f"{call} ran {loop.instant_steps:,} steps at one virtual instant "
            f"({_iso(loop.now)}) without the clock moving"
        )
    elif limit == "max_steps":
        steps, since = loop.budget_start
        head = (
            f"{call} ran {loop.steps - steps:,} steps, from {_iso(since)} to "
            f"{_iso(loop.now)} ({_span(loop.now - since)} of virtual time)"
        )
    else:
        nxt = loop.next_time()
        head = (
            f"{call} covered {_span(value)} of virtual time and work is still scheduled "
            f"(next at {_iso(nxt if nxt is not None else loop.now)})"
        )
    shown = f"{value:,}" if isinstance(value, int) else f"{value:g}"
    parts = [f"runaway simulation: {head} (limit {limit}={shown})"]
    parts += _what_repeats(sim, limit)
    parts += _running(sim)
    fix = f"Simulation(..., {limit}=N), or {limit}=None for no limit"
    if limit == "max_run_time":
        fix = f"run(until=...) or get(timeout=...) for a bounded wait, or {fix}"
    parts.append(f"if the run is meant to go on this long, pass {fix}")
    return "; ".join(parts)


def _what_repeats(sim: Any, limit: str) -> list[str]:
    history = sim.history
    recent = list(history[-_RECENT:])
    if limit == "max_instant_steps":
        now = sim.loop.now
        recent = [e for e in recent if e.time == now]
    per_task: collections.Counter[str] = collections.Counter(
        e.task_id for e in recent if e.task_id is not None
    )
    if not per_task:
        return _scheduled(sim)
    task_id, _ = per_task.most_common(1)[0]
    mine = [e for e in recent if e.task_id == task_id]
    kinds = collections.Counter(e.kind for e in mine)
    kind, times = kinds.most_common(1)[0]
    if times < 2:
        return _scheduled(sim)
    cycle = list(dict.fromkeys(e.kind for e in mine))
    name = _task_name(history, mine, task_id)
    found = [
        f"what repeats: event {kind!r} of task {name!r} [{task_id}], {times:,} times in the "
        f"last {len(recent):,} events (with {', '.join(repr(k) for k in cycle if k != kind)})"
        if len(cycle) > 1
        else f"what repeats: event {kind!r} of task {name!r} [{task_id}], {times:,} times in "
        f"the last {len(recent):,} events"
    ]
    hint = _hint(kinds, mine, limit)
    if hint:
        found.append(hint)
    return found


def _hint(kinds: collections.Counter[str], events: list[Any], limit: str) -> str:
    requeued = [e for e in events if e.kind == "requeued"]
    if kinds["declined"] and any(e.details.get("requeue") for e in events if e.kind == "declined"):
        return (
            "the task raises Reject(requeue=True) on every delivery and the broker hands the "
            "message straight back, as RabbitMQ and Redis do: a poison message. Requeue only "
            "a few times (self.request.delivery_info['redelivered'] says whether it came "
            "back) and then raise Reject(requeue=False)"
        )
    if kinds["child-lost"] and kinds["rejected"]:
        return (
            "the task's child process dies on every attempt (os._exit, a kill, a crash) and "
            "acks_late with reject_on_worker_lost=True requeues the message each time: a "
            "poison message. Fix what ends the child, or drop reject_on_worker_lost so the "
            "task fails with WorkerLostError"
        )
    if kinds["retried"]:
        countdown = " and a countdown above 0" if limit == "max_instant_steps" else ""
        return (
            f"the task retries without end: give it max_retries (None retries for ever){countdown}"
        )
    if any(e.details.get("reason") == "visibility-timeout" for e in requeued):
        return (
            "the broker hands the message out again each time its visibility timeout runs "
            "out before the task is acked: raise app.conf.broker_transport_options"
            "['visibility_timeout'] above the task's run time"
        )
    return ""


def _running(sim: Any) -> list[str]:
    """Tasks running now, and for how long: a task that never returns shows here."""
    out, longest = [], 0.0
    history, now = sim.history, sim.loop.now
    for worker in sim.workers.values():
        for slot in worker.slots:
            request = slot.request
            if request is None:
                continue
            started = _last(history, "started", request.id)
            since = started.time if started is not None else now
            longest = max(longest, now - since)
            out.append(
                f"task {request.task_name!r} [{request.id}] has been running on "
                f"{slot.fiber.name} since {_iso(since)} ({_span(now - since)})"
            )
    out = out[:3]
    if longest > 0:
        out.append(
            "a task that never returns (a loop around time.sleep?) needs an exit "
            "condition or a time limit (time_limit=)"
        )
    return out


def _scheduled(sim: Any) -> list[str]:
    """What the loop keeps running when no task's events repeat."""
    names = collections.Counter(
        getattr(t.fn, "__qualname__", repr(t.fn)) for t in sim.loop.pending()[:_RECENT]
    )
    if not names:
        return []
    shown = ", ".join(f"{name} x{count}" for name, count in names.most_common(3))
    return [f"no task's events repeat; scheduled next: {shown}"]


def _task_name(history: Any, recent: list[Any], task_id: str) -> str:
    """The task's name, from a recent event that carries it, else from its first ones."""
    for event in itertools.chain(recent, history.where(task_id=task_id)):
        name = event.details.get("task")
        if name:
            return str(name)
    return "?"


def _last(history: Any, kind: str, task_id: str) -> Any:
    """The latest event of ``kind`` for ``task_id``, searching from the end."""
    for i in range(len(history) - 1, -1, -1):
        event = history[i]
        if event.kind == kind and event.task_id == task_id:
            return event
    return None


def _iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.timezone.utc).isoformat()


def _span(seconds: float) -> str:
    text = f"{seconds:,.0f} s" if seconds >= 10 else f"{seconds:g} s"
    if seconds >= 2 * 86_400:
        text += f" ({seconds / 86_400:,.1f} days)"
    return text
