"""The state of one ``pytest --conformance`` session: adapters, campaigns, verdicts.

Each adapter's campaign runs once, on the first test that needs it, and every guarantee
test of that adapter reads its verdict from it: pass, fail, skip (not applicable),
"not exercised (0/N)" (an xfail, or a failure when ``strict``), or an adapter error
(a failure: the adapter's recording was incomplete).
"""

from __future__ import annotations

import traceback
from typing import Any

import attrs
import pytest

from simq_conformance.adapter import Adapter, Workload
from simq_conformance.calibrate import CalibrationError
from simq_conformance.campaign import Campaign, replay_campaign, run_campaign
from simq_conformance.coverage import DESCRIPTIONS
from simq_conformance.properties import (
    ADAPTER_ERROR,
    FAIL,
    GUARANTEES,
    NOT_APPLICABLE,
    NOT_EXERCISED,
)
from simq_conformance.report import (
    command,
    describe_adapter_errors,
    describe_failure,
    replay_file,
)

__all__ = ["ConformanceSession"]

#: Transports the simulator models, for the differential check.
_SIMULATED_TRANSPORTS = ("amqp", "redis")


def reference_transport(caps: Any) -> str | None:
    """The simulator's transport for a real adapter's differential check, if it has one.

    Real Celery on a kombu polling transport (``filesystem://``, SQLAlchemy: the checkers'
    ``"memory"`` model on Celery's synchronous loop) is compared with ``"polling"``.
    """
    if caps.sync_loop and caps.transport == "memory":
        return "polling"
    return caps.transport if caps.transport in _SIMULATED_TRANSPORTS else None


def _polling_interval(adapter: Any) -> float | None:
    """The ``polling_interval`` a real adapter's workers use (its options, else its
    default for the driver), so the simulator polls as often."""
    options = getattr(adapter, "transport_options", None) or {}
    value = options.get("polling_interval")
    if value is None:
        from simq_conformance.adapters._celery_run import _POLLING

        value = _POLLING.get(getattr(adapter, "driver", None) or "")
    return float(value) if value is not None else None


