"""Measure a deployment's timing jitter, so that the suite's slack means something.

Every time bound a checker applies (a start against its ETA or expiry, a time limit
against its limit, a prefork ack against the child's start) needs a tolerance for how
the real deployment records time: timers that fire a little late, events recorded in
different processes. A blanket tolerance of seconds would excuse a task that ignores
its ETA or its soft time limit, so :func:`calibrate` measures it instead: one short run
on the deployment itself (one worker, tasks with countdowns, a soft and a hard time
limit) and::

    slack = max(FLOOR, FACTOR * worst deviation observed)

The deviations (:func:`measure`): how far a start is from its ETA (or from its delivery,
when the message arrived after its ETA: a polling transport's delay is not the
worker's timing), how much *earlier* than its limit a time limit fired, and how long a
prefork parent's ack preceded the child's start. How *late* a limit fires is measured
and reported but not counted: no check bounds it (a fired limit was enforced), and
Celery's prefork pool on a polling transport checks limits from a thread that wakes
once a second (billiard's ``TimeoutHandler``), so it is up to a second late by design.

A deployment whose slack would exceed :data:`CEILING` cannot be certified on timing:
the workloads put ETAs and soft limits :data:`CEILING` seconds and more apart from what
a broken transport would do, so :func:`calibrate` raises :class:`CalibrationError`.

:func:`measure` is the pure part: the deviations one history shows.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from simq.checkers.index import index_of
from simq.history import History
from simq_conformance.adapter import Capabilities, ProbeCall, RunSettings, Workload

__all__ = [
    "CEILING",
    "FACTOR",
    "FLOOR",
    "Calibration",
    "CalibrationError",
    "Sample",
    "calibrate",
    "calibration_workload",
    "measure",
    "slack_from",
]

#: Slack never below this (seconds): a few samples can miss a rare scheduling hiccup
#: (a loaded CI machine, a pool child being replaced). Measured on an idle 2-CPU machine:
#: starts within 25 ms of their ETA, limits within 110 ms, acks within 2 ms.
FLOOR = 0.25
#: Slack is this many times the worst deviation observed.
FACTOR = 2.0
#: Above this slack (seconds) timing cannot be certified: the workloads' shortest gap
#: between a correct and a broken timing (an ETA 2 s ahead, a soft limit 1.5 s before
#: the hard one) would no longer be unmistakable.
CEILING = 1.0


class CalibrationError(RuntimeError):
    """The deployment's timing is too jittery (or unrecorded) to certify time bounds."""


@attrs.frozen
class Sample:
    """One measured deviation: ``what`` (``"eta"``, ``"soft limit"``, ``"hard limit"``,
    ``"prefork ack"``), the probe call, and how far off it was (seconds, signed: a
    start after its ETA or a limit firing after its limit is positive)."""

    what: str
    key: str
    seconds: float

    @property
    def jitter(self) -> float:
        """What the slack must cover: all of it, except a time limit's lateness."""
        if self.what.endswith(" limit"):
            return max(0.0, -self.seconds)
        return abs(self.seconds)


@attrs.frozen
class Calibration:
    """What :func:`calibrate` measured and the slack it derived.

    Attributes:
        slack: The slack to use (seconds).
        samples: Every deviation measured (at least one).
        seconds: How long the calibration took (wall clock, workers' startup included).
    """

    slack: float
    samples: tuple[Sample, ...]
    seconds: float

    @property
    def worst(self) -> Sample:
        """The sample with the largest jitter."""
        return _worst(self.samples)

    def describe(self) -> str:
        """``measured: ...``, the capability's ``slack_source`` (reports show it)."""
        kinds = sorted({s.what for s in self.samples})
        late = max((s.seconds for s in self.samples if s.what.endswith(" limit")), default=None)
        limits = f"; time limits fired up to {late:.3f} s late" if late is not None else ""
        return (
            f"measured: {FACTOR:g} x worst deviation {self.worst.jitter:.3f} s "
            f"({self.worst.what} of {self.worst.key}), floor {FLOOR:g} s, over "
            f"{len(self.samples)} samples ({', '.join(kinds)}) in a {self.seconds:.1f} s "
            f"calibration run{limits}"
        )


