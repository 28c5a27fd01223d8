"""Tests for simq.campaign.pytest: campaigns as pytest tests, their options and replay."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

import simq

pytest_plugins = ["pytester"]

#: A planted bug: the charge is recorded before the task's one-second sleep, and the task
#: acks late, so a worker crash during the sleep redelivers it and charges twice.
BUGGY = """
import time

import celery
import pytest

import simq
from simq.campaign.pytest import campaign

app = celery.Celery("shop", set_as_current=False)
CHARGED = []


@app.task(name="shop.charge", acks_late=True, shared=False)
def charge(order):
    CHARGED.append(order)
    time.sleep(1)


CRASHES = simq.FaultSpace(kinds=("crash",), faults=(0, 2), window=(0, 3))


def charges(sim, size):
    CHARGED.clear()
    for order in range(size):
        charge.delay(order)
    sim.run()
    simq.invariants.exactly_once(CHARGED, range(size), what="charge")
"""

#: The bug fixed: the charge is idempotent, so every run passes.
HEALTHY = BUGGY.replace(
    "    CHARGED.append(order)", "    if order not in CHARGED:\n        CHARGED.append(order)"
)


def campaign_file(pytester: pytest.Pytester, decorator: str, source: str = BUGGY) -> None:
    """test_shop.py: ``test_charges``, the scenario under ``decorator``."""
    pytester.makepyfile(
        test_shop=source
        + f"""

{decorator}
@simq.scenario(app, workers=2, size=4, faults=CRASHES)
def test_charges(sim, size):
    charges(sim, size)
"""
    )


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest in process; Hypothesis's plugin is left out, as it re-imports slowly."""
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)


def ran(pytester: pytest.Pytester, *args: str) -> dict[str, dict[str, Any]]:
    """What each campaign item ran (its ``simq_campaign`` user property), by node id."""
    recorder = pytester.inline_run("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)
    out: dict[str, dict[str, Any]] = {}
    for report in recorder.getreports("pytest_runtest_logreport"):
        for name, value in report.user_properties:
            if name == "simq_campaign":
                assert isinstance(value, dict)
                out[report.nodeid] = value
    return out


def replay_args(output: str) -> list[str]:
    """The arguments of the one replay command in ``output`` (after ``python -m pytest``)."""
    commands = re.findall(r"replay: (python -m pytest .*)$", output, flags=re.MULTILINE)
    assert len(set(commands)) == 1, output  # CI=true: the short summary repeats it
    words = shlex.split(commands[0])
    assert words[:3] == ["python", "-m", "pytest"]
    return words[3:]


def test_planted_bug_fails_with_the_report_and_one_replay_command(
    pytester: pytest.Pytester,
) -> None:
    """The campaign fails: invariant, first seed, plan, shrunk plan and a pytest command."""
    campaign_file(pytester, "@campaign(seeds=6)")
    result = run(pytester)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "E   AssertionError: simq campaign failed: test_shop:test_charges: 6 seeds, * failed, 1 distinct",
            "*FAILED exactly_once(charge) on seed *",
            "*exactly_once(charge): charge not exactly once: *2 times*",
            "*plan:   crash at *",
            "*shrunk: crash at * (worker='worker-*', *), size * (from 4) (* simulations)",
        ]
    )
    args = replay_args(out)
    assert args[0] == "test_shop.py::test_charges"
    assert args[1].startswith('--simq-replay={"seed":')
    # The shrunk plan: one crash (1-minimal), and the run's own size.
    assert args[1].count('"kind":"crash"') == 1


def test_replay_command_reproduces_the_shrunk_failure(pytester: pytest.Pytester) -> None:
    """Running the printed command reruns only that run, failing the same way."""
    campaign_file(pytester, "@campaign(seeds=6)")
    first = run(pytester)
    failure = re.search(r"^\s+(exactly_once\(charge\): .*)$", first.stdout.str(), re.MULTILINE)
    assert failure is not None
    args = replay_args(first.stdout.str())
    replayed = run(pytester, *args)
    replayed.assert_outcomes(failed=1)
    replayed.stdout.fnmatch_lines(
        [
            f"E   AssertionError: simq replay failed: {failure[1]}",
            "*seed *, size *; plan: crash at *",
            "*history: simq timeline: * tasks, * attempts*",
            "*Captured simq timeline call*",
        ]
    )
    assert "seeds," not in replayed.stdout.str()  # no campaign ran
    # The replay prints the same command again: it is stable.
    assert replay_args(replayed.stdout.str()) == args


