"""Coverage by construction: when a run exercised a guarantee, and runs aimed at one.

A guarantee is **exercised** by a run only when its premise happened in that run: G4
needs a worker that died holding an unacked message, not merely a ``worker-crashed``
event. Each premise counts its occurrences (the score Hypothesis ``target()`` climbs);
a run exercised the guarantee when the count is positive::

    premise("G4")(index, config)   # -> 2: two unacked messages were on killed workers

:func:`aimed_workload` builds a workload aimed at guarantees still short of their
target (the campaign runs such workloads after its generated ones): each guarantee has
a small *part* (settings, calls, faults) that makes its premise all but certain, and
compatible parts are combined so that one run on a real broker serves several.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from simq.checkers import CheckConfig
from simq.checkers.index import Delivery, Index
from simq.world.polling import DEFAULT_POLLING_INTERVAL
from simq_conformance.adapter import Capabilities, Fault, ProbeCall, RunSettings, Workload
from simq_conformance.liveness import RELEASES
from simq_conformance.workloads import SOFT_GAP

__all__ = ["PREMISES", "TARGET", "Premise", "aimed_workload", "premise"]

#: Runs that must exercise each applicable guarantee.
TARGET = 3

Premise = Callable[[Index, CheckConfig], int]

_READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: Seconds an unacked message must be held on a transport without a visibility timeout
#: for G6 (nothing is restored by timeout) to be exercised.
_LONG_HOLD = 1.0


def _held_at(idx: Index, worker: str | None, i: int) -> list[Delivery]:
    """Deliveries ``worker`` held unacked at index ``i`` (None: any worker)."""
    pool = idx.deliveries if worker is None else idx.by_worker.get(worker, [])
    return [d for d in pool if d.unacked_at(i)]


def _started(late: bool) -> Premise:
    return lambda idx, config: sum(
        1 for d in idx.deliveries if d.start is not None and config.late(d.task) == late
    )


def _count(*kinds: str, **details: Any) -> Premise:
    wanted = frozenset(kinds)
    return lambda idx, config: sum(
        1
        for e in idx.events
        if e.kind in wanted and all(e.details.get(k) == v for k, v in details.items())
    )


def _died_holding(*kinds: str) -> Premise:
    """A ``kinds`` fault hit a worker (or the broker) holding an unacked message."""
    wanted = frozenset(kinds)

    def score(idx: Index, config: CheckConfig) -> int:
        n = 0
        for i, e in idx.faults:
            if e.kind in wanted:
                worker = None if e.kind == "broker-restarted" else e.worker
                n += len(_held_at(idx, worker, i))
        return n

    return score


def _child_died(idx: Index, config: CheckConfig) -> int:
    return sum(
        1 for d in idx.deliveries if d.outcome is not None and d.outcome.kind == "child-lost"
    )


def _full_window(idx: Index, config: CheckConfig) -> int:
    """Times a worker came to hold as many unacked messages as its prefetch window."""
    n = 0
    for worker, ds in idx.by_worker.items():
        window = config.window(worker)
        if not window:
            continue
        for d in ds:
            held = sum(1 for x in ds if x.at <= d.at and x.unacked_at(d.at + 1))
            if held >= window:
                n += 1
    return n


def _held_long(idx: Index, config: CheckConfig) -> int:
    """Deliveries left unacked past the visibility timeout (on amqp: past 1 s)."""
    vt = config.effective_visibility_timeout if config.transport in ("redis", "sqs") else None
    limit = vt if vt is not None else _LONG_HOLD
    end = idx.events[-1].time if idx.events else 0.0
    n = 0
    for d in idx.deliveries:
        stop = [x.time for x in (d.settle, d.release) if x is not None]
        if (min(stop) if stop else end) - d.event.time > limit:
            n += 1
    n += sum(1 for d in idx.deliveries if d.copy)
    return n


def _expired(idx: Index, config: CheckConfig) -> int:
    revoked = sum(
        1
        for e in idx.events
        if e.kind == "revoked"
        and (e.details.get("expired") or e.details.get("reason") == "expired")
    )
    dropped = sum(
        1 for e in idx.events if e.kind == "lost" and e.details.get("reason") == "expired"
    )
    return revoked + dropped


def _revoke_in_time(idx: Index, config: CheckConfig) -> int:
    """Revokes sent for a task published and not yet finished (no ready state stored)."""
    n = 0
    for i, e in idx.revokes:
        tid = e.task_id or ""
        published = any(j < i for j, _ in idx.published.get(tid, ()))
        done = any(j < i and s.details.get("state") in _READY for j, s in idx.states.get(tid, ()))
        if published and not done:
            n += 1
    return n


def _limit(which: str) -> Premise:
    return lambda idx, config: sum(
        len(d.marks_of("time-limit", which=which)) for d in idx.deliveries
    )


def _retried_twice(idx: Index, config: CheckConfig) -> int:
    return sum(1 for pubs in idx.published.values() if len(pubs) >= 3)


def _redelivered_after_success(idx: Index, config: CheckConfig) -> int:
    # Celery's tracer checks for a stored SUCCESS when the redelivered copy starts, not
    # when it arrives: on RabbitMQ a worker reconnects within milliseconds and receives
    # the copy while the first attempt still runs, and deduplicates it at its start.
    return sum(
        1
        for d in idx.deliveries
        if d.redelivered
        and idx.succeeded_before(d.task_id, d.start_at if d.start_at is not None else d.at)
        is not None
    )


def _eta_ahead(idx: Index, config: CheckConfig) -> int:
    return sum(
        1
        for d in idx.deliveries
        if d.eta is not None
        and d.start is not None
        and d.publication is not None
        and d.eta > d.publication.time + 0.05
    )


def _shutdown_in_flight(idx: Index, config: CheckConfig) -> int:
    return sum(
        len([d for d in idx.by_worker.get(e.worker or "", []) if d.running_at(i)])
        for i, e in idx.faults
        if e.kind == "shutdown"
    )


def _every_run(idx: Index, config: CheckConfig) -> int:
    return 1


#: Each guarantee's premise: what a run must contain to exercise it.
PREMISES: dict[str, Premise] = {
    "G1": _started(False),
    "G2": _started(True),
    "G3": _child_died,
    "G4": _died_holding("worker-crashed"),
    "G5": _full_window,
    "G6": _held_long,
    "G7": _died_holding("connection-lost", "broker-restarted"),
    "G8": _count("ignored", "declined"),
    "G9": _expired,
    "G10": _revoke_in_time,
    "G11": _limit("soft"),
    "G12": _limit("hard"),
    "G13": _count("retried"),
    "G14": _redelivered_after_success,
    "G15": _count("state"),
    "G16": _eta_ahead,
    "G17": _shutdown_in_flight,
    "G18": _retried_twice,
    "L1": _every_run,
    "L2": _died_holding(*RELEASES),
}

#: What each premise means, for reports ("not exercised: no run had ...").
DESCRIPTIONS: dict[str, str] = {
    "G1": "an early-ack task started",
    "G2": "an acks_late task started",
    "G3": "a pool child died running a task",
    "G4": "a worker died holding an unacked message",
    "G5": "a worker held as many unacked messages as its prefetch window",
    "G6": "a message stayed unacked past the visibility timeout (amqp: past 1 s)",
    "G7": "a connection was lost (or the broker restarted) while holding an unacked message",
    "G8": "a task raised Reject or Ignore",
    "G9": "a message expired before it started",
    "G10": "a revoke was sent for a task not yet finished",
    "G11": "a soft time limit fired",
    "G12": "a hard time limit fired",
    "G13": "a task retried",
    "G14": "a task that had already succeeded was redelivered",
    "G15": "a state was stored",
    "G16": "a task with an ETA in the future started",
    "G17": "a worker shut down with a task in flight",
    "G18": "a task retried twice",
    "L1": "a run",
    "L2": "a fault took an unacked message back from its holder",
}


def premise(name: str) -> Premise:
    """The premise of guarantee ``name``."""
    return PREMISES[name]


# -- aimed workloads -----------------------------------------------------------------

CallSpec = tuple[str, Callable[[str], tuple[Any, ...]], dict[str, Any]]


@attrs.frozen
class Part:
    """What one guarantee's premise needs, in a workload of its own.

    Attributes:
        conf: Celery settings it needs (a part conflicting with another's is left out).
        calls: ``(probe, args(key), options)`` of its calls.
        faults: ``(kind, at, target)``: target ``"victim"`` (the part's own worker),
            an index into ``calls``, or None.
        alone: Runs only alone, on one worker (its premise needs exact placement).
    """

    conf: dict[str, Any] = attrs.field(factory=dict)
    calls: tuple[CallSpec, ...] = ()
    faults: tuple[tuple[str, float, int | str | None], ...] = ()
    alone: bool = False

    @property
    def victims(self) -> int:
        return sum(1 for _, _, t in self.faults if t == "victim")

    @property
    def limited(self) -> bool:
        """Whether a call has a time limit."""
        return any("time_limit" in o or "soft_time_limit" in o for _, _, o in self.calls)


def _none(key: str) -> tuple[Any, ...]:
    return ()


def _args(*values: Any) -> Callable[[str], tuple[Any, ...]]:
    return lambda key: values


def _keyed(*values: Any) -> Callable[[str], tuple[Any, ...]]:
    return lambda key: (key, *values)


#: Seconds a polling transport may take to hand a worker a published message (kombu's
#: virtual transports poll every second by default).
POLL_LAG = DEFAULT_POLLING_INTERVAL
#: Faults aimed at a task that is running when they strike.
_AT_RUNNING = frozenset(
    {"kill_worker", "kill_child", "cut_connection", "terminate", "warm_shutdown", "cold_shutdown"}
)

_LATE = {"task_acks_late": True}
#: A visibility timeout shorter than a long task: only in a run of its own, where no
#: task runs past it (each copy of such a task would be restored again, forever).
_SHORT_VT = {"visibility_timeout": 1.0}
_LONG: CallSpec = ("sleep", _args(1.5), {})


def _part(name: str, caps: Capabilities, rng: random.Random) -> Part | None:
    """The part aimed at ``name`` for an adapter with ``caps``, if it can run one."""
    probes, faults = caps.probes, caps.faults
    redis = caps.transport in ("redis", "sqs")
    if name == "G1":
        return Part({"task_acks_late": False}, (("ret", _args(1), {}), ("sleep", _args(0.2), {})))
    if name == "G2":
        return Part(_LATE, (("ret", _args(2), {}), ("sleep", _args(0.2), {})))
    if name == "G3":
        if "die" in probes:
            return Part({}, (("die", _keyed(1), {}),))
        if "kill_child" in faults:
            return Part({}, (_LONG,), (("kill_child", 0.5, 0),))
        return None
    if name in ("G4", "L2"):
        if "kill_worker" in faults:
            return Part(_LATE, (_LONG, _LONG), (("kill_worker", 0.5, "victim"),))
        return _part("G7", caps, rng) if name == "L2" else None
    if name == "G5":
        return Part(_LATE, (("sleep", _args(0.5), {}),) * 3)
    if name == "G6":
        # A message waiting for its ETA is held unacked: past a 1 s visibility timeout
        # on redis (restored once: the copy waits for the same ETA, then both run and
        # end fast, so nothing loops), past 1 s on amqp (nothing may be restored).
        # (A polling transport hands the message over up to POLL_LAG late: wait longer.)
        countdown = 1.5 + (POLL_LAG if caps.sync_loop else 0.0)
        call: CallSpec = ("ret", _args(6), {"countdown": countdown})
        if redis:
            return Part({"broker_transport_options": _SHORT_VT}, (call,), alone=True)
        return Part({}, (call,))
    if name == "G7":
        kind = next((k for k in ("cut_connection", "restart_broker") if k in faults), None)
        if kind is None:
            return None
        target: int | str | None = "victim" if kind == "cut_connection" else None
        return Part(_LATE, (_LONG, _LONG), ((kind, 0.5, target),))
    if name == "G8":
        calls: list[CallSpec] = []
        if "reject" in probes:
            calls.append(("reject", _keyed(1, rng.random() < 0.5), {}))
        if "ignore" in probes:
            calls.append(("ignore", _none, {}))
        return Part({}, tuple(calls)) if calls else None
    if name == "G9":
        # Expired a second (half a second) before the ETA: a worker that ignores the
        # expiry starts the task that long after it, well past any certified slack.
        return Part(
            {},
            (
                ("ret", _args(1), {"countdown": 2.0, "expires": 1.0}),
                ("ret", _args(2), {"countdown": 1.0, "expires": 0.5}),
            ),
        )
    if name == "G10":
        if "revoke" in faults:
            return Part({}, (("ret", _args(1), {"countdown": 1.0}),), (("revoke", 0.3, 0),))
        if "terminate" in faults:
            return Part({}, (_LONG,), (("terminate", 0.5, 0),))
        return None
    if name in ("G11", "G12"):
        if not caps.time_limits or "exceed" not in probes:
            return None
        if name == "G11":
            # The hard limit SOFT_GAP after the soft one: a worker that ignores the soft
            # limit runs the task 1.5 s past it, to the hard one.
            hard = 0.5 + SOFT_GAP
            return Part(
                {},
                (("exceed", _args(hard + 1.0), {"time_limit": hard, "soft_time_limit": 0.5}),),
            )
        return Part({}, (("exceed", _args(2.5), {"time_limit": 0.5}),))
    if name in ("G13", "G18"):
        times = 1 if name == "G13" else 2
        if "retry" in probes:
            return Part({}, (("retry", _keyed(times, 0.1), {}),))
        if "fail_n" in probes:
            return Part({}, (("fail_n", _keyed(times, 7), {}),))
        return None
    if name == "G14":
        conf: dict[str, Any] = {**_LATE, "worker_deduplicate_successful_tasks": True}
        if redis:
            # The visibility timeout restores a copy while the only worker runs the
            # first: the copy is delivered after the first stored SUCCESS.
            conf["broker_transport_options"] = _SHORT_VT
            return Part(conf, (_LONG,), alone=True)
        kind = next((k for k in ("cut_connection", "restart_broker") if k in faults), None)
        if kind is None:
            return None
        # The connection goes while the task runs: it succeeds, its ack fails, and the
        # message comes back once the worker reconnects.
        target = 0 if kind == "cut_connection" else None
        return Part(conf, (("sleep", _args(1.0), {}),), ((kind, 0.3, target),), alone=True)
    if name == "G15":
        return Part({}, (("ret", _args(3), {}),))
    if name == "G16":
        # 2 s ahead: a worker that ignores the ETA starts the task seconds early.
        return Part({}, (("ret", _args(4), {"countdown": 2.0}),))
    if name == "G17":
        kinds = [k for k in ("warm_shutdown", "cold_shutdown") if k in faults]
        if not kinds:
            return None
        return Part({}, (_LONG, _LONG), ((rng.choice(kinds), 0.5, "victim"),))
    if name == "L1":
        return Part({}, (("ret", _args(5), {}),))
    return None


def _compatible(conf: dict[str, Any], more: dict[str, Any]) -> bool:
    return all(conf.get(k, v) == v for k, v in more.items())


def aimed_workload(
    short: Sequence[str],
    caps: Capabilities,
    rng: random.Random,
    *,
    max_parts: int = 3,
    max_calls: int = 6,
    max_workers: int = 3,
) -> tuple[Workload, tuple[str, ...]] | None:
    """A workload aimed at the guarantees ``short`` (neediest first), and those it aims at.

    Parts are combined in order while their settings agree and the workload stays small:
    each part whose fault targets a worker gets a worker of its own (a "victim"), and one
    more worker survives them all. None when no part can be built for ``caps``.
    """
    chosen: list[tuple[str, Part]] = []
    conf: dict[str, Any] = {}
    calls = 0
    victims = 0
    limited = False
    for name in short:
        part = _part(name, caps, rng)
        if part is None:
            continue
        if part.alone:
            if not chosen:
                chosen, conf = [(name, part)], dict(part.conf)
                break
            continue
        if (
            not _compatible(conf, part.conf)
            or calls + len(part.calls) > max_calls
            or victims + part.victims + 1 > max_workers
            or (part.limited and victims)
            or (part.victims and limited)
        ):
            # Time limits are never aimed at together with a worker fault: a shutdown
            # or kill landing on a time-limited task is a case of its own (Celery acks a
            # cold-shut-down task hitting its hard limit without storing a result).
            continue
        chosen.append((name, part))
        limited = limited or part.limited
        conf.update(part.conf)
        calls += len(part.calls)
        victims += part.victims
        if len(chosen) >= max_parts:
            break
    if not chosen:
        return None
    alone = chosen[0][1].alone
    workers = 1 if alone else victims + 1
    specs: list[ProbeCall] = []
    plan: list[Fault] = []
    victim = 0
    # On Celery's synchronous loop (a polling transport) a worker first sees a message
    # at its next poll, up to POLL_LAG after the publication: a fault aimed at a running
    # task comes that much later (a revoke aimed before an ETA does not), and a long task
    # lasts that much longer, so that it is still running then however soon it started.
    lag = POLL_LAG if caps.sync_loop else 0.0
    for _, part in chosen:
        keys: list[str] = []
        for probe, args, options in part.calls:
            key = f"c{len(specs) + 1}"
            keys.append(key)
            values = args(key)
            if lag and probe == "sleep" and values and values[0] >= 1.0:
                values = (values[0] + lag, *values[1:])
            specs.append(ProbeCall(probe, values, dict(options), key))
        for kind, at, target in part.faults:
            at = at + lag if kind in _AT_RUNNING else at
            if target == "victim":
                plan.append(Fault(kind, at, victim))
                victim += 1
            elif isinstance(target, int) and kind in ("kill_child", "revoke", "terminate"):
                plan.append(Fault(kind, at, keys[target]))
            else:
                plan.append(Fault(kind, at, target))
    # With worker faults, every worker should hold a long task when they strike.
    long_calls = sum(1 for c in specs if c.probe == "sleep" and c.args and c.args[0] >= 1.0)
    if any(
        f.kind in ("kill_worker", "cut_connection", "warm_shutdown", "cold_shutdown") for f in plan
    ):
        for _ in range(max(0, workers - long_calls)):
            key = f"c{len(specs) + 1}"
            specs.append(ProbeCall("sleep", (1.5 + lag,), {}, key))
    settings = RunSettings(workers=workers, concurrency=1, prefetch_multiplier=1, conf=conf)
    workload = Workload(
        settings, tuple(specs), tuple(sorted(plan, key=lambda f: f.at)), rng.randrange(2**16)
    )
    return workload, tuple(name for name, _ in chosen)
