"""A Celery baseline: is a failure the transport's, or Celery's own behaviour?

When a transport under test fails a guarantee, its failing workload is run again,
unchanged, on the baseline deployments (real Celery on Redis and on RabbitMQ, by
default): if every baseline that can run it fails the same guarantee, the failure is
*Celery's behaviour*, shown on every transport, and not the transport's fault::

    pytest --conformance=celery --conformance-url=filesystem:// \\
        --conformance-baseline=celery-redis,celery-rabbitmq

A baseline that lacks a fault or probe of the workload, or to which the guarantee does
not apply, cannot judge it (``not-applicable``); a baseline run that could not happen is
an ``error``. Neither counts either way.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from simq_conformance.adapter import Adapter, RunError, RunResult, Workload
from simq_conformance.properties import (
    FAIL,
    GUARANTEES,
    NOT_APPLICABLE,
    applicability,
    check_run,
)

__all__ = ["ERROR", "Baseline", "judge"]

#: The baseline run could not be carried out (``RunError``).
ERROR = "error"


@attrs.frozen
class Baseline:
    """A failing workload's verdicts on the baseline deployments.

    Attributes:
        guarantee: The guarantee the transport under test failed.
        verdicts: Baseline adapter name -> its status on the same workload (``pass``,
            ``fail``, ``not-applicable``, ``adapter-error`` or ``error``).
        reasons: Why a baseline could not judge it, by adapter.
    """

    guarantee: str
    verdicts: Mapping[str, str]
    reasons: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def judged(self) -> list[str]:
        """The baselines that ran the workload and judged the guarantee."""
        return [a for a, s in self.verdicts.items() if s not in (NOT_APPLICABLE, ERROR)]

    @property
    def celery_behaviour(self) -> bool:
        """Every baseline that could judge it failed it too (and at least one could)."""
        judged = self.judged
        return bool(judged) and all(self.verdicts[a] == FAIL for a in judged)

    def describe(self) -> str:
        """One line: the baselines' verdicts, and what they make of the failure."""
        cells = ", ".join(
            f"{a}: {s}" + (f" ({self.reasons[a]})" if a in self.reasons else "")
            for a, s in self.verdicts.items()
        )
        if self.celery_behaviour:
            return (
                f"Celery's behaviour: the same workload fails {self.guarantee} on "
                f"{', '.join(self.judged)} too ({cells})"
            )
        if not self.judged:
            return f"no baseline could judge the workload ({cells})"
        return f"the transport's: the baselines do not fail {self.guarantee} on it ({cells})"


def _cannot_run(adapter: Adapter, workload: Workload, guarantee: str) -> str | None:
    caps = adapter.capabilities
    return caps.missing(
        faults=tuple(f.kind for f in workload.faults),
        probes=tuple(c.probe for c in workload.calls),
    ) or applicability(GUARANTEES[guarantee], caps)


def judge(
    failures: Mapping[str, Workload], baselines: Mapping[str, Adapter]
) -> dict[str, Baseline]:
    """Run each failing workload on each baseline (once, whatever it failed) and judge
    there the guarantee it failed: ``{guarantee: workload}`` -> ``{guarantee: Baseline}``."""
    results: dict[tuple[str, str], RunResult | str] = {}
    out: dict[str, Baseline] = {}
    for guarantee, workload in failures.items():
        verdicts: dict[str, str] = {}
        reasons: dict[str, str] = {}
        for name, adapter in baselines.items():
            why = _cannot_run(adapter, workload, guarantee)
            if why is not None:
                verdicts[name], reasons[name] = NOT_APPLICABLE, why
                continue
            key = (repr(workload), name)
            if key not in results:
                try:
                    results[key] = adapter.run(workload)
                except RunError as exc:
                    results[key] = str(exc)
            result = results[key]
            if isinstance(result, str):
                verdicts[name], reasons[name] = ERROR, result
                continue
            g = GUARANTEES[guarantee]
            verdicts[name] = check_run(result, {guarantee: g})[guarantee].status
        out[guarantee] = Baseline(guarantee, verdicts, reasons)
    return out