def test_replay_of_a_fixed_bug_passes(pytester: pytest.Pytester) -> None:
    """A replayed run that no longer fails passes: the check after a fix."""
    campaign_file(pytester, "@campaign(seeds=6)", source=HEALTHY)
    plan = '[{"kind":"crash","at":0.1,"worker":"worker-1"}]'
    result = run(pytester, f'--simq-replay={{"seed":2,"plan":{plan},"size":2}}')
    result.assert_outcomes(passed=1)


def test_seeds_option_and_ini_override_the_campaign_count(pytester: pytest.Pytester) -> None:
    """--simq-seeds=N (else ini simq_seeds) sets how many seeds every campaign runs."""
    campaign_file(pytester, "@campaign(seeds=6)", source=HEALTHY)
    result = run(pytester, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_shop:test_charges: 6 seeds, 0 failed"])
    result = run(pytester, "-rA", "--simq-seeds=3")
    result.stdout.fnmatch_lines(["test_shop:test_charges: 3 seeds, 0 failed"])
    assert ran(pytester, "--simq-seeds", "9")["test_shop.py::test_charges"]["seeds"] == list(
        range(9)
    )
    pytester.makeini("[pytest]\nsimq_seeds = 4\n")
    result = run(pytester, "-rA")
    result.stdout.fnmatch_lines(["test_shop:test_charges: 4 seeds, 0 failed"])
    result = run(pytester, "-rA", "--simq-seeds=2")
    result.stdout.fnmatch_lines(["test_shop:test_charges: 2 seeds, 0 failed"])


def test_shard_option_slices_partition_the_seeds(pytester: pytest.Pytester) -> None:
    """--simq-shard=K/3 for K=1..3: the slices' union is the whole campaign, failures too."""
    campaign_file(pytester, "@campaign(seeds=8)")
    whole = ran(pytester)["test_shop.py::test_charges"]
    assert whole["seeds"] == list(range(8))
    assert whole["failed"]
    seeds: list[int] = []
    failed: list[int] = []
    for k in (1, 2, 3):
        part = ran(pytester, f"--simq-shard={k}/3")["test_shop.py::test_charges"]
        assert part["seeds"] == list(range(k - 1, 8, 3))
        seeds += part["seeds"]
        failed += part["failed"]
    assert sorted(seeds) == whole["seeds"]
    assert sorted(failed) == whole["failed"]
    result = run(pytester, "--simq-shard=2/3")
    result.stdout.fnmatch_lines(["*test_shop:test_charges: 3 seeds, * (shard 2/3: seeds 1, 4, 7)"])


def test_shards_run_the_same_runs_as_the_whole_campaign(pytester: pytest.Pytester) -> None:
    """Shard by shard, every seed's run has the same history (digest) as unsharded."""
    pytester.makepyfile(
        shop=BUGGY
        + """

@simq.scenario(app, workers=2, size=4, faults=CRASHES)
def scenario(sim, size):
    charges(sim, size)
"""
    )
    pytester.syspathinsert()
    import shop  # type: ignore[import-not-found]

    def digests(shard: str | None) -> dict[int, str]:
        report = simq.explore(shop.scenario, 8, shard=shard, shrink=False, digests=True)
        return {run.seed: run.digest for run in report.runs}

    whole = digests(None)
    assert len(set(whole.values())) == 8  # every seed its own history
    parts = [digests(f"{k}/3") for k in (1, 2, 3)]
    assert sorted(seed for part in parts for seed in part) == list(range(8))
    assert {seed: d for part in parts for seed, d in part.items()} == whole


def test_shards_parametrize_one_item_per_slice(pytester: pytest.Pytester) -> None:
    """shards=3 makes 3 items, shard1of3 to shard3of3, that together run every seed."""
    campaign_file(pytester, "@campaign(seeds=7, shards=3)", source=HEALTHY)
    result = run(pytester, "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "test_shop.py::test_charges[shard1of3]",
            "test_shop.py::test_charges[shard2of3]",
            "test_shop.py::test_charges[shard3of3]",
            "3 tests collected*",
        ]
    )
    items = ran(pytester)
    assert sorted(items) == [f"test_shop.py::test_charges[shard{k}of3]" for k in (1, 2, 3)]
    assert items["test_shop.py::test_charges[shard2of3]"]["seeds"] == [1, 4]
    union = sorted(seed for item in items.values() for seed in item["seeds"])
    assert union == list(range(7))
    wider = ran(pytester, "--simq-seeds=10", "-k", "shard1of3")
    assert wider["test_shop.py::test_charges[shard1of3]"]["seeds"] == [0, 3, 6, 9]


