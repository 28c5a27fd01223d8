"""Fault campaigns: plans as data, random plans, explore, shrink, replay (issue 10).

The planted bug: ``pay`` is acks_late and not idempotent; it records its side effect,
then sleeps a second before returning. A worker lost during that second redelivers the
message and the side effect happens twice. A campaign must find it and shrink it to one
crash, as mild and as early as still fails, on a workload of one task.
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import celery
import pytest
from celery.exceptions import Reject

import simq
from simq.campaign import files
from simq.campaign.explore import select_seeds
from simq.campaign.shrink import _plan_moves
from simq.exceptions import InvalidArgument, InvariantViolated

app = celery.Celery("campaign-tests")
EFFECTS: list[int] = []


@app.task(name="campaign.pay", acks_late=True, shared=False)
def pay(order: int) -> int:
    EFFECTS.append(order)
    time.sleep(1.0)  # the receipt: a crash now redelivers an order already paid
    return order


@app.task(name="campaign.pay_once", acks_late=True, shared=False)
def pay_once(order: int) -> int:
    if order not in EFFECTS:  # the fix: idempotent by order id
        EFFECTS.append(order)
    time.sleep(1.0)
    return order


def _orders(task: Any, sim: Any, size: int) -> None:
    EFFECTS.clear()
    for order in range(size):
        task.delay(order)
    sim.run()
    simq.invariants.exactly_once(EFFECTS, expected=range(size), what="payment")


CRASHES = simq.FaultSpace(kinds=("crash",), faults=(1, 3), window=(0.0, 4.0), restart_chance=1.0)


@simq.scenario(app, workers=2, concurrency=2, size=6, faults=CRASHES)
def buggy(sim: Any, size: int) -> None:
    _orders(pay, sim, size)


@simq.scenario(app, workers=2, concurrency=2, size=6, faults=CRASHES)
def fixed(sim: Any, size: int) -> None:
    _orders(pay_once, sim, size)


# -- plans as data -------------------------------------------------------------------


ALL_KINDS = simq.FaultPlan(
    [
        simq.CrashWorker(at=2.0, worker="worker-2", restart_after=5.0),
        simq.KillChild(at=0.5, worker="worker-1", child=1),
        simq.LoseConnection(at=3.0, worker="worker-1", reconnect_after=2.0),
        simq.RestartBroker(at=4.0, down_for=1.0),
        simq.ShutdownWorker(at=9.0, worker="worker-2", warm=False),
        simq.Revoke(at=1.0, nth=3, terminate=True),
    ]
)


def test_a_plan_is_a_sorted_json_value() -> None:
    assert [f.at for f in ALL_KINDS] == [0.5, 1.0, 2.0, 3.0, 4.0, 9.0]
    text = ALL_KINDS.to_json()
    assert simq.FaultPlan.from_json(text) == ALL_KINDS
    assert simq.FaultPlan.from_json(json.loads(text)).to_json() == text
    assert hash(simq.FaultPlan.from_json(text)) == hash(ALL_KINDS)
    assert json.loads(text)[0] == {
        "kind": "kill-child", "at": 0.5, "worker": "worker-1", "child": 1, "exitcode": -9
    }  # fmt: skip


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: simq.CrashWorker(at=-1.0), "CrashWorker(): at must be a number of seconds >= 0"),
        (lambda: simq.CrashWorker(at=1, worker=3), "worker must be a worker name"),
        (lambda: simq.LoseConnection(at=1, reconnect_after=0), "reconnect_after must be"),
        (lambda: simq.ShutdownWorker(at=1, warm="no"), "warm must be True or False"),
        (lambda: simq.Revoke(at=1, nth=-1), "nth must be an int >= 0"),
        (lambda: simq.FaultPlan(["crash"]), "faults must be simq fault values"),
        (lambda: simq.FaultPlan.from_json('[{"kind":"crsh","at":1}]'), "did you mean 'crash'"),
        (lambda: simq.FaultPlan.from_json('[{"kind":"crash","at":1,"wrker":"w"}]'), "wrker"),
        (lambda: simq.FaultPlan.from_json('{"kind":"crash"}'), "expected a JSON list"),
        (lambda: simq.FaultSpace(kinds=("boom",)), "unknown fault kind 'boom'"),
        (lambda: simq.FaultSpace(faults=(3, 1)), "low <= high"),
        (lambda: simq.FaultSpace(window=(0, float("inf"))), "finite"),
    ],
)
def test_bad_plans_are_clear_errors(make: Any, words: str) -> None:
    with pytest.raises(InvalidArgument, match=None) as info:
        make()
    assert words in str(info.value)


def test_apply_records_the_plan_and_fires_each_fault_at_its_time() -> None:
    plan = simq.FaultPlan(
        [
            simq.CrashWorker(at=0.5, worker="worker-2", restart_after=3.0),
            simq.KillChild(at=0.2, worker="worker-1"),
            simq.Revoke(at=0.1, nth=1),
        ]
    )
    EFFECTS.clear()
    with simq.Simulation(app, seed=1, workers=2, concurrency=1) as sim:
        plan.apply(sim)
        results = [pay.delay(n) for n in range(4)]
        sim.run()
        start = sim.started_at
        (recorded,) = sim.history.where(kind="fault-plan")
        assert simq.FaultPlan.from_json(recorded["faults"]) == plan
        crash = sim.history.where(kind="worker-crashed").first()
        assert (crash.worker, crash.time - start, crash["restart_after"]) == ("worker-2", 0.5, 3.0)
        killed = sim.history.where(kind="child-killed").first()
        assert (killed.worker, round(killed.time - start, 6)) == ("worker-1", 0.2)
        revoke = sim.history.where(kind="revoke").first()
        assert (revoke.task_id, round(revoke.time - start, 6)) == (results[1].id, 0.1)


def test_a_fault_with_nothing_to_act_on_is_recorded_as_skipped() -> None:
    plan = simq.FaultPlan(
        [
            simq.KillChild(at=0.0, worker="worker-1"),  # nothing runs yet
            simq.CrashWorker(at=0.0, worker="worker-9"),  # no such worker
            simq.Revoke(at=0.0),  # nothing published yet
        ]
    )
    with simq.Simulation(app, workers=1) as sim:
        plan.apply(sim)
        sim.run()
        skipped = sim.history.where(kind="fault-skipped")
        assert [e["fault"] for e in skipped] == ["kill-child", "crash", "revoke"]
        reasons = " | ".join(e["reason"] for e in skipped)
        assert "no task has been published yet" in reasons
        assert "has no busy child" in reasons
        assert "worker-9" in reasons and "worker-1" in reasons  # names what exists


def test_random_plans_are_a_pure_function_of_the_seed_and_stay_in_bounds() -> None:
    space = simq.FaultSpace(kinds=("crash", "lose-connection"), faults=(2, 4), window=(1, 5))
    plans = [buggy.plan_for(seed) for seed in range(50)]
    assert plans == [buggy.plan_for(seed) for seed in range(50)]
    drawn = [attrs.evolve(buggy, faults=space).plan_for(seed) for seed in range(50)]
    for plan in drawn:
        assert 2 <= len(plan) <= 4
        for fault in plan:
            assert fault.kind in ("crash", "lose-connection")
            assert 1 <= fault.at <= 5 and round(fault.at * 10) == pytest.approx(fault.at * 10)
            assert fault.worker in ("worker-1", "worker-2")  # type: ignore[attr-defined]
    assert len(set(drawn)) > 40


# -- invariants ------------------------------------------------------------------------


def test_the_invariant_helpers_name_what_broke() -> None:
    simq.invariants.exactly_once([1, 2, 3], expected=[1, 2, 3])
    with pytest.raises(InvariantViolated) as info:
        simq.invariants.exactly_once([1, 2, 2], expected=[1, 2, 3], what="charge")
    assert info.value.invariant == "exactly_once(charge)"
    assert str(info.value) == "exactly_once(charge): charge not exactly once: 2 2 times, 3 never"
    with pytest.raises(AssertionError, match="at_most_once"):
        simq.invariants.at_most_once(["a", "a"])
    with pytest.raises(InvariantViolated, match="never happened for 'b'"):
        simq.invariants.at_least_once(["a"], expected=["a", "b"])


def test_all_finished_and_nothing_lost_on_real_runs() -> None:
    EFFECTS.clear()
    with simq.Simulation(app, workers=1) as sim:
        pay.delay(1)
        sim.crash_worker("worker-1", at=0.5)  # never restarts: the message waits for ever
        sim.run()
        simq.invariants.nothing_lost(sim)  # acks_late: back in the queue, not lost
        with pytest.raises(InvariantViolated, match=r"tasks never finished: campaign.pay\["):
            simq.invariants.all_finished(sim)
    early = celery.Celery("campaign-early")

    @early.task(name="campaign.work", shared=False)
    def work() -> None:
        time.sleep(1)

    with simq.Simulation(early, workers=1) as sim:
        work.delay()
        sim.crash_worker("worker-1", at=0.5)  # acked early: lost with its worker
        sim.run()
        with pytest.raises(
            InvariantViolated, match=r"nothing_lost: messages lost: .*worker-crashed"
        ):
            simq.invariants.nothing_lost(sim)


def test_guarantees_reports_the_first_violated_guarantee() -> None:
    class Broken:
        def check(self) -> list[Any]:
            from simq.checkers.base import Violation

            return [Violation("G4", "m1 lost"), Violation("G5", "x")]

    with pytest.raises(InvariantViolated) as info:
        simq.invariants.guarantees(Broken())
    assert (info.value.invariant, str(info.value)) == (
        "G4", "G4: m1 lost (and 1 more violations)"
    )  # fmt: skip


# -- explore and shrink ------------------------------------------------------------------


def test_a_campaign_finds_the_planted_bug_and_shrinks_it_to_one_mild_early_crash() -> None:
    report = simq.explore(buggy, seeds=30)
    assert not report.ok
    (found,) = report.found
    assert found.failure.invariant == "exactly_once(payment)"
    assert len(found.seeds) >= 3 and found.seeds[0] == found.seed
    shrunk = found.shrunk
    assert shrunk.size == 1
    # One crash of the worker holding the only task, as soon as it can matter (the task
    # has started at 0 s) and as mild as possible: back after one grid step.
    assert shrunk.plan == simq.FaultPlan(
        [simq.CrashWorker(at=0.1, worker=shrunk.plan.faults[0].worker, restart_after=0.1)]  # type: ignore[attr-defined]
    )
    assert found.replay.startswith(f"simq replay {__name__}:buggy --seed ")
    assert f"--seed {found.seed} " in found.replay and "--size 1" in found.replay
    assert "FAILED exactly_once(payment)" in str(report) and found.replay in str(report)


def test_the_shrunk_plan_is_1_minimal() -> None:
    found = simq.explore(buggy, seeds=12).found[0]
    best = found.shrunk
    assert best.failure is not None
    for plan in _plan_moves(best.plan):  # no fault can be dropped, made milder or moved
        run = buggy.run(best.seed, plan, best.size)
        assert run.failure is None or run.failure.invariant != best.failure.invariant, plan
    # A run with no fault at all passes: the crash is what causes the double payment.
    assert buggy.run(best.seed, simq.FaultPlan(), best.size).failure is None


def test_shrinking_ten_faults() -> None:
    seed = next(s for s in range(30) if buggy.run(s).failed)
    run = buggy.run(seed)
    noisy = simq.FaultPlan(
        [*run.plan]
        + [
            simq.LoseConnection(at=5.0 + i, worker="worker-1", reconnect_after=1.0)
            for i in range(9)
        ]
    )
    failing = buggy.run(seed, noisy)
    assert failing.failed and len(failing.plan) >= 10
    shrunk = simq.shrink(buggy, failing)
    assert len(shrunk.run.plan) == 1 and shrunk.run.plan.faults[0].kind == "crash"
    assert shrunk.simulations < 200


def test_the_fixed_task_passes_every_seed() -> None:
    report = simq.explore(fixed, seeds=30)
    assert report.ok and len(report.runs) == 30, str(report)
    assert "30 seeds, 0 failed" in str(report)


def test_runs_are_deterministic_across_jobs_and_shards() -> None:
    whole = simq.explore(buggy, seeds=16, shrink=False, digests=True)
    again = simq.explore(buggy, seeds=16, shrink=False, jobs=2, digests=True)
    assert all(len(r.digest) == 64 for r in whole.runs)
    assert [(r.seed, r.digest, r.failure) for r in again.runs] == [
        (r.seed, r.digest, r.failure) for r in whole.runs
    ]
    shards = [
        simq.explore(buggy, seeds=16, shrink=False, shard=f"{k}/3", digests=True).runs
        for k in (1, 2, 3)
    ]
    union = sorted((r.seed, r.digest) for shard in shards for r in shard)
    assert union == sorted((r.seed, r.digest) for r in whole.runs)
    assert select_seeds(10, "2/3") == [1, 4, 7]


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: simq.explore(buggy, seeds=0), "seeds must be an int >= 1"),
        (lambda: simq.explore(buggy, shard="3/2"), "1 <= K <= N"),
        (lambda: simq.explore(buggy, shard="half"), "K/N"),
        (lambda: simq.explore(lambda sim: None), "needs the app"),
        (lambda: simq.explore(buggy, app=app), "is a simq.scenario already"),
        (lambda: simq.scenario(app, seed=3)(lambda sim: None), "seed is the campaign's"),
        (lambda: simq.scenario(app, size=3)(lambda sim: None), "takes no size parameter"),
    ],
)
def test_bad_campaigns_are_clear_errors(call: Any, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        call()
    assert words in str(info.value)


@app.task(name="campaign.poison", acks_late=True, shared=False)
def poison() -> None:
    raise Reject("cannot parse", requeue=True)  # redelivered at once, for ever


@simq.scenario(app, workers=1, faults=simq.FaultSpace(faults=(0, 0)))
def looping(sim: Any) -> None:
    poison.delay()
    sim.run()


def test_a_scenario_that_loops_is_a_failure_that_names_the_loop_not_a_hang() -> None:
    run = looping.run(0)
    assert run.failure is not None and run.failure.invariant == "RunawaySimulation"
    assert "campaign.poison" in run.failure.message
    assert "Traceback" in run.failure.traceback


# -- replay files ----------------------------------------------------------------------


def test_a_failure_file_replays_byte_for_byte(tmp_path: Any) -> None:
    found = simq.explore(buggy, seeds=12).found[0]
    path = files.write_failure(buggy, found, tmp_path, 1)
    record = json.loads(path.read_text())
    assert record["scenario"] == f"{__name__}:buggy"
    assert record["invariant"] == "exactly_once(payment)"
    assert (tmp_path / "failure-1.history.jsonl").read_text().count("\n") > 5
    assert "<html" in (tmp_path / "failure-1.html").read_text().lower()
    scenario, run, _again = files.read_failure(path)
    assert scenario is buggy
    assert run.digest == record["shrunk"]["digest"]
    assert run.failure is not None and run.failure.invariant == record["invariant"]
    assert run.history.to_jsonl() == (tmp_path / "failure-1.history.jsonl").read_text()


def test_a_failure_file_keeps_changed_simulation_settings(tmp_path: Any) -> None:
    wider = attrs.evolve(buggy, simulation={"workers": 3, "concurrency": 1})
    found = simq.explore(wider, seeds=12).found[0]
    path = files.write_failure(wider, found, tmp_path, 1)
    assert json.loads(path.read_text())["simulation"] == {"workers": 3, "concurrency": 1}
    scenario, run, record = files.read_failure(path)
    assert scenario.simulation == {"workers": 3, "concurrency": 1}
    assert run.digest == record["shrunk"]["digest"]
