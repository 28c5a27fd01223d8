"""Checkers: pure functions that judge a history against Celery's guarantees.

Each ``check_gN(history, config)`` reads one history (from the simulator or recorded on
a real broker) and returns the :class:`Violation` s of guarantee GN of
CELERY_SEMANTICS.md §3.2, each with the events that prove it; an empty list means the
history keeps the guarantee. ``check_c1`` to ``check_c4`` judge the canvas (chain order,
group completeness, one chord body per join, one errback per failure; see
:mod:`simq.checkers.canvas`). :func:`run_all` runs every checker::

    from simq.checkers import config_from, run_all

    with simq.Simulation(app, seed=3) as sim:
        ...
        sim.run()
        problems = run_all(sim.history, config_from(sim))
    assert not problems, "\\n".join(v.describe() for v in problems)

Checkers read only the history and the :class:`CheckConfig` the caller gives: nothing
from the simulator's internals, so they judge a real broker's history the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs
from celery.app.task import Task as _CeleryTask
from celery.worker.request import Request as _CeleryRequest

from simq.checkers.base import ACKS_AT_ONCE_ON_SYNLOOP, POLLING
from simq.checkers.base import TRANSPORTS as TRANSPORTS
from simq.checkers.base import CheckConfig as CheckConfig
from simq.checkers.base import Violation as Violation
from simq.checkers.canvas import check_c1 as check_c1
from simq.checkers.canvas import check_c2 as check_c2
from simq.checkers.canvas import check_c3 as check_c3
from simq.checkers.canvas import check_c4 as check_c4
from simq.checkers.delivery import check_g1 as check_g1
from simq.checkers.delivery import check_g2 as check_g2
from simq.checkers.faults import check_g4 as check_g4
from simq.checkers.faults import check_g7 as check_g7
from simq.checkers.faults import check_g17 as check_g17
from simq.checkers.index import index_of
from simq.checkers.limits import check_g11 as check_g11
from simq.checkers.limits import check_g12 as check_g12
from simq.checkers.outcome import check_g3 as check_g3
from simq.checkers.outcome import check_g8 as check_g8
from simq.checkers.results import check_g14 as check_g14
from simq.checkers.results import check_g15 as check_g15
from simq.checkers.retry import check_g13 as check_g13
from simq.checkers.retry import check_g16 as check_g16
from simq.checkers.retry import check_g18 as check_g18
from simq.checkers.revoke import check_g9 as check_g9
from simq.checkers.revoke import check_g10 as check_g10
from simq.checkers.transport import check_g5 as check_g5
from simq.checkers.transport import check_g6 as check_g6
from simq.history import History

__all__ = [
    "CHECKS",
    "TRANSPORTS",
    "CheckConfig",
    "Violation",
    "check_c1",
    "check_c2",
    "check_c3",
    "check_c4",
    "check_g1",
    "check_g2",
    "check_g3",
    "check_g4",
    "check_g5",
    "check_g6",
    "check_g7",
    "check_g8",
    "check_g9",
    "check_g10",
    "check_g11",
    "check_g12",
    "check_g13",
    "check_g14",
    "check_g15",
    "check_g16",
    "check_g17",
    "check_g18",
    "config_from",
    "run_all",
]

Checker = Callable[[Any, CheckConfig], list[Violation]]

#: Every checker by guarantee, in §3.2's order, then the canvas guarantees C1 to C4
#: (:mod:`simq.checkers.canvas`: chain order, group completeness, one chord body per
#: join, one errback per failure).
CHECKS: dict[str, Checker] = {
    "G1": check_g1,
    "G2": check_g2,
    "G3": check_g3,
    "G4": check_g4,
    "G5": check_g5,
    "G6": check_g6,
    "G7": check_g7,
    "G8": check_g8,
    "G9": check_g9,
    "G10": check_g10,
    "G11": check_g11,
    "G12": check_g12,
    "G13": check_g13,
    "G14": check_g14,
    "G15": check_g15,
    "G16": check_g16,
    "G17": check_g17,
    "G18": check_g18,
    "C1": check_c1,
    "C2": check_c2,
    "C3": check_c3,
    "C4": check_c4,
}


def run_all(history: History, config: CheckConfig | None = None) -> list[Violation]:
    """Every checker's violations for ``history``, in guarantee order.

    Example:
        ``assert not run_all(sim.history, config_from(sim))``
    """
    config = config if config is not None else CheckConfig()
    index = index_of(history)
    out: list[Violation] = []
    for check in CHECKS.values():
        out += check(index, config)
    return out


_TASK_SETTINGS = (
    "acks_late",
    "acks_on_failure",
    "acks_on_timeout",
    "reject_on_worker_lost",
    "retry_on_worker_lost",
    "max_retries",
    "ignore_result",
    "store_errors_even_if_ignored",
    "time_limit",
    "soft_time_limit",
    "rate_limit",
)


#: Celery 5.7 reworked the worker's failure handling (worker/request.py ``on_failure``):
#: separate ``acks_on_failure``/``acks_on_timeout`` task attributes, ``retry_on_worker_lost``
#: and FAILURE(Reject) stored for ``Reject(requeue=False)`` came together. The Task
#: attributes are the part that can be detected: older Celery (5.5) reads only
#: ``acks_on_failure_or_timeout``, ignores the other names if a task sets them, and
#: stores nothing for a Reject.
_SPLIT_ACK_FLAGS = hasattr(_CeleryTask, "acks_on_failure")
_HAS_RETRY_ON_WORKER_LOST = hasattr(_CeleryTask, "retry_on_worker_lost")
#: Celery 5.7's Request.on_failure keeps a SUCCESS stored before the child was lost.
_KEEPS_SUCCESS_ON_LOST_CHILD = hasattr(_CeleryRequest, "_success_was_stored")
#: Celery 5.6+ can cancel a request without storing RETRY (what a cold shutdown does to an
#: unacked acks_late task); 5.5's Request.cancel always stores it.
_CANCEL_WITHOUT_RETRY = "emit_retry" in inspect.signature(_CeleryRequest.cancel).parameters


def _task_setting(task: Any, setting: str) -> Any:
    """The value of ``setting`` that this Celery's worker reads for ``task``."""
    if setting in ("acks_on_failure", "acks_on_timeout"):
        value = getattr(task, setting, None) if _SPLIT_ACK_FLAGS else None
        if value is None:
            # Celery 5.5 has only the combined attribute (5.7 falls back to it too).
            value = getattr(task, "acks_on_failure_or_timeout", None)
        return value
    if setting == "retry_on_worker_lost" and not _HAS_RETRY_ON_WORKER_LOST:
        return None  # Celery's default (off): this Celery has no such attribute
    return getattr(task, setting, None)