def test_sharded_failure_replays_its_own_item(pytester: pytest.Pytester) -> None:
    """A failing shard names its own item in the replay command."""
    campaign_file(pytester, "@campaign(seeds=6, shards=2)")
    result = run(pytester)
    result.assert_outcomes(failed=2)
    commands = re.findall(r"replay: python -m pytest (\S+)", result.stdout.str())
    assert sorted(set(commands)) == [  # CI=true: the short summary repeats them
        "'test_shop.py::test_charges[shard1of2]'",
        "'test_shop.py::test_charges[shard2of2]'",
    ]


def test_marker_form_and_marker_selection(pytester: pytest.Pytester) -> None:
    """@pytest.mark.simq_campaign(...) on a scenario is a campaign; -m selects campaigns."""
    campaign_file(pytester, "@pytest.mark.simq_campaign(seeds=3)", source=HEALTHY)
    pytester.makepyfile(
        test_other="""
from simq.campaign.pytest import campaign
from test_shop import app, charges, CRASHES
import simq

@campaign(seeds=2)
@simq.scenario(app, workers=2, size=2, faults=CRASHES)
def test_decorated(sim, size):
    charges(sim, size)

def test_plain():
    pass
"""
    )
    result = run(pytester, "-rA", "-m", "simq_campaign")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines_random(
        [
            "test_shop:test_charges: 3 seeds, 0 failed",
            "test_other:test_decorated: 2 seeds, 0 failed",
        ]
    )
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.simq_campaign(seeds=20, shards=1, shrink=True): *"])


def test_marker_on_a_plain_test_is_an_error(pytester: pytest.Pytester) -> None:
    """The marker on a function that is not a scenario says where it belongs."""
    pytester.makepyfile(
        """
import pytest

@pytest.mark.simq_campaign(seeds=3)
def test_plain():
    pass
"""
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*InvalidArgument*marks a simq scenario*@simq.scenario(*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--simq-shard=4/3"],
            "*simq: --simq-shard: shard K/N needs 1 <= K <= N, got 4/3; *--simq-shard=2/4*",
        ),
        (["--simq-shard=half"], "*simq: --simq-shard: shard must look like K/N*"),
        (
            ["--simq-seeds", "0"],
            "*simq: --simq-seeds must be a number of seeds >= 1, got '0'; e.g. --simq-seeds=200*",
        ),
        (["--simq-seeds=many"], "*--simq-seeds must be a number of seeds >= 1, got 'many'*"),
        (["--simq-replay={oops"], "*simq: --simq-replay: not JSON*failed campaign printed*"),
        (
            ['--simq-replay={"seed":1}'],
            "*--simq-replay: expected a JSON object with seed, plan and size*",
        ),
        (
            ['--simq-replay={"seed":1,"plan":[{"kind":"crush","at":1}]}'],
            "*FaultPlan.from_json(): unknown fault*'crush'*",
        ),
    ],
)
def test_bad_options_are_usage_errors_saying_the_fix(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    """A bad campaign option stops the run before collection, naming the fix."""
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_bad_ini_seeds_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """ini simq_seeds = 0 is refused like the option, naming the ini setting."""
    pytester.makeini("[pytest]\nsimq_seeds = 0\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini simq_seeds must be a number of seeds >= 1, got '0'*"])


@pytest.mark.parametrize(
    ("decorator", "message"),
    [
        (
            "@campaign(seeds=3)\ndef",
            "*InvalidArgument: simq.campaign_test() goes on a simq scenario, got *; put @simq.scenario(app, workers=3) directly below it*",
        ),
        (
            "@campaign\n@simq.scenario(app)\ndef",
            "*InvalidArgument: simq.campaign_test(): call the decorator, with parentheses*",
        ),
        (
            "@campaign(seeds=0)\n@simq.scenario(app)\ndef",
            "*InvalidArgument: simq.campaign_test(): seeds must be an int >= 1, got 0*",
        ),
    ],
)
def test_decorator_misuse_is_a_collection_error(
    pytester: pytest.Pytester, decorator: str, message: str
) -> None:
    """The decorator on a plain function, without parentheses or with 0 seeds says so."""
    pytester.makepyfile(test_shop=BUGGY + f"\n\n{decorator} test_charges(sim):\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])


def test_empty_shard_is_skipped(pytester: pytest.Pytester) -> None:
    """More shards than seeds: the shards with no seed skip, saying why."""
    campaign_file(pytester, "@campaign(seeds=2, shards=3)", source=HEALTHY)
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        ["*simq: no seed falls in this slice of the campaign (shard 3/3 of the test)"]
    )
