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

Besides §3.2's safety guarantees, two liveness guarantees judge every run
(:mod:`simq_conformance.liveness`): L1, every run finishes within the adapter's deadline,
and L2, every published message ends acked, revoked, declined or expired. A run whose
recording is incomplete (a delivery without a publication, a message without an end in
a complete run) cannot be judged: every applicable guarantee's verdict on it is
:data:`ADAPTER_ERROR`. A verdict is ``exercised`` only when the guarantee's premise
happened in the run (:mod:`simq_conformance.coverage`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from simq.checkers import CHECKS, TRANSPORTS, CheckConfig, Violation
from simq.checkers.base import ACKS_AT_ONCE_ON_SYNLOOP
from simq.checkers.index import Index, index_of
from simq.history import History
from simq_conformance.adapter import Capabilities, RunResult, Workload
from simq_conformance.coverage import PREMISES, Premise
from simq_conformance.liveness import check_l1, check_l2, recorder_errors

__all__ = [
    "ADAPTER_ERROR",
    "FAIL",
    "GUARANTEES",
    "NOT_APPLICABLE",
    "NOT_EXERCISED",
    "PASS",
    "Guarantee",
    "Verdict",
    "applicability",
    "check_run",
    "config_for",
    "probe_task",
]

#: No run broke the guarantee, and at least one exercised it (its premise happened).
PASS = "pass"
#: A run broke it.
FAIL = "fail"
#: The adapter cannot be judged on it (a missing capability or a documented deviation).
NOT_APPLICABLE = "not-applicable"
#: No run broke it, but no run exercised it either: a campaign verdict, never a pass.
NOT_EXERCISED = "not-exercised"
#: The adapter's recording was incomplete: the run could not be judged (the adapter's
#: fault, not the transport's).
ADAPTER_ERROR = "adapter-error"

#: An adapter's transport the checkers do not know reads as amqp (its unacked messages
#: return when the channel closes, never by timeout).
_CHECKER_TRANSPORTS = TRANSPORTS


def probe_task(probe: str) -> str:
    """The registered task name of a probe (``"ret"`` -> ``"probes.ret"``)."""
    return f"probes.{probe}"


#: A run-level checker: L1 and L2 read the run itself (its completeness and notes).
RunCheck = Callable[[Index, CheckConfig, RunResult], list[Violation]]


@attrs.frozen
class Guarantee:
    """One guarantee of §3.2 and what judging it needs.

    Attributes:
        name: ``"G1"`` ... ``"G18"``, ``"L1"``, ``"L2"``.
        title: What it promises, in a few words.
        faults: To be exercised, a run needs one of these faults or of ``probes``.
        probes: See ``faults``: the probes that exercise it.
        observes: Event kinds its histories must contain.
        time_limits: The adapter must enforce time limits.
        transports: The transports it applies to (None: all).
        exercised: Its premise: how often a run made it happen (0: the run did not
            exercise it, and a pass on it is vacuous); see :mod:`simq_conformance.coverage`.
        run_check: For L1 and L2: the run-level checker (else ``simq.checkers.CHECKS``).
    """

    name: str
    title: str
    faults: tuple[str, ...] = ()
    probes: tuple[str, ...] = ()
    observes: tuple[str, ...] = ()
    time_limits: bool = False
    transports: tuple[str, ...] | None = None
    exercised: Premise | None = attrs.field(default=None, eq=False, repr=False)
    run_check: RunCheck | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def premise(self) -> Premise:
        """How often a run made its premise happen (``exercised``, else the standard one)."""
        return self.exercised if self.exercised is not None else PREMISES[self.name]

    @property
    def check(self) -> Callable[[Any, CheckConfig], list[Violation]]:
        """The checker of ``simq.checkers`` that judges it (G1 to G18)."""
        return CHECKS[self.name]

    def judge(self, idx: Index, config: CheckConfig, result: RunResult) -> list[Violation]:
        """Its violations in one run."""
        if self.run_check is not None:
            return self.run_check(idx, config, result)
        return self.check(idx, config)


_DLV = ("delivered", "started", "acked")

#: §3.2's guarantees in order, then the liveness guarantees L1 and L2.
GUARANTEES: dict[str, Guarantee] = {
    g.name: g
    for g in (
        Guarantee("G1", "early ack at execution start", observes=_DLV),
        Guarantee("G2", "late ack after the attempt", observes=(*_DLV, "state")),
        Guarantee(
            "G3",
            "a dead child is not redelivered",
            faults=("kill_child",),
            probes=("die",),
            observes=("child-lost", "state"),
        ),
        Guarantee(
            "G4",
            "worker loss redelivers unacked messages",
            faults=("kill_worker",),
            observes=(*_DLV, "worker-crashed"),
        ),
        Guarantee("G5", "prefetch bound", observes=("delivered", "acked")),
        Guarantee(
            "G6",
            "visibility timeout",
            observes=("delivered",),
            transports=_CHECKER_TRANSPORTS,
        ),
        Guarantee(
            "G7",
            "connection loss redelivers unacked messages",
            faults=("cut_connection", "restart_broker"),
            observes=(*_DLV, "connection-lost"),
        ),
        Guarantee(
            "G8",
            "Reject and Ignore",
            probes=("reject", "ignore"),
            observes=("started", "ignored", "declined", "state"),
        ),
        Guarantee("G9", "expiry revokes", observes=("published", "revoked", "state")),
        Guarantee(
            "G10",
            "revoke and terminate",
            faults=("revoke", "terminate"),
            observes=("revoke", "revoked", "state"),
        ),
        Guarantee(
            "G11",
            "soft time limit",
            probes=("exceed",),
            time_limits=True,
            observes=("time-limit", "state"),
        ),
        Guarantee(
            "G12",
            "hard time limit",
            probes=("exceed",),
            time_limits=True,
            observes=("time-limit", "state"),
        ),
        Guarantee(
            "G13",
            "retry publishes before RETRY and the ack",
            probes=("retry", "fail_n"),
            observes=("published", "retried", "state"),
        ),
        Guarantee(
            "G14",
            "deduplicating successful tasks (opt-in)",
            # Its premise, a redelivery of a task that already succeeded, needs a fault
            # that takes an unacked message back.
            faults=("kill_worker", "cut_connection", "restart_broker"),
            observes=("started", "state"),
        ),
        Guarantee("G15", "SUCCESS is terminal", observes=("state",)),
        Guarantee("G16", "ETA is a lower bound", observes=("published", "started")),
        Guarantee(
            "G17",
            "warm and cold shutdown",
            faults=("warm_shutdown", "cold_shutdown"),
            observes=("shutdown", "started"),
        ),
        Guarantee(
            "G18",
            "monotonic retry counter",
            probes=("retry", "fail_n"),
            observes=("published", "started"),
        ),
        Guarantee("L1", "every run finishes", observes=("published",), run_check=check_l1),
        Guarantee(
            "L2",
            "nothing lost",
            # Its premise: a fault took an unacked message back (or lost it).
            faults=("kill_worker", "cut_connection", "restart_broker", "cold_shutdown"),
            observes=("published", "delivered", "acked"),
            run_check=check_l2,
        ),
    )
}
#: The liveness guarantees, judged on every run.
LIVENESS = ("L1", "L2")


@attrs.frozen
class Verdict:
    """A guarantee's verdict on one run.

    Attributes:
        guarantee: ``"G1"`` ...
        status: :data:`PASS`, :data:`FAIL`, :data:`NOT_APPLICABLE` or
            :data:`ADAPTER_ERROR` (the run's recording is incomplete; ``violations``
            say what is missing).
        reason: Why it does not apply (adapter, capability and reason).
        violations: What broke it (on a fail), or what the recorder missed.
        seed: The workload's seed.
        history: The recorded history (on a fail or an adapter error).
        exercised: Whether the run exercised it (its premise happened).
        score: How often its premise happened in the run (Hypothesis targets it).
    """

    guarantee: str
    status: str
    reason: str = ""
    violations: tuple[Violation, ...] = ()
    seed: int | None = None
    history: History | None = attrs.field(default=None, eq=False, repr=False)
    exercised: bool = False
    score: int = 0

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    @property
    def adapter_error(self) -> bool:
        return self.status == ADAPTER_ERROR


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
        sync_loop=caps.sync_loop,
        # The workers run the Celery installed here: before 5.7 they queue their acks
        # for the synchronous loop's next turn.
        acks_wait_for_turn=caps.sync_loop and not ACKS_AT_ONCE_ON_SYNLOOP,
        complete=result.complete,
        slack=caps.slack,
        transport_slack=caps.transport_slack,
    )


