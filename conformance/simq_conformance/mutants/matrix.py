"""The kill matrix: every mutant certified on every adapter, each in its own pytest run.

``python -m simq_conformance.mutants --adapters simq,celery-redis --matrix PATH`` runs,
per adapter, the suite once without a mutant (it must pass: the baseline) and once per
mutant (``--conformance-mutant=NAME``; it must fail), at the suite's default budget, and
writes the matrix as Markdown. A mutant is *killed* when some guarantee fails; the cell
names the guarantees that caught it. A mutant that cannot be planted in an adapter's
deployment is ``n/a`` (a broker bug in RabbitMQ's Erlang code, say). ``nox -s mutants``
runs it on the simulator and on real Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from simq_conformance.mutants import MUTANTS

__all__ = ["Cell", "main", "run_cell", "run_matrix", "to_markdown", "write_matrix"]

#: Seconds one pytest run may take before the cell counts as an error.
RUN_TIMEOUT = 1800.0
#: The baseline row's name.
BASELINE = "(none)"
#: pytest's exit code for a usage error, and what the plugin says of a mutant that
#: cannot be planted in the adapter's deployment.
USAGE_ERROR = 4
_UNPLANTABLE = (" cannot be planted in ", " takes no mutant")


@attrs.frozen
class Cell:
    """One adapter's verdict with one mutant planted (or none: the baseline).

    Attributes:
        status: ``"killed"``, ``"survived"``, ``"pass"`` / ``"FAIL"`` (baseline),
            ``"n/a"`` or ``"error"``.
        failed: The guarantees that failed.
        runs: Runs the campaign made (generated and aimed).
        seconds: Wall-clock seconds of the pytest run.
        detail: Why it is n/a, or what went wrong.
    """

    adapter: str
    mutant: str
    status: str
    failed: tuple[str, ...] = ()
    runs: int = 0
    seconds: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        """A killed mutant, a passing baseline or an n/a cell."""
        return self.status in ("killed", "pass", "n/a")

    def text(self) -> str:
        if self.status in ("killed", "FAIL"):
            head = f"{self.status} by {', '.join(self.failed)}"
        elif self.status == "n/a":
            return f"n/a ({self.detail})"
        elif self.status == "error":
            return f"ERROR ({self.detail})"
        else:
            head = self.status.upper() if self.status == "survived" else self.status
        return f"{head} ({self.runs} runs, {self.seconds:.0f} s)"


def run_cell(adapter: str, mutant: str | None, folder: Path, extra: Sequence[str] = ()) -> Cell:
    """Certify ``adapter`` with ``mutant`` planted (None: the baseline) in a pytest run."""
    name = mutant or BASELINE
    report = folder / f"{adapter}-{mutant or 'baseline'}"
    args = [
        sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-q",
        f"--conformance={adapter}", f"--conformance-report={report}",
        "--no-conformance-strict", *extra,
    ]  # fmt: skip
    if mutant is not None:
        args.append(f"--conformance-mutant={mutant}")
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args, cwd=folder, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return Cell(adapter, name, "error", detail=f"pytest ran over {RUN_TIMEOUT:.0f} s")
    seconds = time.monotonic() - started
    if proc.returncode == USAGE_ERROR:
        # The plugin decides where a mutant can be planted: if it said not here, n/a.
        for line in proc.stderr.splitlines():
            for marker in _UNPLANTABLE:
                if marker in line:
                    where = line.split(marker, 1)[1].split(" (", 1)[0].split(":", 1)[0]
                    return Cell(adapter, name, "n/a", detail=f"{marker.strip()} {where}".strip())
    try:
        data = json.loads(report.with_name(report.name + ".json").read_text())
        entry = data["adapters"][adapter]
    except (OSError, ValueError, KeyError):
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return Cell(adapter, name, "error", seconds=seconds, detail=" / ".join(tail))
    failed = tuple(g for g, s in entry["guarantees"].items() if s["status"] == "fail")
    runs = int(entry["runs"]) + int(entry.get("aimed_runs", 0))
    if mutant is None:
        status = "FAIL" if failed else "pass"
    else:
        status = "killed" if failed else "survived"
    return Cell(adapter, name, status, failed, runs, seconds)


def run_matrix(
    adapters: Sequence[str],
    mutants: Sequence[str],
    extra: Sequence[str] = (),
    progress: Callable[[Cell], None] | None = None,
) -> list[Cell]:
    """Every adapter's baseline, then every mutant on it."""
    cells = []
    with tempfile.TemporaryDirectory(prefix="simq-mutants-") as tmp:
        for adapter in adapters:
            for mutant in (None, *mutants):
                cell = run_cell(adapter, mutant, Path(tmp), extra)
                cells.append(cell)
                if progress is not None:
                    progress(cell)
    return cells


def to_markdown(cells: Sequence[Cell]) -> str:
    """The kill matrix: a row per mutant (the baseline first), a column per adapter."""
    adapters = list(dict.fromkeys(c.adapter for c in cells))
    rows = list(dict.fromkeys(c.mutant for c in cells))
    by = {(c.mutant, c.adapter): c for c in cells}
    lines = [
        "| Mutant | Bug | " + " | ".join(adapters) + " |",
        "| --- | --- |" + " --- |" * len(adapters),
    ]
    for row in rows:
        title = MUTANTS[row].title if row in MUTANTS else "no bug planted: must pass"
        texts = [by[(row, a)].text() if (row, a) in by else "" for a in adapters]
        lines.append(f"| `{row}` | {title} | " + " | ".join(texts) + " |")
    mutants = [c for c in cells if c.mutant != BASELINE and c.status != "n/a"]
    killed = sum(c.status == "killed" for c in mutants)
    lines += ["", f"{killed} of {len(mutants)} planted mutants killed."]
    return "\n".join(lines) + "\n"


#: Where the matrix goes in a page that has them (else it is the whole file).
MARKERS = ("<!-- kill-matrix -->", "<!-- /kill-matrix -->")


def write_matrix(path: Path, table: str) -> None:
    """Write ``table`` into ``path``: between :data:`MARKERS` if the page has them."""
    start, end = MARKERS
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        path.write_text(f"{head}{start}\n{table}{end}{tail}")
    else:
        path.write_text(table)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run the matrix, print it, write it; 1 if any cell is not ok."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m simq_conformance.mutants",
        description="Certify adapters with each planted bug; every mutant must be killed.",
    )
    parser.add_argument("--adapters", default="simq", help="comma-separated (default: simq)")
    parser.add_argument("--mutants", default="", help="comma-separated (default: all)")
    parser.add_argument("--matrix", type=Path, help="write the Markdown matrix here")
    parser.add_argument("pytest_args", nargs="*", help="more pytest options (after --)")
    args = parser.parse_args(argv)
    adapters = [a for a in args.adapters.split(",") if a]
    mutants = [m for m in args.mutants.split(",") if m] or list(MUTANTS)
    unknown = [m for m in mutants if m not in MUTANTS]
    if unknown:
        parser.error(f"unknown mutants {', '.join(unknown)}; mutants: {', '.join(MUTANTS)}")

    def show(cell: Cell) -> None:
        print(f"{cell.adapter:<16} {cell.mutant:<32} {cell.text()}", flush=True)

    cells = run_matrix(adapters, mutants, args.pytest_args, show)
    table = to_markdown(cells)
    print(table)
    if args.matrix is not None:
        write_matrix(args.matrix, table)
    return 0 if all(c.ok for c in cells) else 1
