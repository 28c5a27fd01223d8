"""The conformance report: JSON for machines, a Markdown table guarantee x adapter for people.

``pytest --conformance=... --conformance-report=PATH`` writes ``PATH`` with the suffix
``.json`` and ``.md``. A cell says ``pass`` (with how many runs exercised the guarantee),
``FAIL`` (with the workload's seed; the shortest failing history follows the table), or
``n/a`` with the reason generated from the adapter's capabilities.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simq_conformance.campaign import Campaign, Failure, Summary
from simq_conformance.differential import Disagreement
from simq_conformance.properties import FAIL, GUARANTEES, NOT_APPLICABLE

__all__ = ["describe_failure", "report_paths", "to_json", "to_markdown", "write_report"]


def report_paths(path: str | Path) -> tuple[Path, Path]:
    """The JSON and Markdown paths for ``--conformance-report=PATH``."""
    base = Path(path)
    if base.suffix in (".json", ".md"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".md")


def _caps(c: Campaign) -> dict[str, Any]:
    caps = c.capabilities
    return {
        "adapter": caps.adapter,
        "transport": caps.transport,
        "faults": sorted(caps.faults),
        "time_limits": caps.time_limits,
        "observes": sorted(caps.observes),
        "visibility_timeout": caps.visibility_timeout,
        "slack": caps.slack,
        "simulated": caps.simulated,
        "deviations": [{"guarantee": d.guarantee, "reason": d.reason} for d in caps.deviations],
    }


def _failure(f: Failure) -> dict[str, Any]:
    v = f.verdict
    return {
        "seed": f.workload.seed,
        "workload": repr(f.workload),
        "complete": f.complete,
        "violations": [
            {"message": x.message, "events": [e.to_dict() for e in x.events]} for x in v.violations
        ],
        "history": [e.to_dict() for e in v.history or ()],
    }


def _summary(s: Summary) -> dict[str, Any]:
    out: dict[str, Any] = {"status": s.status, "runs": s.runs, "exercised": s.exercised}
    if s.reason:
        out["reason"] = s.reason
    if s.failure is not None:
        out["failure"] = _failure(s.failure)
    return out


def _disagreement(d: Disagreement) -> dict[str, Any]:
    return {
        "topic": d.topic,
        "message": d.message,
        "seed": d.workload.seed,
        "workload": repr(d.workload),
        "history": [e.to_dict() for e in d.real_history],
        "reference_history": [e.to_dict() for e in d.reference_history],
    }


def to_json(campaigns: Sequence[Campaign]) -> dict[str, Any]:
    """The report as a JSON-compatible dict."""
    adapters: dict[str, Any] = {}
    for c in campaigns:
        entry: dict[str, Any] = {
            "capabilities": _caps(c),
            "hypothesis_seed": c.hypothesis_seed,
            "examples": c.examples,
            "runs": c.runs,
            "seconds": round(c.elapsed, 2),
            "guarantees": {g: _summary(s) for g, s in c.summaries.items()},
        }
        if c.error:
            entry["error"] = c.error
        if c.reference:
            entry["differential"] = {
                "reference": c.reference,
                "compared": c.compared,
                "disagreements": [_disagreement(d) for d in c.disagreements],
            }
        adapters[c.adapter] = entry
    return {"guarantees": {g.name: g.title for g in GUARANTEES.values()}, "adapters": adapters}


def _cell(c: Campaign, s: Summary) -> str:
    if c.error:
        return "error"
    if s.status == NOT_APPLICABLE:
        reason = s.reason.split(": ", 1)[-1] if s.reason.startswith(c.adapter + ":") else s.reason
        return f"n/a: {reason}"
    if s.status == FAIL and s.failure is not None:
        return (
            f"**FAIL** (seed {s.failure.workload.seed}, "
            f"[{s.failure.size} events](#{_anchor(c.adapter, s.guarantee)}))"
        )
    return f"pass ({s.exercised}/{s.runs})"


def _anchor(adapter: str, guarantee: str) -> str:
    return f"{guarantee}-{adapter}".lower().replace("_", "-")


def to_markdown(campaigns: Sequence[Campaign]) -> str:
    """The report as Markdown: the table, then each failure's shortest history."""
    lines = [
        "| Guarantee | " + " | ".join(c.adapter for c in campaigns) + " |",
        "| --- |" + " --- |" * len(campaigns),
    ]
    for name, g in GUARANTEES.items():
        cells = [_cell(c, c.summaries[name]) for c in campaigns]
        lines.append(
            f"| {name} {g.title} | " + " | ".join(c.replace("|", "/") for c in cells) + " |"
        )
    lines += [
        "",
        "pass (k/n): no violation in n runs, k of which exercised the guarantee.",
        "",
        "| Adapter | transport | examples | runs | seconds | seed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in campaigns:
        lines.append(
            f"| {c.adapter} | {c.capabilities.transport} | {c.examples} | {c.runs} "
            f"| {c.elapsed:.1f} | {c.hypothesis_seed} |"
        )
    diffs = [c for c in campaigns if c.reference]
    if diffs:
        lines += [
            "",
            "## Differential check",
            "",
            "| Adapter | reference | workloads compared | disagreements |",
            "| --- | --- | --- | --- |",
        ]
        for c in diffs:
            found = "; ".join(d.message for d in c.disagreements).replace("|", "/") or "none"
            lines.append(f"| {c.adapter} | {c.reference} | {c.compared} | {found} |")
    failures = [(c, s) for c in campaigns for s in c.summaries.values() if s.failure]
    if failures:
        lines += ["", "## Failures"]
    for c, s in failures:
        assert s.failure is not None
        lines += [
            "",
            f'<a id="{_anchor(c.adapter, s.guarantee)}"></a>',
            f"### {s.guarantee} on {c.adapter}",
            "",
            "```text",
            describe_failure(c, s.guarantee),
            "```",
        ]
    errors = [c for c in campaigns if c.error]
    for c in errors:
        lines += ["", f"## {c.adapter}: error", "", "```text", c.error or "", "```"]
    return "\n".join(lines) + "\n"


def describe_failure(c: Campaign, guarantee: str) -> str:
    """A failure's seed, workload, violations and shortest history, for people."""
    s = c.summaries[guarantee]
    f = s.failure
    if f is None:
        return f"{guarantee} did not fail on {c.adapter}"
    g = GUARANTEES[guarantee]
    history = f.verdict.history
    out = [
        f"{guarantee} ({g.title}) fails on {c.adapter}",
        f"workload seed: {f.workload.seed}; hypothesis seed: {c.hypothesis_seed}",
        f"reproduce: pytest --conformance={c.adapter} --conformance-seed={c.hypothesis_seed} "
        f"--conformance-examples={c.examples} -k {guarantee}",
        f"workload: {f.workload!r}",
        "violations:",
    ]
    out += ["  " + v.describe().replace("\n", "\n  ") for v in f.verdict.violations]
    out.append(f"shortest failing history ({f.size} events, complete={f.complete}):")
    out += ["  " + line for line in (history.to_jsonl() if history else "").splitlines()]
    return "\n".join(out)


def write_report(path: str | Path, campaigns: Sequence[Campaign]) -> tuple[Path, Path]:
    """Write the JSON and Markdown reports; return their paths."""
    json_path, md_path = report_paths(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps(to_json(campaigns), indent=1, default=repr) + "\n", encoding="utf-8"
    )
    md_path.write_text(to_markdown(campaigns), encoding="utf-8")
    return json_path, md_path
