"""The conformance report: JSON for machines, a Markdown table guarantee x adapter for people.

``pytest --conformance=... --conformance-report=PATH`` writes ``PATH`` with the suffix
``.json`` and ``.md``. A cell says ``pass (k/n)`` (k of n runs exercised the guarantee:
its premise happened), ``not exercised (0/n)`` (no run broke it and none exercised it:
no verdict), ``FAIL`` (with the workload's seed; the shortest failing history follows
the table), ``ADAPTER ERROR`` (runs whose recording was incomplete: what was missing
follows the table), or ``n/a`` with the reason generated from the adapter's
capabilities. Runs that did not finish in time are counted and listed by seed.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simq_conformance.adapter import Workload
from simq_conformance.campaign import Campaign, Failure, Summary
from simq_conformance.differential import Disagreement
from simq_conformance.properties import (
    ADAPTER_ERROR,
    FAIL,
    GUARANTEES,
    NOT_APPLICABLE,
    NOT_EXERCISED,
)

__all__ = [
    "command",
    "describe_adapter_errors",
    "describe_failure",
    "report_paths",
    "to_json",
    "to_markdown",
    "write_report",
]


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
        "slack_source": caps.slack_source,
        "transport_slack": caps.transport_slack,
        "simulated": caps.simulated,
        "deviations": [{"guarantee": d.guarantee, "reason": d.reason} for d in caps.deviations],
    }


def _slack(caps: Any) -> str:
    """The table cell for an adapter's slack: seconds, and whether measured."""
    how = "measured" if caps.slack_measured else "declared"
    return f"{caps.slack:g} s ({how})"


def _failure(f: Failure) -> dict[str, Any]:
    v = f.verdict
    return {
        "seed": f.workload.seed,
        "workload": repr(f.workload),
        "stored_workload": f.workload.to_dict(),
        "complete": f.complete,
        "violations": [
            {"message": x.message, "events": [e.to_dict() for e in x.events]} for x in v.violations
        ],
        "history": [e.to_dict() for e in v.history or ()],
    }


def _summary(s: Summary) -> dict[str, Any]:
    out: dict[str, Any] = {"status": s.status, "runs": s.runs, "exercised": s.exercised}
    if s.adapter_errors:
        out["adapter_errors"] = s.adapter_errors
    if s.aimed:
        out["aimed"] = s.aimed
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
            "aimed_runs": c.aimed,
            "aim_budget": c.aim_budget,
            "seconds": round(c.elapsed, 2),
            "timed_out": {"count": len(c.timed_out), "seeds": list(c.timed_out)},
            "adapter_error_runs": c.adapter_error_runs,
            "guarantees": {g: _summary(s) for g, s in c.summaries.items()},
            "baseline": {
                g: {
                    "verdicts": dict(b.verdicts),
                    "reasons": dict(b.reasons),
                    "celery_behaviour": b.celery_behaviour,
                }
                for g, b in c.baselines.items()
            },
        }
        if c.adapter_errors:
            entry["adapter_errors"] = [_failure(f) for f in c.adapter_errors]
        if c.errored:
            entry["errored_runs"] = [{"seed": seed, "error": why} for seed, why in c.errored]
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
            f"[{s.failure.size} events](#{_anchor(c.adapter, s.guarantee)})"
            + _baseline_note(c, s.guarantee)
            + ")"
        )
    if s.status == ADAPTER_ERROR:
        return (
            f"**ADAPTER ERROR** ({s.adapter_errors}/{s.runs} runs, "
            f"[recorder](#{_anchor(c.adapter, 'recorder')}))"
        )
    if s.status == NOT_EXERCISED:
        return f"not exercised (0/{s.runs})"
    return f"pass ({s.exercised}/{s.runs})"


def _anchor(adapter: str, guarantee: str) -> str:
    return f"{guarantee}-{adapter}".lower().replace("_", "-")