class ConformanceSession:
    """Adapters by name and, once run, their campaigns."""

    def __init__(
        self,
        adapters: dict[str, Adapter],
        *,
        examples: int | None,
        seed: int,
        ci: bool,
        defaults: tuple[int, int],
        strict: bool = False,
        baselines: dict[str, Adapter] | None = None,
        replay: Workload | None = None,
    ) -> None:
        """``strict``: a guarantee no run exercised fails its test (else it is an xfail
        labelled "not exercised (0/N)")."""
        self.adapters = adapters
        #: Real Celery deployments a failing workload runs on again (the baseline).
        self.baselines = baselines or {}
        #: The stored workload to run once instead of a campaign (--conformance-replay).
        self.replay = replay
        self.strict = strict
        self.examples = examples
        self.seed = seed
        self.ci = ci
        self.defaults = defaults
        self.campaigns: dict[str, Campaign] = {}
        self.unavailable: dict[str, str] = {}
        #: Adapters whose calibration found them too jittery to certify time bounds.
        self.jittery: dict[str, str] = {}
        self.ready: list[str] = []
        self.written: list[Any] = []
        #: Guarantees whose tests were collected, by adapter (None: not known yet).
        self.selected: dict[str, set[str]] | None = None

    def examples_for(self, name: str) -> int:
        if self.examples is not None:
            return self.examples
        simulated, real = self.defaults
        return simulated if self.adapters[name].capabilities.simulated else real

    def describe_examples(self) -> str:
        return ",".join(f"{n}={self.examples_for(n)}" for n in self.adapters)

    def differential_names(self) -> list[str]:
        """Real adapters on a simulated transport, when a simulator is selected too."""
        if not any(a.capabilities.simulated for a in self.adapters.values()):
            return []
        return [
            n
            for n, a in self.adapters.items()
            if not a.capabilities.simulated and reference_transport(a.capabilities) is not None
        ]

    # -- running ---------------------------------------------------------------------

    def campaign(self, name: str) -> Campaign:
        """The adapter's campaign, run now if it has not run; skip/fail if unreachable."""
        if name in self.unavailable:
            self._unavailable(self.unavailable[name])
        if name in self.jittery:
            pytest.fail(self.jittery[name], pytrace=False)
        if name not in self.campaigns:
            adapter = self.adapters[name]
            setup = getattr(adapter, "setup", None)
            if setup is not None:
                try:
                    setup()
                except CalibrationError as exc:
                    # Reachable, but too jittery to certify time bounds: never a skip.
                    self.jittery[name] = f"{name}: {exc}"
                    pytest.fail(self.jittery[name], pytrace=False)
                except Exception as exc:
                    self.unavailable[name] = (
                        f"{name}: capability broker: unreachable or not set up "
                        f"({type(exc).__name__}: {exc})"
                    )
                    self._unavailable(self.unavailable[name])
            self.ready.append(name)
            reference = None
            if name in self.differential_names():
                from simq_conformance.adapters.simq_adapter import SimqAdapter

                caps = adapter.capabilities
                transport = reference_transport(caps) or caps.transport
                ref = SimqAdapter(
                    transport=transport,
                    visibility_timeout=caps.visibility_timeout,
                    polling_interval=_polling_interval(adapter) if transport == "polling" else None,
                )
                reference = (ref.capabilities.adapter, ref)
            only = None if self.selected is None else frozenset(self.selected.get(name, ()))
            if self.replay is not None:
                self.campaigns[name] = replay_campaign(
                    name, adapter, self.replay, reference=reference
                )
            else:
                self.campaigns[name] = run_campaign(
                    name,
                    adapter,
                    examples=self.examples_for(name),
                    hypothesis_seed=self.seed,
                    reference=reference,
                    shrink_only=only,
                )
            self._judge_on_baselines(name)
        return self.campaigns[name]

    def _judge_on_baselines(self, name: str) -> None:
        """Run each failing workload of a real adapter again on the Celery baseline."""
        c = self.campaigns[name]
        if not self.baselines or name in self.baselines or c.capabilities.simulated:
            return
        failures = {
            g: s.failure.workload
            for g, s in c.summaries.items()
            if s.status == FAIL and s.failure is not None
        }
        if not failures:
            return
        from simq_conformance.baseline import ERROR, judge

        ready, down = {}, {}
        for base, adapter in self.baselines.items():
            setup = getattr(adapter, "setup", None)
            try:
                if base not in self.ready and setup is not None:
                    setup()
            except Exception as exc:  # the baseline's broker: no verdict from it
                down[base] = f"unavailable: {type(exc).__name__}: {exc}"
                continue
            if base not in self.ready:
                self.ready.append(base)
            ready[base] = adapter
        c.baselines = {
            g: attrs.evolve(
                b,
                verdicts={**b.verdicts, **dict.fromkeys(down, ERROR)},
                reasons={**b.reasons, **down},
            )
            for g, b in judge(failures, ready).items()
        }

    def _unavailable(self, reason: str) -> None:
        if self.ci:
            pytest.fail(
                f"{reason}; under CI=true an unreachable broker is a failure", pytrace=False
            )
        pytest.skip(reason)

    def teardown(self) -> None:
        for name in self.ready:
            adapter = self.adapters.get(name) or self.baselines[name]
            teardown = getattr(adapter, "teardown", None)
            if teardown is not None:
                try:
                    teardown()
                except Exception:  # a teardown error must not hide the verdicts
                    traceback.print_exc()
        self.ready.clear()

    # -- verdicts --------------------------------------------------------------------

    def check_guarantee(self, name: str, guarantee: str) -> None:
        """Pass, skip (not applicable, with the reason), fail (with the shortest history),
        fail on an adapter error, or "not exercised (0/N)": xfail, or fail when strict."""
        c = self.campaign(name)
        if c.error:
            pytest.fail(c.error, pytrace=False)
        s = c.summaries[guarantee]
        if s.status == NOT_APPLICABLE:
            pytest.skip(s.reason)
        if s.status == FAIL:
            baseline = c.baselines.get(guarantee)
            if baseline is not None and baseline.celery_behaviour:
                # Not the transport's fault: every baseline fails the same workload.
                pytest.xfail(f"{guarantee} on {name}: {baseline.describe()}")
            pytest.fail(
                describe_failure(c, guarantee) + self._replay_line(c, guarantee), pytrace=False
            )
        if s.status == ADAPTER_ERROR:
            pytest.fail(describe_adapter_errors(c, guarantee), pytrace=False)
        assert s.runs == c.total, f"{guarantee} judged {s.runs} of {c.total} runs"
        if s.status == NOT_EXERCISED and c.replayed is not None:
            pytest.skip(f"{guarantee} on {name}: the replayed workload does not exercise it")
        if s.status == NOT_EXERCISED:
            message = (
                f"{guarantee} on {name}: not exercised (0/{s.runs}): no run had "
                f"{DESCRIPTIONS[guarantee]} ({c.runs} generated and {c.aimed} aimed runs; "
                f"more with --conformance-examples=N)"
            )
            if self.strict:
                pytest.fail(f"{message}; strict: a guarantee never exercised fails", pytrace=False)
            pytest.xfail(message)

    def _replay_line(self, c: Campaign, guarantee: str) -> str:
        """Store the failing workload in a file; the line that reruns exactly it."""
        failure = c.summaries[guarantee].failure
        if failure is None:
            return ""
        path = replay_file(c.adapter, guarantee, failure.workload)
        return f"\nreplay: {command(c, f'--conformance-replay={path}')} -k {guarantee}"

    def check_differential(self, name: str) -> None:
        """Fail with each disagreement between the real adapter and the simulator."""
        c = self.campaign(name)
        if c.error:
            pytest.fail(c.error, pytrace=False)
        if not c.disagreements:
            return
        lines = [
            f"{name} and {c.reference} disagree on {len(c.disagreements)} point(s) over "
            f"{c.compared} workloads (hypothesis seed {c.hypothesis_seed}):"
        ]
        for d in c.disagreements:
            g = GUARANTEES.get(d.topic)
            lines += [
                f"- {d.message}",
                f"  title: {g.title if g else 'final states'}",
                f"  workload seed {d.workload.seed}: {d.workload!r}",
                f"  {name} history ({len(d.real_history)} events):",
            ]
            lines += ["    " + x for x in d.real_history.to_jsonl().splitlines()]
            lines.append(f"  {c.reference} history ({len(d.reference_history)} events):")
            lines += ["    " + x for x in d.reference_history.to_jsonl().splitlines()]
        pytest.fail("\n".join(lines), pytrace=False)
