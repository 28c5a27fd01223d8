"""The differential check: one workload on a real adapter and on the simulator must agree.

Both runs are judged on every guarantee that applies to both; a guarantee one keeps and
the other breaks is a disagreement. Workloads without faults and without timing races
(no expiry within seconds, no time limits) must also end the same: each probe call in
the same final state after the same number of runs.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import attrs

from simq.history import History
from simq_conformance.adapter import RunResult, Workload
from simq_conformance.properties import NOT_APPLICABLE, Verdict

__all__ = ["Disagreement", "compare", "outcomes"]

#: Expiry closer than this (seconds) to the start races with scheduling on a real broker.
_RACE_FREE_EXPIRY = 5.0


@attrs.frozen
class Disagreement:
    """A difference between a real adapter's run and the reference run of one workload.

    Attributes:
        topic: The guarantee (``"G4"``) or ``"outcome"``.
        message: What differs.
        workload: The workload both ran.
        real_history: The real adapter's history.
        reference_history: The simulator's history.
    """

    topic: str
    message: str
    workload: Workload
    real_history: History = attrs.field(eq=False, repr=False)
    reference_history: History = attrs.field(eq=False, repr=False)

    @property
    def size(self) -> int:
        return len(self.real_history) + len(self.reference_history)


def _race_free(workload: Workload) -> bool:
    if workload.faults:
        return False
    for call in workload.calls:
        expires = call.options.get("expires")
        if expires is not None and float(expires) < _RACE_FREE_EXPIRY:
            return False
        if "time_limit" in call.options or "soft_time_limit" in call.options:
            return False
    return True


def outcomes(result: RunResult) -> dict[str, tuple[str, int]]:
    """Per probe call key: its final stored state (PENDING if none) and how often it ran.

    Keys come from ``result.task_ids``; without them, the calls' order of publication.
    """
    history = result.history
    ids = dict(result.task_ids)
    if not ids:
        roots: list[str] = []
        for e in history.where(kind="published"):
            if e.task_id and e.task_id not in roots and not e.details.get("retries"):
                roots.append(e.task_id)
        ids = {call.key: tid for call, tid in zip(result.workload.calls, roots, strict=False)}
    final: dict[str, str] = {}
    runs: Counter[str] = Counter()
    for e in history:
        if e.kind == "state" and e.task_id:
            final[e.task_id] = str(e.details.get("state"))
        elif e.kind == "started" and e.task_id:
            runs[e.task_id] += 1
    return {key: (final.get(tid, "PENDING"), runs[tid]) for key, tid in ids.items()}


def compare(
    real: RunResult,
    real_verdicts: dict[str, Verdict],
    reference: RunResult,
    reference_verdicts: dict[str, Verdict],
) -> list[Disagreement]:
    """How ``real`` and ``reference`` (same workload) disagree; empty when they agree."""
    out: list[Disagreement] = []
    names = (real.capabilities.adapter, reference.capabilities.adapter)

    def differ(topic: str, message: str) -> None:
        out.append(Disagreement(topic, message, real.workload, real.history, reference.history))

    for name, mine in real_verdicts.items():
        theirs = reference_verdicts.get(name)
        if theirs is None or NOT_APPLICABLE in (mine.status, theirs.status):
            continue
        if mine.status != theirs.status:
            broken = mine if mine.failed else theirs
            who = names[0] if mine.failed else names[1]
            differ(
                name,
                f"{name}: {names[0]} {mine.status}, {names[1]} {theirs.status}; "
                f"{who}: " + "; ".join(str(v) for v in broken.violations[:3]),
            )
    if _race_free(real.workload) and real.complete and reference.complete:
        mine_out, theirs_out = outcomes(real), outcomes(reference)
        count_runs = "started" in real.capabilities.observes
        diffs: dict[str, list[str]] = defaultdict(list)
        for key, (state, runs) in mine_out.items():
            ref_state, ref_runs = theirs_out.get(key, ("?", 0))
            if state != ref_state or (count_runs and runs != ref_runs):
                probe = next((c for c in real.workload.calls if c.key == key), None)
                diffs["outcome"].append(
                    f"{key} ({probe.probe if probe else '?'}): {names[0]} {state} after "
                    f"{runs} run(s), {names[1]} {ref_state} after {ref_runs}"
                )
        for lines in diffs.values():
            differ("outcome", "outcome: " + "; ".join(lines))
    return out
