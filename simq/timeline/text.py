"""A history as a plain-text timeline for the terminal.

One summary line, then one block per worker: its attempts in start order, one a line,
with the faults on that worker interleaved at their time. Faults of no worker (a broker
restart, a revoke broadcast) close the listing::

    simq timeline: 26 tasks, 33 attempts (succeeded 24, retried 7, requeued 2), ...
    worker-2  concurrency 2, 2 lanes
      +0.000s  m2.1   orders.place_order     [lane 0]  started -> succeeded (0 s)
      !! worker-crashed worker-2 at +0.7s (restart after 15 s)
"""

from __future__ import annotations

import collections
import textwrap

from simq.history import History
from simq.timeline.model import Bar, Marker, Timeline, build

__all__ = ["render_text", "summary"]


def render_text(history: History, width: int = 100) -> str:
    """``history`` as a terminal timeline; no line is longer than ``width``."""
    timeline = build(history)
    lines = [summary(timeline, glue="\xa0")]
    if not timeline.bars and not timeline.markers:
        lines.append("(no attempts and no faults)")
    task_width = min(max((len(bar.task) for bar in timeline.bars), default=0), 40)
    attempt_width = max((len(bar.attempt) for bar in timeline.bars), default=0)
    for row in timeline.workers:
        lines.append("")
        lines.append(f"{row.name}  concurrency {row.concurrency}, {_plural(row.lanes, 'lane')}")
        entries: list[tuple[int, str]] = []
        for bar in timeline.bars:
            if bar.worker == row.name:
                entries.append((bar.seq, _bar_line(bar, attempt_width, task_width, width)))
        for marker in timeline.markers:
            if marker.worker == row.name:
                entries.append((marker.seq, _marker_line(marker)))
        lines.extend(line for _, line in sorted(entries))
    loose = [_marker_line(marker) for marker in timeline.markers if marker.worker is None]
    if loose:
        lines += ["", "broker and control"]
        lines += loose
    return "".join(_fit(part, width) for line in lines for part in line.split("\n"))


def summary(timeline: Timeline, glue: str = " ") -> str:
    """One line: tasks, attempts by outcome, faults by kind, the time span.

    ``glue`` joins each kind to its count (render_text uses a no-break space, which
    keeps the pair on one line when the summary wraps).
    """
    outcomes = collections.Counter(bar.outcome for bar in timeline.bars)
    faults = collections.Counter(marker.kind for marker in timeline.markers)
    by_outcome = ", ".join(f"{kind}{glue}{n}" for kind, n in outcomes.most_common())
    by_fault = ", ".join(f"{kind}{glue}{n}" for kind, n in faults.most_common())
    return (
        f"simq timeline: {_plural(timeline.tasks, 'task')}, "
        f"{_plural(len(timeline.bars), 'attempt')}"
        f"{f' ({by_outcome})' if by_outcome else ''}; "
        f"{_plural(len(timeline.markers), 'fault')}{f' ({by_fault})' if by_fault else ''}; "
        f"{_plural(len(timeline.workers), 'worker')}; {_seconds(timeline.span)} s, "
        f"{_plural(timeline.events, 'event')}"
    )


def _bar_line(bar: Bar, attempt_width: int, task_width: int, width: int) -> str:
    """An attempt's line; what follows its outcome goes on a second line if too long."""
    task = bar.task if len(bar.task) <= task_width else bar.task[: task_width - 1] + "~"
    head = (
        f"  {_at(bar.start):>10}  {bar.attempt:<{attempt_width}}  {task:<{task_width}}  "
        f"[lane {bar.lane}]  started -> {bar.outcome} ({_seconds(bar.duration)} s)"
    )
    extras = []
    if bar.previous is not None:
        what = "redelivery" if bar.previous_via == "message" else f"retry {bar.retries}"
        extras.append(f"{what} of {bar.previous}")
    elif bar.redelivered:
        extras.append("redelivered")
    if bar.exception:
        extras.append(bar.exception)
    if bar.detail:
        extras.append(bar.detail)
    if not extras:
        return head
    line = f"{head}  {'; '.join(extras)}"
    if len(line) <= width:
        return line
    return f"{head}\n{' ' * 14}{'; '.join(extras)}"


def _marker_line(marker: Marker) -> str:
    where = f" {marker.worker}" if marker.worker else ""
    line = f"  !! {marker.kind}{where} at +{_seconds(marker.time)}s"
    extra = marker.label[len(f"{marker.kind}{where}") :].strip()
    if extra:
        line += f" {extra}"
    if marker.until is not None:
        line += f", until +{_seconds(marker.until)}s"
    return line


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _at(seconds: float) -> str:
    return f"+{seconds:.3f}s"


def _seconds(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def _fit(line: str, width: int) -> str:
    """``line`` and a newline; wrapped, under its own indentation plus 4, if too long."""
    if len(line) <= width:
        return line.replace("\xa0", " ") + "\n"
    indent = " " * (len(line) - len(line.lstrip()) + 4)
    wrapped = textwrap.wrap(
        line.strip(),
        width=max(width, len(indent) + 20),
        initial_indent=line[: len(line) - len(line.lstrip())],
        subsequent_indent=indent,
        break_on_hyphens=False,
    )
    return "\n".join(wrapped).replace("\xa0", " ") + "\n"
