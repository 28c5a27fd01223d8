"""A failure's workload is stored, and ``--conformance-replay=FILE`` reruns exactly it."""

from __future__ import annotations

import json
import re

import pytest

from simq_conformance import Fault, ProbeCall, RunSettings, Workload

pytest_plugins = ("pytester",)

WORKLOAD = Workload(
    RunSettings(2, 1, 2, {"task_acks_late": True, "broker_transport_options": {"x": 1}}),
    calls=(
        ProbeCall("ret", (1,), {"countdown": 2.0}, "c1"),
        ProbeCall("fail_n", ("c2", 1, 7), {}, "c2"),
    ),
    faults=(Fault("kill_worker", 0.5, 0), Fault("revoke", 1.0, "c1")),
    seed=42,
)


def test_a_workload_round_trips_through_json() -> None:
    assert Workload.from_json(WORKLOAD.to_json()) == WORKLOAD
    assert json.loads(WORKLOAD.to_json())["calls"][1] == {
        "probe": "fail_n", "args": ["c2", 1, 7], "options": {}, "key": "c2",
    }  # fmt: skip


def test_a_file_that_is_no_workload_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^not a stored workload \(Workload.to_json\): KeyError"):
        Workload.from_json('{"calls": []}')


def test_a_failure_names_its_stored_workload_and_the_replay_reruns_exactly_it(
    pytester: pytest.Pytester,
) -> None:
    failed = pytester.runpytest_subprocess(
        "--conformance=simq", "--conformance-mutant=eta-ignored", "-p", "no:cacheprovider"
    )
    assert failed.ret == pytest.ExitCode.TESTS_FAILED
    lines = [line for line in failed.outlines if line.startswith("replay: ")]
    command = next(line for line in lines if line.endswith("-k G16"))
    match = re.fullmatch(
        r"replay: pytest --conformance=simq --conformance-mutant=eta-ignored "
        r"--conformance-replay=(\S+) -k G16",
        command,
    )
    assert match, command
    with open(match.group(1)) as f:
        stored = Workload.from_json(f.read())
    assert any("countdown" in c.options for c in stored.calls)
    again = pytester.runpytest_subprocess(
        "--conformance=simq", "--conformance-mutant=eta-ignored",
        f"--conformance-replay={match.group(1)}", "--conformance-report=replayed",
        "-p", "no:cacheprovider",
    )  # fmt: skip
    assert again.ret == pytest.ExitCode.TESTS_FAILED
    again.stdout.fnmatch_lines(["*FAILED*test_guarantee[[]simq-G16[]]*"])
    # The replay's own reproduce line replays that workload, not a campaign of 0 examples.
    again.stdout.fnmatch_lines(["reproduce: pytest*--conformance-replay=*-k G16"])
    assert not [line for line in again.outlines if "--conformance-examples=0" in line]
    # Each failure shows its run as a timeline in seconds from the first event.
    failed.stdout.fnmatch_lines(["*timeline (seconds from the first event):*", "*simq timeline:*"])
    report = json.loads((pytester.path / "replayed.json").read_text())["adapters"]["simq"]
    assert (report["runs"], report["aimed_runs"]) == (1, 0)
    failure = report["guarantees"]["G16"]["failure"]
    assert Workload.from_dict(failure["stored_workload"]) == stored
    # The same workload without the bug keeps G16.
    clean = pytester.runpytest_subprocess(
        "--conformance=simq", f"--conformance-replay={match.group(1)}",
        "--conformance-report=clean", "-p", "no:cacheprovider",
    )  # fmt: skip
    assert clean.ret == pytest.ExitCode.OK
    clean.stdout.fnmatch_lines([f"*replay={match.group(1)}*"])
    report = json.loads((pytester.path / "clean.json").read_text())["adapters"]["simq"]
    assert report["guarantees"]["G16"] == {"status": "pass", "runs": 1, "exercised": 1}


def test_a_missing_replay_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--conformance=simq", "--conformance-replay=nope.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--conformance-replay=nope.json: *No such file*"])


def test_a_stored_workload_file_name_is_safe_for_any_adapter_name() -> None:
    """A ``module:object`` adapter name makes no colon in the stored workload's name."""
    from simq_conformance.report import replay_file

    path = replay_file("tinyq.conformance:TinyqAdapter", "G2", WORKLOAD)
    assert path.name == "tinyq.conformance_TinyqAdapter-G2-seed42.json"
    assert Workload.from_json(path.read_text()) == WORKLOAD
