"""The ``simq`` command line: explore, replay, show and the demo campaign.

A scenario module with a planted bug (a non-idempotent ``acks_late`` task, a crash
between its effect and its ack) is written to ``tmp_path``; the commands run on it in
process (``simq.cli.main``) and, twice, as a real ``python -m simq.cli`` subprocess.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simq.cli import main

PLANTED = '''
"""A planted bug: pay() is acks_late and not idempotent."""
import time

import celery

import simq

app = celery.Celery("planted")
PAID = []


@app.task(name="planted.pay", acks_late=True)
def pay(n):
    PAID.append(n)
    time.sleep(1.0)


@simq.scenario(
    app,
    workers=2,
    size=4,
    faults=simq.FaultSpace(kinds=("crash",), faults=(1, 1), window=(0.0, 4.0)),
)
def planted(sim, size):
    PAID.clear()
    for n in range(size):
        pay.delay(n)
    sim.run()
    simq.invariants.exactly_once(PAID, expected=range(size), what="payment")


@simq.scenario(app, workers=2, faults=simq.FaultSpace(kinds=("crash",), faults=(0, 0)))
def fine(sim):
    PAID.clear()
    pay.delay(1)
    sim.run()
'''
MODULE = "simq_cli_planted"
REF = f"{MODULE}:planted"


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder holding the planted scenario module, made the current folder."""
    (tmp_path / f"{MODULE}.py").write_text(PLANTED, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield tmp_path
    sys.modules.pop(MODULE, None)


def _replay_words(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.strip().startswith("replay: "))
    return shlex.split(line.split("replay: ", 1)[1])


def _sha(output: str) -> str:
    match = re.search(r"sha256 ([0-9a-f]{64})", output)
    assert match, output
    return match[1]


def _failing_seeds(output: str) -> set[int]:
    match = re.search(r"^FAILED \S+ on seed \d+ \(\d+ seeds?: ([\d, ]+)\)", output, re.M)
    assert match, output
    return {int(s) for s in match[1].split(", ")}


def test_explore_finds_the_planted_bug_and_prints_its_replay(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explore", REF, "--seeds", "6", "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAILED exactly_once(payment)" in out
    assert "seeds run: 0-5" in out
    words = _replay_words(out)
    assert words[:3] == ["simq", "replay", REF]
    # The printed line reruns the shrunk failure.
    assert main(words[1:]) == 1
    assert "FAILED exactly_once(payment)" in capsys.readouterr().out


def test_explore_out_writes_the_three_files_and_replay_says_identical(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explore", REF, "--seeds", "4", "--jobs", "1", "--out", "found"]) == 1
    out = capsys.readouterr().out
    files = sorted(p.name for p in (planted / "found").iterdir())
    assert files == ["failure-1.history.jsonl", "failure-1.html", "failure-1.json"]
    assert "replay: simq replay found/failure-1.json" in out
    record = json.loads((planted / "found" / "failure-1.json").read_text())

    assert main(["replay", "found/failure-1.json"]) == 1
    replayed = capsys.readouterr().out
    assert f"identical history: yes (sha256 {record['shrunk']['digest']})" in replayed
    assert "FAILED exactly_once(payment)" in replayed


def test_replay_of_a_file_whose_history_changed_exits_3(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explore", REF, "--seeds", "4", "--jobs", "1", "--out", "found"]) == 1
    path = planted / "found" / "failure-1.json"
    record = json.loads(path.read_text())
    record["shrunk"]["digest"] = "0" * 64
    path.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["replay", str(path)]) == 3
    assert "identical history: NO" in capsys.readouterr().out


def test_shards_cover_every_seed(planted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["explore", REF, "--seeds", "8", "--jobs", "1", "--no-shrink"])
    whole = _failing_seeds(capsys.readouterr().out)
    seen: set[int] = set()
    failing: set[int] = set()
    for shard in ("1/2", "2/2"):
        main(["explore", REF, "--seeds", "8", "--jobs", "1", "--no-shrink", "--shard", shard])
        out = capsys.readouterr().out
        ran = re.search(r"^seeds run: (.*?) \(shard", out, re.M)
        assert ran, out
        seen |= {int(s) for s in ran[1].split(", ")}
        failing |= _failing_seeds(out)
    assert seen == set(range(8))
    assert failing == whole


def test_explore_with_nothing_failing_exits_0(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explore", f"{MODULE}:fine", "--seeds", "2", "--jobs", "1"]) == 0
    assert "2 seeds, 0 failed" in capsys.readouterr().out


def test_fault_space_options_reach_the_plans(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["explore", REF, "--seeds", "3", "--jobs", "1", "--no-shrink"]
    main([*args, "--kinds", "lose-connection", "--faults", "2-2", "--window", "1-1.5"])
    out = capsys.readouterr().out
    plans = re.findall(r"^  plan:   (.*)$", out, re.M)
    for plan in plans:
        assert plan.count("lose-connection at 1") == 2, plan


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explore", REF, "--seeds", "0"], "argument --seeds: must be at least 1, got 0"),
        (["explore", REF, "--jobs", "x"], "argument --jobs: expected a whole number"),
        (["explore", REF, "--shard", "3/2"], "shard K/N needs 1 <= K <= N, got 3/2"),
        (["explore", REF, "--kinds", "crsh"], "did you mean 'crash'?"),
        (["explore", REF, "--faults", "3-1"], "argument --faults: LOW-HIGH needs LOW <= HIGH"),
        (["explore", "no_such_module_xyz:s"], "cannot import module 'no_such_module_xyz'"),
        (["explore", "no_colon"], "name it as MODULE:NAME"),
        (["replay", REF, "--seed", "1", "--plan", "{"], "argument --plan: not JSON"),
        (["replay", REF], "give --seed S"),
        (["show", "missing.jsonl"], "cannot read missing.jsonl"),
        (["demo", "--workers", "1"], "use --workers 2 or more"),
        (["demo", "--orders", "0"], "argument --orders: must be at least 1, got 0"),
        (["demo", "--concurrency", "-1"], "argument --concurrency: must be at least 1, got -1"),
        (["demo", "--seeds", "-3"], "argument --seeds: must be at least 1, got -3"),
    ],
)
def test_bad_options_exit_2_with_one_clear_line(
    planted: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = int(exit_.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"simq {argv[0]}: error: "), err
    assert message in last
    assert "Traceback" not in err


def test_show_prints_the_timeline_and_writes_html(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = '[{"kind":"crash","at":0.1,"worker":"worker-1","restart_after":0.1}]'
    argv = ["replay", REF, "--seed", "1", "--plan", plan, "--size", "1"]
    assert main([*argv, "--history", "run.jsonl", "--html", "run.html", "--timeline"]) == 1
    replayed = capsys.readouterr().out
    assert "simq timeline:" in replayed
    assert (planted / "run.html").read_text().startswith("<!")
    assert main(["show", "run.jsonl"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("simq timeline:") and "worker-crashed worker-1" in shown
    assert main(["show", "run.jsonl", "--html", "shown.html"]) == 0
    assert "planted.pay" in (planted / "shown.html").read_text()


def test_demo_finds_the_double_charge_and_its_replay_reproduces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "FAILED exactly_once(charge)" in out
    assert re.search(r"^double charge: order \d+ was charged 2 times", out, re.M), out
    assert "the crash, after shrinking: crash at" in out
    assert (tmp_path / "simq-demo.html").exists()
    words = _replay_words(out)
    assert words[:2] == ["simq", "replay"]
    assert main(words[1:]) == 1
    assert _sha(capsys.readouterr().out) == _sha(out)


def test_demo_replay_carries_settings_that_differ_from_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--workers", "2", "--seeds", "6", "--jobs", "1", "--html", "two.html"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "double charge: order" in out
    words = _replay_words(out)
    assert words[:3] == ["simq", "demo", "--replay"]
    assert words[words.index("--workers") + 1] == "2"
    # Run the printed command as a user would, in a process of its own.
    result = subprocess.run(
        [sys.executable, "-m", "simq.cli", *words[1:]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert _sha(result.stdout) == _sha(out)


def test_explore_and_replay_in_a_subprocess(planted: Path) -> None:
    cmd = [sys.executable, "-m", "simq.cli"]
    found = subprocess.run(
        [*cmd, "explore", REF, "--seeds", "4", "--jobs", "2", "--out", "out", "--progress"],
        capture_output=True,
        text=True,
        check=False,
        cwd=planted,
    )
    assert found.returncode == 1, found.stderr
    assert "seeds: 100%" in found.stderr  # the bar, drawn although stderr is a pipe
    assert "shrinking:" in found.stderr
    replay = subprocess.run(
        [*cmd, "replay", "out/failure-1.json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=planted,
    )
    assert replay.returncode == 1, replay.stderr
    assert "identical history: yes" in replay.stdout