def check_run(
    result: RunResult, guarantees: Mapping[str, Guarantee] | None = None
) -> dict[str, Verdict]:
    """Every guarantee's :class:`Verdict` on one run, in §3.2's order, then L1 and L2.

    When the recording is incomplete (:func:`~simq_conformance.liveness.recorder_errors`)
    every applicable guarantee's verdict is :data:`ADAPTER_ERROR`: a history missing
    events can neither pass nor fail a transport.
    """
    guarantees = GUARANTEES if guarantees is None else guarantees
    caps = result.capabilities
    config = config_for(result)
    idx = index_of(result.history)
    seed = result.workload.seed
    missing = tuple(recorder_errors(idx, result))
    out: dict[str, Verdict] = {}
    for name, g in guarantees.items():
        reason = applicability(g, caps)
        if reason is not None:
            out[name] = Verdict(name, NOT_APPLICABLE, reason, seed=seed)
            continue
        if missing:
            out[name] = Verdict(
                name, ADAPTER_ERROR, violations=missing, seed=seed, history=result.history
            )
            continue
        violations = tuple(g.judge(idx, config, result))
        score = int(g.premise(idx, config))
        if violations:
            out[name] = Verdict(
                name,
                FAIL,
                violations=violations,
                seed=seed,
                history=result.history,
                exercised=True,
                score=score,
            )
        else:
            out[name] = Verdict(name, PASS, seed=seed, exercised=score > 0, score=score)
    return out