def _baseline_note(c: Campaign, guarantee: str) -> str:
    """``; Celery's behaviour`` or ``; the transport's`` when the baseline judged it."""
    b = c.baselines.get(guarantee)
    if b is None or not b.judged:
        return ""
    return "; Celery's behaviour" if b.celery_behaviour else "; the transport's"


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
        "pass (k/n): no violation in n runs, k of which exercised the guarantee (its "
        "premise happened); not exercised (0/n): no violation, but no run exercised it, "
        "so no verdict. L1 and L2 are liveness: every run finishes; every message ends "
        "acked, revoked, declined or expired.",
        "",
        "| Adapter | transport | examples | runs | aimed runs | timed out | seconds | slack "
        "| seed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in campaigns:
        late = (
            f"{len(c.timed_out)} (seeds {', '.join(map(str, c.timed_out))})" if c.timed_out else "0"
        )
        lines.append(
            f"| {c.adapter} | {c.capabilities.transport} | {c.examples} | {c.runs} "
            f"| {c.aimed} | {late} | {c.elapsed:.1f} | {_slack(c.capabilities)} "
            f"| {c.hypothesis_seed} |"
        )
    for c in campaigns:
        if c.capabilities.slack_measured:
            lines += [
                "",
                f"{c.adapter}: slack {c.capabilities.slack:g} s, {c.capabilities.slack_source}",
            ]
    errored = [c for c in campaigns if c.errored]
    for c in errored:
        lines += [
            "",
            f"{c.adapter}: {len(c.errored)} run(s) could not be carried out: "
            + "; ".join(f"seed {seed}: {why}" for seed, why in c.errored).replace("\n", " "),
        ]
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
    for c in campaigns:
        if not c.adapter_errors:
            continue
        lines += [
            "",
            f'<a id="{_anchor(c.adapter, "recorder")}"></a>',
            f"### Adapter errors on {c.adapter}",
            "",
            "```text",
            describe_adapter_errors(c),
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
        f"reproduce: {_reproduce(c, guarantee)} -k {guarantee}",
        f"workload: {f.workload!r}",
        "violations:",
    ]
    out += ["  " + v.describe().replace("\n", "\n  ") for v in f.verdict.violations]
    if guarantee in c.baselines:
        out.append(f"baseline: {c.baselines[guarantee].describe()}")
    if history:
        from simq.timeline.text import render_text

        out.append("timeline (seconds from the first event):")
        out += ["  " + line for line in render_text(history).splitlines()]
    out.append(f"shortest failing history ({f.size} events, complete={f.complete}):")
    out += ["  " + line for line in (history.to_jsonl() if history else "").splitlines()]
    return "\n".join(out)


def command(c: Campaign, *options: str) -> str:
    """``pytest --conformance=ADAPTER`` with the options that select the same deployment
    (``Capabilities.reproduce``), then ``options``."""
    extra = tuple(getattr(c.capabilities, "reproduce", ()) or ())
    return " ".join(("pytest", f"--conformance={c.adapter}", *extra, *options))


def replay_file(adapter: str, guarantee: str, workload: Workload) -> Path:
    """Store ``workload`` in ``$TMPDIR/simq-conformance/`` for a ``replay:`` line to name
    (the adapter's name made safe for a file name: ``module:object`` has a colon)."""
    folder = Path(tempfile.gettempdir()) / "simq-conformance"
    folder.mkdir(exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", adapter)
    path = folder / f"{safe}-{guarantee}-seed{workload.seed}.json"
    path.write_text(workload.to_json() + "\n")
    return path


def _reproduce(c: Campaign, guarantee: str | None = None) -> str:
    if c.replayed is not None:
        # A replay ran one stored workload: running it again is the reproduction.
        path = replay_file(c.adapter, guarantee or "all", c.replayed)
        return command(c, f"--conformance-replay={path}")
    return command(
        c, f"--conformance-seed={c.hypothesis_seed}", f"--conformance-examples={c.examples}"
    )


def describe_adapter_errors(c: Campaign, guarantee: str | None = None) -> str:
    """What the adapter failed to record, per run kept, for people.

    An adapter error is not a verdict on the transport: the history is missing events
    (a delivery without a publication, a message without an end in a complete run), so
    no guarantee can be judged on it. Fix the adapter's recorder.
    """
    s = c.summaries.get(guarantee) if guarantee else None
    head = (
        f"{guarantee} on {c.adapter}: ADAPTER ERROR in {s.adapter_errors} of {s.runs} runs"
        if s is not None
        else f"{c.adapter}: ADAPTER ERROR in {c.adapter_error_runs} of {c.total} runs"
    )
    out = [
        head + ": the recording was incomplete, so those runs could not be judged "
        "(the adapter's fault, not the transport's)",
        f"reproduce: {_reproduce(c, guarantee)}" + (f" -k {guarantee}" if guarantee else ""),
    ]
    for f in c.adapter_errors:
        history = f.verdict.history
        out.append(f"workload seed {f.workload.seed} (complete={f.complete}): {f.workload!r}")
        out += ["  " + v.describe().replace("\n", "\n  ") for v in f.verdict.violations]
        out.append(f"  history ({f.size} events):")
        out += ["    " + line for line in (history.to_jsonl() if history else "").splitlines()]
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
