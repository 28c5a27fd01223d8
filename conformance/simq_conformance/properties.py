"""Each guarantee of CELERY_SEMANTICS.md §3.2 as a property over a recorded history.

A :class:`Guarantee` names its checker (``simq.checkers.CHECKS``, the same ones that
judge the simulator), what it needs from an adapter (faults, observed event kinds, time
limits, a transport) and when a run exercises it. :func:`check_run` judges one
:class:`~simq_conformance.RunResult` against every guarantee::

    verdicts = check_run(adapter.run(workload))
    failed = [v for v in verdicts.values() if v.status == FAIL]

A guarantee the adapter cannot be judged on is ``not-applicable``, with the reason taken
from its :class:`~simq_conformance.Capabilities` (a missing capability or a documented
:class:`~simq_conformance.Deviation`), never hand-written per adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from simq.checkers import CHECKS, TRANSPORTS, CheckConfig, Violation
from simq.checkers.index import Index, index_of
from simq.history import History
from simq_conformance.adapter import Capabilities, RunResult, Workload

__all__ = [
    "FAIL",
    "GUARANTEES",
    "NOT_APPLICABLE",
    "PASS",
    "Guarantee",
    "Verdict",
    "applicability",
    "check_run",
    "config_for",
    "probe_task",
]

PASS = "pass"
FAIL = "fail"
NOT_APPLICABLE = "not-applicable"

#: An adapter's transport the checkers do not know reads as amqp (its unacked messages
#: return when the channel closes, never by timeout).
_CHECKER_TRANSPORTS = TRANSPORTS


def probe_task(probe: str) -> str:
    """The registered task name of a probe (``"ret"`` -> ``"probes.ret"``)."""
    return f"probes.{probe}"


Exercised = Callable[[Index, CheckConfig], bool]


def _kinds(*kinds: str) -> Exercised:
    wanted = frozenset(kinds)
    return lambda idx, config: any(e.kind in wanted for e in idx.events)


def _started(late: bool) -> Exercised:
    return lambda idx, config: any(
        d.start is not None and config.late(d.task) == late for d in idx.deliveries
    )


def _expiring(idx: Index, config: CheckConfig) -> bool:
    return any(d.expires is not None for d in idx.deliveries)


def _eta(idx: Index, config: CheckConfig) -> bool:
    return any(d.eta is not None and d.start is not None for d in idx.deliveries)


def _redelivered_success(idx: Index, config: CheckConfig) -> bool:
    return config.deduplicate_successful_tasks and any(d.redelivered for d in idx.deliveries)


def _retried_twice(idx: Index, config: CheckConfig) -> bool:
    return any(len(pubs) > 1 for pubs in idx.published.values())


@attrs.frozen
class Guarantee:
    """One guarantee of §3.2 and what judging it needs.

    Attributes:
        name: ``"G1"`` ... ``"G18"``.
        title: What it promises, in a few words.
        faults: To be exercised, a run needs one of these faults or of ``probes``.
        probes: See ``faults``: the probes that exercise it.
        observes: Event kinds its histories must contain.
        time_limits: The adapter must enforce time limits.
        transports: The transports it applies to (None: all).
        exercised: Whether a run exercised it (a pass on a run that did not is vacuous).
    """

    name: str
    title: str
    faults: tuple[str, ...] = ()
    probes: tuple[str, ...] = ()
    observes: tuple[str, ...] = ()
    time_limits: bool = False
    transports: tuple[str, ...] | None = None
    exercised: Exercised = attrs.field(default=_kinds("started"), eq=False, repr=False)

    @property
    def check(self) -> Callable[[Any, CheckConfig], list[Violation]]:
        """The checker of ``simq.checkers`` that judges it."""
        return CHECKS[self.name]


_DLV = ("delivered", "started", "acked")

#: §3.2's guarantees, in order.
GUARANTEES: dict[str, Guarantee] = {
    g.name: g
    for g in (
        Guarantee("G1", "early ack at execution start", observes=_DLV, exercised=_started(False)),
        Guarantee(
            "G2", "late ack after the attempt", observes=(*_DLV, "state"), exercised=_started(True)
        ),
        Guarantee(
            "G3",
            "a dead child is not redelivered",
            faults=("kill_child",),
            probes=("die",),
            observes=("child-lost", "state"),
            exercised=_kinds("child-lost"),
        ),
        Guarantee(
            "G4",
            "worker loss redelivers unacked messages",
            faults=("kill_worker",),
            observes=(*_DLV, "worker-crashed"),
            exercised=_kinds("worker-crashed"),
        ),
        Guarantee(
            "G5", "prefetch bound", observes=("delivered", "acked"), exercised=_kinds("delivered")
        ),
        Guarantee(
            "G6",
            "visibility timeout",
            observes=("delivered",),
            transports=_CHECKER_TRANSPORTS,
            exercised=_kinds("delivered"),
        ),
        Guarantee(
            "G7",
            "connection loss redelivers unacked messages",
            faults=("cut_connection", "restart_broker"),
            observes=(*_DLV, "connection-lost"),
            exercised=_kinds("connection-lost"),
        ),
        Guarantee(
            "G8",
            "Reject and Ignore",
            probes=("reject", "ignore"),
            observes=("started", "ignored", "declined", "state"),
            exercised=_kinds("ignored", "declined"),
        ),
        Guarantee(
            "G9", "expiry revokes", observes=("published", "revoked", "state"), exercised=_expiring
        ),
        Guarantee(
            "G10",
            "revoke and terminate",
            faults=("revoke", "terminate"),
            observes=("revoke", "revoked", "state"),
            exercised=_kinds("revoke"),
        ),
        Guarantee(
            "G11",
            "soft time limit",
            probes=("exceed",),
            time_limits=True,
            observes=("time-limit", "state"),
            exercised=_kinds("time-limit"),
        ),
        Guarantee(
            "G12",
            "hard time limit",
            probes=("exceed",),
            time_limits=True,
            observes=("time-limit", "state"),
            exercised=_kinds("time-limit"),
        ),
        Guarantee(
            "G13",
            "retry publishes before RETRY and the ack",
            probes=("retry", "fail_n"),
            observes=("published", "retried", "state"),
            exercised=_kinds("retried"),
        ),
        Guarantee(
            "G14",
            "deduplicating successful tasks (opt-in)",
            observes=("started", "state"),
            exercised=_redelivered_success,
        ),
        Guarantee("G15", "SUCCESS is terminal", observes=("state",), exercised=_kinds("state")),
        Guarantee("G16", "ETA is a lower bound", observes=("published", "started"), exercised=_eta),
        Guarantee(
            "G17",
            "warm and cold shutdown",
            faults=("warm_shutdown", "cold_shutdown"),
            observes=("shutdown", "started"),
            exercised=_kinds("shutdown"),
        ),
        Guarantee(
            "G18",
            "monotonic retry counter",
            probes=("retry", "fail_n"),
            observes=("published", "started"),
            exercised=_retried_twice,
        ),
    )
}


@attrs.frozen
class Verdict:
    """A guarantee's verdict on one run.

    Attributes:
        guarantee: ``"G1"`` ...
        status: :data:`PASS`, :data:`FAIL` or :data:`NOT_APPLICABLE`.
        reason: Why it does not apply (adapter, capability and reason).
        violations: What broke it (on a fail).
        seed: The workload's seed.
        history: The recorded history (on a fail).
        exercised: Whether the run exercised it.
    """

    guarantee: str
    status: str
    reason: str = ""
    violations: tuple[Violation, ...] = ()
    seed: int | None = None
    history: History | None = attrs.field(default=None, eq=False, repr=False)
    exercised: bool = False

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def applicability(guarantee: Guarantee, caps: Capabilities) -> str | None:
    """Why ``guarantee`` does not apply to an adapter with ``caps``, or None if it does."""
    deviation = caps.deviation(guarantee.name)
    if deviation is not None:
        return f"{caps.adapter}: documented deviation from {guarantee.name}: {deviation.reason}"
    if guarantee.transports is not None and caps.transport not in guarantee.transports:
        return (
            f"{caps.adapter}: transport {caps.transport!r}: {guarantee.name} applies to "
            f"{', '.join(guarantee.transports)}"
        )
    reasons = [caps.missing(faults=(f,)) for f in guarantee.faults] + [
        caps.missing(probes=(p,)) for p in guarantee.probes
    ]
    if reasons and all(reasons):
        if len(reasons) == 1:
            return reasons[0]
        needs = [f"fault {f!r}" for f in guarantee.faults] + [
            f"probe {p!r}" for p in guarantee.probes
        ]
        return f"{caps.adapter}: capability {' or '.join(needs)} not supported"
    return caps.missing(observes=guarantee.observes, time_limits=guarantee.time_limits)


def _limits(workload: Workload, option: str) -> dict[str, float | None]:
    """Per probe task, the largest per-call ``option`` if every call of it sets one."""
    by_task: dict[str, list[Any]] = {}
    for call in workload.calls:
        by_task.setdefault(probe_task(call.probe), []).append(call.options.get(option))
    table: dict[str, float | None] = {}
    for task, values in by_task.items():
        if values and all(v is not None for v in values):
            table[task] = max(float(v) for v in values)
    conf_value = workload.settings.conf.get(f"task_{option}")
    if conf_value is not None:
        table["*"] = float(conf_value)
    return table


def config_for(result: RunResult) -> CheckConfig:
    """The :class:`CheckConfig` of a run: its transport, settings, prefetch, time limits."""
    caps, workload = result.capabilities, result.workload
    settings = workload.settings
    conf: Mapping[str, Any] = settings.conf
    combined = conf.get("task_acks_on_failure_or_timeout", True)

    def flag(name: str, default: Any) -> dict[str, Any]:
        value = conf.get(name)
        return {"*": bool(default if value is None else value)}

    options = conf.get("broker_transport_options") or {}
    transport = caps.transport if caps.transport in _CHECKER_TRANSPORTS else "amqp"
    return CheckConfig(
        transport=transport,
        visibility_timeout=options.get("visibility_timeout", caps.visibility_timeout),
        prefetch={"*": settings.concurrency * settings.prefetch_multiplier},
        acks_late=flag("task_acks_late", False),
        acks_on_failure=flag("task_acks_on_failure", combined),
        acks_on_timeout=flag("task_acks_on_timeout", combined),
        reject_on_worker_lost=flag("task_reject_on_worker_lost", False),
        retry_on_worker_lost=flag("task_retry_on_worker_lost", False),
        ignore_result=flag("task_ignore_result", False),
        time_limit=_limits(workload, "time_limit"),
        soft_time_limit=_limits(workload, "soft_time_limit"),
        eta_task_limit=conf.get("worker_eta_task_limit"),
        deduplicate_successful_tasks=bool(conf.get("worker_deduplicate_successful_tasks")),
        cancel_long_running_tasks_on_connection_loss=bool(
            conf.get("worker_cancel_long_running_tasks_on_connection_loss")
        ),
        complete=result.complete,
        slack=caps.slack,
    )


def check_run(
    result: RunResult, guarantees: Mapping[str, Guarantee] | None = None
) -> dict[str, Verdict]:
    """Every guarantee's :class:`Verdict` on one run, in §3.2's order."""
    guarantees = GUARANTEES if guarantees is None else guarantees
    caps = result.capabilities
    config = config_for(result)
    idx = index_of(result.history)
    seed = result.workload.seed
    out: dict[str, Verdict] = {}
    for name, g in guarantees.items():
        reason = applicability(g, caps)
        if reason is not None:
            out[name] = Verdict(name, NOT_APPLICABLE, reason, seed=seed)
            continue
        violations = tuple(g.check(idx, config))
        exercised = bool(g.exercised(idx, config))
        if violations:
            out[name] = Verdict(
                name, FAIL, violations=violations, seed=seed, history=result.history, exercised=True
            )
        else:
            out[name] = Verdict(name, PASS, seed=seed, exercised=exercised)
    return out
