"""The conformance suite's pytest plugin, run through pytester: options, verdicts, reports."""

from __future__ import annotations

import json
import re

import pytest

# Imported here so pytester's in-process runs reuse them instead of importing (and
# assertion-rewriting) them again each run.
import simq_conformance.adapters.simq_adapter
import simq_conformance.session
import simq_conformance.suite.test_guarantees  # noqa: F401

pytest_plugins = ("pytester",)

#: A module of adapters for the tests below: broken, limited and unreachable ones.
ADAPTERS = '''
import attrs

from simq.history import History
from simq_conformance import BaseAdapter, RunResult
from simq_conformance.adapters.simq_adapter import SimqAdapter


class Forgetful(SimqAdapter):
    """Records no acks yet calls its runs complete: a broken recorder (adapter error)."""

    def __init__(self):
        super().__init__()
        self.capabilities = attrs.evolve(self.capabilities, adapter="forgetful")

    def run(self, workload):
        result = super().run(workload)
        history = History(e for e in result.history if e.kind != "acked")
        return attrs.evolve(result, history=history)


class LateAcker(SimqAdapter):
    """Acks every message a second after its last event: early acks come late (breaks G1)."""

    def __init__(self):
        super().__init__()
        self.capabilities = attrs.evolve(self.capabilities, adapter="late-acker")

    def run(self, workload):
        result = super().run(workload)
        events = list(result.history)
        end = max((e.time for e in events), default=0.0) + 1.0
        late = [attrs.evolve(e, time=end) for e in events if e.kind == "acked"]
        history = History([e for e in events if e.kind != "acked"] + late)
        return attrs.evolve(result, history=history)


def limited():
    adapter = SimqAdapter()
    adapter.capabilities = attrs.evolve(
        adapter.capabilities, adapter="limited", faults=frozenset({"kill_child"}),
        time_limits=False)
    return adapter


class Unreachable(BaseAdapter):
    capabilities = SimqAdapter().capabilities

    def setup(self):
        raise ConnectionError("connection refused at 127.0.0.1:1")


class NotAnAdapter:
    pass
'''


@pytest.fixture
def adapters(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory with the adapters module importable as ``adapters_mod``."""
    pytester.makepyfile(adapters_mod=ADAPTERS)
    pytester.syspathinsert()
    return pytester


def test_help_lists_the_options(pytester: pytest.Pytester) -> None:
    """``pytest --help`` shows every conformance option in the simq group."""
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    for option in (
        "--conformance=ADAPTER",
        "--conformance-url=URL",
        "--conformance-transport-options=JSON",
        "--conformance-strict",
        "--no-conformance-strict",
        "--conformance-report=PATH",
        "--conformance-examples=N",
        "--conformance-seed=N",
    ):
        assert option in out


def test_unknown_adapter_names_the_closest_match(pytester: pytest.Pytester) -> None:
    """An unknown adapter name is a usage error listing the names and the closest one."""
    result = pytester.runpytest("--conformance=simq-rdis")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.re_match_lines(
        [
            r"^ERROR: unknown conformance adapter 'simq-rdis'; did you mean 'simq-redis'\? "
            r"available: simq, simq-redis, simq-polling, celery-redis, celery-rabbitmq, celery-memory, "
            r"celery \(or module:object for your own\)$"
        ]
    )


def test_module_object_that_is_no_adapter_is_refused(adapters: pytest.Pytester) -> None:
    """``module:object`` naming something without run() and capabilities is a usage error."""
    result = adapters.runpytest("--conformance=adapters_mod:NotAnAdapter")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.re_match_lines(
        [
            r"^ERROR: conformance adapter 'adapters_mod:NotAnAdapter' is <adapters_mod"
            r"\.NotAnAdapter object at 0x[0-9a-f]+>, not an adapter: it needs a `capabilities` "
            r"attribute and a `run\(workload\)` method \(see simq_conformance\.Adapter\)$"
        ]
    )


def test_without_the_option_the_suite_is_not_collected(pytester: pytest.Pytester) -> None:
    """Without --conformance only the project's own tests run."""
    pytester.makepyfile(test_mine="def test_mine():\n    pass\n")
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1)
    assert "test_guarantee" not in result.stdout.str()
    assert "simq_conformance:" not in result.stdout.str()


def test_simq_runs_alone_and_passes(pytester: pytest.Pytester) -> None:
    """``--conformance=simq`` with no path runs the suite: every guarantee passes."""
    pytester.makepyfile(test_mine="def test_mine():\n    assert False\n")
    pytester.makeini("[pytest]\ntestpaths = .\n")
    result = pytester.runpytest("--conformance=simq", "--conformance-examples=5", "-rs")
    result.assert_outcomes(passed=20, skipped=1)
    result.stdout.re_match_lines(
        [
            r"^simq_conformance: adapters=simq seed=0 examples=simq=5 "
            r"\(--conformance-seed=N, --conformance-examples=N to change\)$",
            r"^\| G4 worker loss redelivers unacked messages \| pass \([3-9]/\d+\) \|$",
        ]
    )
    assert "test_mine" not in result.stdout.str()


def test_adapters_are_repeatable_and_comma_separated(pytester: pytest.Pytester) -> None:
    """Repeating --conformance and separating names with commas select the same adapters."""
    for args in (
        ["--conformance=simq,simq-redis"],
        ["--conformance=simq", "--conformance", "simq-redis"],
    ):
        result = pytester.runpytest(*args, "--co", "-q")
        out = result.stdout.str()
        assert "test_guarantee[simq-G1]" in out and "test_guarantee[simq-redis-G18]" in out
        assert "40 tests collected" in out or "41 tests collected" in out