def config_from(sim: Any, **overrides: Any) -> CheckConfig:
    """The :class:`CheckConfig` of a simq simulation, read from its app, workers, broker.

    ``complete`` is True when the simulation has nothing left to run. Keyword arguments
    override any field, e.g. ``config_from(sim, slack=0.5)``.
    """
    app = sim.app
    conf = app.conf
    tables: dict[str, dict[str, Any]] = {name: {} for name in _TASK_SETTINGS}
    for name, task in app.tasks.items():
        for setting in _TASK_SETTINGS:
            value = _task_setting(task, setting)
            if setting in (
                "acks_late",
                "acks_on_failure",
                "acks_on_timeout",
                "reject_on_worker_lost",
                "retry_on_worker_lost",
                "ignore_result",
                "store_errors_even_if_ignored",
            ):
                value = bool(value) if value is not None else None
            if value is not None or setting == "max_retries":
                tables[setting][name] = value
    if getattr(conf, "worker_disable_rate_limits", False):
        tables["rate_limit"] = {}
    broker = getattr(sim, "broker", None)
    loop = getattr(sim, "loop", None)
    transport = str(getattr(broker, "transport", None) or getattr(sim, "transport", "amqp"))
    config = CheckConfig(
        transport=transport,
        visibility_timeout=getattr(broker, "visibility_timeout", None),
        prefetch={
            name: int(w.concurrency) * int(w.prefetch_multiplier)
            for name, w in getattr(sim, "workers", {}).items()
        },
        eta_task_limit=getattr(conf, "worker_eta_task_limit", None),
        deduplicate_successful_tasks=bool(
            getattr(conf, "worker_deduplicate_successful_tasks", False)
        ),
        cancel_long_running_tasks_on_connection_loss=bool(
            getattr(conf, "worker_cancel_long_running_tasks_on_connection_loss", False)
        ),
        reject_stores_failure=_SPLIT_ACK_FLAGS,
        lost_child_keeps_success=_KEEPS_SUCCESS_ON_LOST_CHILD,
        cancel_without_retry=_CANCEL_WITHOUT_RETRY,
        acks_wait_for_turn=transport == POLLING and not ACKS_AT_ONCE_ON_SYNLOOP,
        complete=loop is not None and loop.next_time() is None,
        **tables,  # type: ignore[arg-type]
    )
    return attrs.evolve(config, **overrides) if overrides else config