#: The calibration run's calls: starts against ETAs of 0.3-1.2 s, an early-ack start,
#: a soft limit (0.5 s, hard 1.0 s) and a hard limit (0.5 s); three children, so that
#: no call waits for a free one.
_CALLS = (
    ProbeCall("ret", (1,), {"countdown": 0.3}, key="eta-0.3"),
    ProbeCall("ret", (2,), {"countdown": 0.6}, key="eta-0.6"),
    ProbeCall("ret", (3,), {"countdown": 0.9}, key="eta-0.9"),
    ProbeCall("ret", (4,), {"countdown": 1.2}, key="eta-1.2"),
    ProbeCall("ret", (5,), {}, key="now"),
    ProbeCall("exceed", (1.5,), {"soft_time_limit": 0.5, "time_limit": 1.0}, key="soft"),
    ProbeCall("exceed", (1.5,), {"time_limit": 0.5}, key="hard"),
)


def calibration_workload(capabilities: Capabilities) -> Workload:
    """The calibration run for an adapter with ``capabilities`` (no time limits if it
    enforces none)."""
    calls = tuple(
        c
        for c in _CALLS
        if c.probe in capabilities.probes and (c.probe != "exceed" or capabilities.time_limits)
    )
    settings = RunSettings(workers=1, concurrency=3, prefetch_multiplier=2)
    return Workload(settings, calls, (), seed=0)


def measure(history: History, keys: dict[str, str] | None = None) -> tuple[Sample, ...]:
    """The timing deviations ``history`` shows, one per start with an ETA, fired time
    limit and early ack recorded before its start.

    ``keys`` maps task ids to the probe calls' keys (for the samples' names).
    """
    names = keys or {}
    out: list[Sample] = []
    for d in index_of(history).deliveries:
        if d.start is None:
            continue
        key = names.get(d.task_id or "", d.task_id or "?")
        if d.eta is not None:
            # Against the ETA, or the delivery if the message came after its ETA.
            out.append(Sample("eta", key, d.start.time - max(d.eta, d.event.time)))
        for _, e in d.marks_of("time-limit"):
            limit = e.details.get("limit")
            if limit is not None:
                which = e.details.get("which", "hard")
                out.append(Sample(f"{which} limit", key, e.time - d.start.time - float(limit)))
        s = d.settle
        if s is not None and s.kind == "acked" and s.time < d.start.time:
            # A prefork parent acks when the child accepts the task; the child records
            # its start a moment later.
            out.append(Sample("prefork ack", key, d.start.time - s.time))
    return tuple(out)


def slack_from(samples: tuple[Sample, ...], *, adapter: str = "the adapter") -> float:
    """``max(FLOOR, FACTOR * worst |deviation|)``; :class:`CalibrationError` above
    :data:`CEILING`."""
    if not samples:
        raise CalibrationError(f"{adapter}: the calibration run recorded no timing to measure")
    worst = _worst(samples)
    slack = max(FLOOR, FACTOR * worst.jitter)
    if slack > CEILING:
        raise CalibrationError(
            f"{adapter}: timing too jittery to certify: the {worst.what} of "
            f"{worst.key!r} was off by {worst.seconds:+.3f} s, so the slack would be "
            f"{slack:.2f} s ({FACTOR:g} x), above the ceiling of {CEILING:g} s that keeps "
            "an ignored ETA or soft time limit unmistakable. Run the suite on a less "
            "loaded machine, or declare Capabilities.slack for this deployment"
        )
    return round(slack, 3)


def calibrate(adapter: Any) -> Calibration:
    """Run :func:`calibration_workload` on ``adapter`` and derive its slack.

    Raises:
        CalibrationError: the run did not finish, or the deployment is too jittery.
    """
    caps: Capabilities = adapter.capabilities
    started = time.monotonic()
    result = adapter.run(calibration_workload(caps))
    seconds = time.monotonic() - started
    if not result.complete:
        raise CalibrationError(
            f"{caps.adapter}: the calibration run did not finish "
            f"({'; '.join(result.notes) or 'no notes'})"
        )
    keys = {task_id: key for key, task_id in result.task_ids.items()}
    samples = measure(result.history, keys)
    return Calibration(slack_from(samples, adapter=caps.adapter), samples, seconds)


def _worst(samples: tuple[Sample, ...]) -> Sample:
    return max(samples, key=lambda s: s.jitter)