def test_a_broken_adapter_fails_with_seed_and_history(adapters: pytest.Pytester) -> None:
    """An adapter whose early acks come late fails G1, printing the seed and the history."""
    result = adapters.runpytest(
        "--conformance=adapters_mod:LateAcker", "--conformance-examples=10", "-k", "G1]"
    )
    result.assert_outcomes(failed=1, deselected=20)
    result.stdout.re_match_lines(
        [
            r"^E?\s*G1 \(early ack at execution start\) fails on adapters_mod:LateAcker$",
            r"^E?\s*workload seed: \d+; hypothesis seed: 0$",
            r"^E?\s*reproduce: pytest --conformance=adapters_mod:LateAcker --conformance-seed=0 "
            r"--conformance-examples=10 -k G1$",
            r"^E?\s*G1: probes\.\w+\[[0-9a-f-]+\] message m\d+ was acked at .*, after its "
            r"attempt ended with \w+ at .*; without acks_late the ack comes when the task starts$",
            r"^E?\s*shortest failing history \(\d+ events, complete=True\):$",
        ]
    )


def test_an_incomplete_recording_is_an_adapter_error(adapters: pytest.Pytester) -> None:
    """An adapter that records no acks yet reports its runs complete: an adapter error."""
    result = adapters.runpytest(
        "--conformance=adapters_mod:Forgetful", "--conformance-examples=3", "-k", "G1]"
    )
    result.assert_outcomes(failed=1, deselected=20)
    result.stdout.re_match_lines(
        [
            r"^E?\s*G1 on adapters_mod:Forgetful: ADAPTER ERROR in \d+ of \d+ runs: the "
            r"recording was incomplete, so those runs could not be judged \(the adapter's "
            r"fault, not the transport's\)$",
        ]
    )


def test_missing_capabilities_skip_with_adapter_and_reason(adapters: pytest.Pytester) -> None:
    """A guarantee needing a capability the adapter lacks is skipped, naming both."""
    result = adapters.runpytest(
        "--conformance=adapters_mod:limited", "--conformance-examples=3", "-rs"
    )
    # G14 and L2 need a fault that takes a message back (kill, cut, restart, cold
    # shutdown): without one their premise cannot happen, so they are not applicable.
    result.assert_outcomes(passed=12, skipped=9)
    result.stdout.re_match_lines_random(
        [
            r"^SKIPPED \[1\] .*: limited: capability fault 'kill_worker' not supported$",
            r"^SKIPPED \[1\] .*: limited: capability fault 'cut_connection' or fault "
            r"'restart_broker' not supported$",
            r"^SKIPPED \[2\] .*: limited: capability time_limits not supported$",
            r"^SKIPPED \[1\] .*: limited: capability fault 'kill_worker' or fault "
            r"'cut_connection' or fault 'restart_broker' not supported$",
        ]
    )


@pytest.mark.parametrize(("ci", "outcome"), [("true", "failed"), ("", "skipped")])
def test_an_unreachable_broker_fails_only_under_ci(
    adapters: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    """An adapter whose setup cannot reach its broker fails under CI=true, else skips."""
    monkeypatch.setenv("CI", ci)
    result = adapters.runpytest("--conformance=adapters_mod:Unreachable", "-rsf", "-k", "G1]")
    result.assert_outcomes(**{outcome: 1}, deselected=20)
    result.stdout.re_match_lines(
        [
            r".*adapters_mod:Unreachable: capability broker: unreachable or not set up "
            r"\(ConnectionError: connection refused at 127\.0\.0\.1:1\)"
        ]
    )


def test_the_report_is_written_as_json_and_markdown(pytester: pytest.Pytester) -> None:
    """--conformance-report writes PATH.json and PATH.md with the guarantee table."""
    result = pytester.runpytest(
        "--conformance=simq", "--conformance-examples=3", "--conformance-report=out/report.json"
    )
    result.assert_outcomes(passed=20, skipped=1)
    data = json.loads((pytester.path / "out" / "report.json").read_text())
    simq = data["adapters"]["simq"]
    assert simq["runs"] == 3
    assert {g["status"] for g in simq["guarantees"].values()} == {"pass"}
    markdown = (pytester.path / "out" / "report.md").read_text()
    assert re.search(r"^\| Guarantee \| simq \|$", markdown, re.MULTILINE)
    assert re.search(r"^\| G9 expiry revokes \| pass \([3-9]/\d+\) \|$", markdown, re.MULTILINE)
    result.stdout.re_match_lines([r"^report written: .*out/report\.md$"])


def test_a_failure_lands_in_the_report(adapters: pytest.Pytester) -> None:
    """A failing guarantee's report cell carries the seed and its history follows the table."""
    adapters.runpytest(
        "--conformance=adapters_mod:LateAcker",
        "--conformance-examples=5",
        "--conformance-report=rep",
        "-k",
        "G1]",
    )
    markdown = (adapters.path / "rep.md").read_text()
    assert re.search(
        r"^\| G1 early ack at execution start \| \*\*FAIL\*\* \(seed \d+, "
        r"\[\d+ events\]\(#g1-adapters-mod:lateacker\)\) \|$",
        markdown,
        re.M,
    )
    assert "### G1 on adapters_mod:LateAcker" in markdown
    data = json.loads((adapters.path / "rep.json").read_text())
    failure = data["adapters"]["adapters_mod:LateAcker"]["guarantees"]["G1"]["failure"]
    assert failure["history"] and failure["violations"]


def test_the_suite_refuses_xdist(pytester: pytest.Pytester) -> None:
    """--conformance with -n is a usage error: each adapter's campaign runs in one process."""
    result = pytester.runpytest("--conformance=simq", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.re_match_lines(
        [
            r"^ERROR: --conformance runs in one process \(each adapter's workloads run once and "
            r"every guarantee test reads them\); drop -n/--numprocesses$"
        ]
    )
