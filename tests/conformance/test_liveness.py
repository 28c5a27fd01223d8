"""Liveness (L1, L2), coverage by construction and recorder completeness (issue 11).

Fast: the simulator, doctored histories and a planted broken transport that loses
every unacked message of a killed worker (it used to pass G4: its runs never finished,
and a run that never finished counted as a pass).
"""

from __future__ import annotations

import re

import attrs
import pytest

from simq.checkers.index import index_of
from simq.history import Event, History
from simq_conformance import (
    BaseAdapter,
    Capabilities,
    Deviation,
    Fault,
    ProbeCall,
    RunResult,
    RunSettings,
    Workload,
)
from simq_conformance.adapters.simq_adapter import SimqAdapter
from simq_conformance.campaign import run_campaign
from simq_conformance.coverage import TARGET, aimed_workload
from simq_conformance.properties import (
    ADAPTER_ERROR,
    FAIL,
    GUARANTEES,
    NOT_APPLICABLE,
    NOT_EXERCISED,
    PASS,
    check_run,
)
from simq_conformance.report import to_json, to_markdown
from simq_conformance.session import ConformanceSession

#: Two acks_late sleeps on two workers; worker-1 is killed while it runs one.
KILLED = Workload(
    RunSettings(workers=2, conf={"task_acks_late": True}),
    calls=(ProbeCall("sleep", (1.0,), key="c1"), ProbeCall("sleep", (1.0,), key="c2")),
    faults=(Fault("kill_worker", 0.5, 0),),
    seed=3,
)


class LosesUnacked(BaseAdapter):
    """A planted broken transport: a killed worker's unacked messages vanish.

    Like a real deployment on such a broker, the run never drains: it is cut at the
    30 s deadline (``complete=False``), unless ``drains`` (an adapter that believes
    the broker is empty once it lost them).
    """

    def __init__(self, drains: bool = False) -> None:
        self.inner = SimqAdapter()
        self.drains = drains
        self.capabilities = attrs.evolve(self.inner.capabilities, adapter="loses-unacked")

    def run(self, workload: Workload) -> RunResult:
        result = self.inner.run(workload)
        idx = index_of(result.history)
        gone: dict[str | None, int] = {}  # task id -> index of the crash that lost it
        for i, e in idx.faults:
            if e.kind == "worker-crashed":
                for d in idx.by_worker.get(e.worker or "", []):
                    if d.unacked_at(i):
                        gone.setdefault(d.task_id, i)
        events = [
            e for i, e in enumerate(idx.events) if not (e.task_id in gone and i > gone[e.task_id])
        ]
        if not gone or self.drains:
            return attrs.evolve(result, history=History(events))
        return attrs.evolve(
            result,
            history=History(events),
            complete=False,
            notes=("timed out after 30.0 s; unsettled calls: ...",),
        )


# -- L1: every run finishes ------------------------------------------------------------


def test_an_unfinished_run_fails_l1_naming_the_task_and_its_last_events() -> None:
    """L1 names each unfinished task and its last events in relative seconds."""
    result = LosesUnacked().run(KILLED)
    verdicts = check_run(result)
    l1 = verdicts["L1"]
    assert l1.status == FAIL
    messages = [v.message for v in l1.violations]
    assert len(messages) == 1, messages
    assert re.fullmatch(
        r"task c[12] \(probes\.sleep, id [0-9a-f-]+\): published \+0\.0 s, "
        r"delivered to worker-1 \+0\.0 s, started on worker-1 \+0\.0 s, "
        r"worker-1 killed \+0\.5 s, worker-1 online \+1\.5 s, never redelivered within 30 s",
        messages[0],
    ), messages[0]


def test_l1_counts_the_wait_to_when_the_adapter_stopped_the_run() -> None:
    """An adapter that says when it stopped an incomplete run (RunResult.stopped_at)
    gets that wait in L1's message, not the time to the run's last event."""
    result = LosesUnacked().run(KILLED)
    t0 = min(e.time for e in result.history if e.kind == "published")
    stopped = attrs.evolve(result, notes=(), stopped_at=t0 + 12.0)
    messages = [v.message for v in check_run(stopped)["L1"].violations]
    assert messages and messages[0].endswith("never redelivered within 12 s"), messages
    unsaid = attrs.evolve(result, notes=())
    last = max(e.time for e in result.history) - t0
    messages = [v.message for v in check_run(unsaid)["L1"].violations]
    assert messages[0].endswith(f"never redelivered within {last:.0f} s"), messages


def test_a_complete_run_passes_l1_and_l2_and_every_run_exercises_l1() -> None:
    """The simulator's run of the same workload finishes and loses nothing."""
    verdicts = check_run(SimqAdapter().run(KILLED))
    assert (verdicts["L1"].status, verdicts["L2"].status) == (PASS, PASS)
    assert verdicts["L1"].exercised and verdicts["L2"].exercised


# -- L2: nothing lost ------------------------------------------------------------------


@pytest.mark.parametrize("drains", [False, True])
def test_the_planted_transport_that_loses_unacked_messages_fails(drains: bool) -> None:
    """Losing a killed worker's unacked messages fails L2 (and G4 once the run drains)."""
    verdicts = check_run(LosesUnacked(drains=drains).run(KILLED))
    assert verdicts["L2"].status == FAIL
    (lost,) = verdicts["L2"].violations
    assert re.search(
        r"held by worker-1 unacked was taken back by worker-1 killed \+0\.5 s and never "
        r"delivered again (within 30 s|although the run drained): the transport lost it$",
        lost.message,
    ), lost.message
    assert verdicts["G4"].status == (FAIL if drains else PASS)
    assert verdicts["L1"].status == (PASS if drains else FAIL)


def test_the_planted_transport_fails_its_campaign() -> None:
    """On the campaign the planted transport fails L1 and L2, where it used to pass."""
    campaign = run_campaign("loses-unacked", LosesUnacked(), examples=10, shrink=False)
    assert campaign.summaries["L1"].status == FAIL
    assert campaign.summaries["L2"].status == FAIL
    assert campaign.timed_out, "the timed-out runs are listed"
    markdown = to_markdown([campaign])
    assert re.search(
        rf"\| loses-unacked \| amqp \| 10 \| 10 \| \d+ \| {len(campaign.timed_out)} \(seeds "
        + re.escape(", ".join(map(str, campaign.timed_out))),
        markdown,
    )
    data = to_json([campaign])["adapters"]["loses-unacked"]
    assert data["timed_out"] == {"count": len(campaign.timed_out), "seeds": campaign.timed_out}


def _with_loss(reason: str) -> RunResult:
    """A run of one call whose message the broker drops before any worker takes it."""
    result = SimqAdapter().run(Workload(calls=(ProbeCall("ret", (1,), key="c1"),), seed=1))
    pub = next(e for e in result.history if e.kind == "published")
    lost = Event("lost", pub.time + 0.1, pub.task_id, pub.message_id, None, {"reason": reason})
    return attrs.evolve(result, history=History([pub, lost]))


def test_a_lost_message_fails_l2_unless_the_transport_declares_it() -> None:
    """A message the broker recorded lost fails L2; a declared deviation makes L2 n/a."""
    result = _with_loss("discarded")
    l2 = check_run(result)["L2"]
    assert l2.status == FAIL
    assert re.search(
        r"message m1 of task [0-9a-f-]+ \(probes\.ret\) was lost at \+0\.1 s \(discarded\)",
        l2.violations[0].message,
    )
    caps = attrs.evolve(
        result.capabilities, deviations=(Deviation("L2", "the broker keeps nothing on disk"),)
    )
    declared = check_run(attrs.evolve(result, capabilities=caps))["L2"]
    assert declared.status == NOT_APPLICABLE
    assert declared.reason.endswith(
        "documented deviation from L2: the broker keeps nothing on disk"
    )


def test_an_expired_message_ends_and_an_early_acked_task_lost_with_its_worker_is_no_loss() -> None:
    """Expired (dropped at its TTL) is an end; an early-acked task killed with its worker
    ended acked: Celery's documented behaviour (§3.1), not a lost message."""
    assert check_run(_with_loss("expired"))["L2"].status == PASS
    early = attrs.evolve(KILLED, settings=RunSettings(workers=2, conf={"task_acks_late": False}))
    result = SimqAdapter().run(early)
    assert "lost" in result.history.kinds()  # lost [worker-crashed]: the attempt's loss
    assert check_run(result)["L2"].status == PASS


# -- coverage by construction --------------------------------------------------------


def test_exercised_means_the_premise_happened() -> None:
    """A kill of a worker holding nothing unacked does not exercise G4."""
    idle = Workload(
        RunSettings(workers=2),
        calls=(ProbeCall("ret", (1,), key="c1"),),
        faults=(Fault("kill_worker", 1.5, 0),),
        seed=2,
    )
    result = SimqAdapter().run(idle)
    assert "worker-crashed" in result.history.kinds()
    verdicts = check_run(result)
    assert verdicts["G4"].status == PASS and not verdicts["G4"].exercised
    assert check_run(SimqAdapter().run(KILLED))["G4"].score == 1


def test_the_campaign_exercises_every_guarantee_on_the_simulator() -> None:
    """Aimed runs bring every applicable guarantee to the target, even from 3 examples."""
    campaign = run_campaign("simq", SimqAdapter(), examples=3)
    short = {n: s.exercised for n, s in campaign.summaries.items() if s.exercised < TARGET}
    assert short == {}
    assert {s.status for s in campaign.summaries.values()} == {PASS}
    assert (
        campaign.aimed <= campaign.aim_budget and campaign.total == campaign.runs + campaign.aimed
    )


def test_an_aimed_workload_fits_the_capabilities() -> None:
    """Aimed workloads use only what the adapter has, and combine compatible parts."""
    import random

    caps = Capabilities("mine", "amqp", faults=frozenset({"kill_worker"}), time_limits=False)
    built = aimed_workload(["G4", "G11", "G8", "G16"], caps, random.Random(0))
    assert built is not None
    workload, aims = built
    assert aims == ("G4", "G8", "G16")  # G11 needs time limits
    assert {f.kind for f in workload.faults} == {"kill_worker"}
    assert workload.settings.workers == 2 and workload.settings.conf["task_acks_late"]


def test_aimed_faults_wait_for_a_polling_transports_first_poll() -> None:
    """On Celery's synchronous loop a worker sees a message only at its next poll (up to
    a second later): a fault aimed at a running task comes that much later; a revoke
    aimed before an ETA does not move."""
    import random

    from simq_conformance.coverage import POLL_LAG

    kinds = frozenset({"warm_shutdown", "revoke"})
    event_loop = Capabilities("mine", "memory", faults=kinds)
    polling = attrs.evolve(event_loop, sync_loop=True)
    times = {}
    for caps in (event_loop, polling):
        for aim in ("G17", "G10"):
            built = aimed_workload([aim], caps, random.Random(0))
            assert built is not None
            times[caps.sync_loop, aim] = [f.at for f in built[0].faults]
    assert times[True, "G17"] == [at + POLL_LAG for at in times[False, "G17"]]
    assert times[True, "G10"] == times[False, "G10"]


def _limited() -> SimqAdapter:
    adapter = SimqAdapter()
    adapter.capabilities = attrs.evolve(
        adapter.capabilities, adapter="limited", faults=frozenset({"kill_child", "restart_broker"})
    )
    return adapter


def test_a_guarantee_never_exercised_is_not_a_pass() -> None:
    """With no run aimed at it, G14's premise (a redelivered task that already succeeded)
    does not happen in these few workloads: not exercised, no verdict."""
    campaign = run_campaign("limited", _limited(), examples=5, aim=0)
    g14 = campaign.summaries["G14"]
    assert (g14.status, g14.exercised) == (NOT_EXERCISED, 0)
    assert f"| G14 deduplicating successful tasks (opt-in) | not exercised (0/{g14.runs}) |" in (
        to_markdown([campaign])
    )


@pytest.mark.parametrize("strict", [False, True])
def test_strict_fails_a_guarantee_never_exercised(strict: bool) -> None:
    """Not exercised is an xfail labelled "not exercised (0/N)"; strict fails it."""
    session = ConformanceSession(
        {"limited": _limited()}, examples=5, seed=0, ci=False, defaults=(5, 5), strict=strict
    )
    # The campaign the session would run, without the runs aimed at coverage.
    session.campaigns["limited"] = run_campaign("limited", _limited(), examples=5, aim=0)
    outcome = pytest.fail.Exception if strict else pytest.xfail.Exception
    with pytest.raises(
        outcome, match=r"G14 on limited: not exercised \(0/\d+\): no run had a task"
    ):
        session.check_guarantee("limited", "G14")
    session.check_guarantee("limited", "G3")  # exercised: passes


# -- recorder completeness -------------------------------------------------------------


def test_a_delivery_without_a_publication_is_an_adapter_error() -> None:
    """A history missing a publication cannot be judged: every verdict is an adapter error."""
    result = SimqAdapter().run(Workload(calls=(ProbeCall("ret", (1,), key="c1"),), seed=1))
    doctored = attrs.evolve(
        result, history=History(e for e in result.history if e.kind != "published")
    )
    verdicts = check_run(doctored)
    assert {v.status for v in verdicts.values()} == {ADAPTER_ERROR}
    assert re.fullmatch(
        r"message m1 of task [0-9a-f-]+ was delivered to worker-1 at \+0\.0 s but its "
        r"publication was not recorded",
        verdicts["G1"].violations[0].message,
    )


class Ackless(SimqAdapter):
    """Records no acks, yet reports its runs complete (a broken recorder)."""

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = attrs.evolve(self.capabilities, adapter="ackless")

    def run(self, workload: Workload) -> RunResult:
        result = super().run(workload)
        return attrs.evolve(result, history=History(e for e in result.history if e.kind != "acked"))


def test_a_message_without_an_end_in_a_complete_run_is_an_adapter_error() -> None:
    """The campaign reports an adapter error, and the guarantee's test fails naming it."""
    campaign = run_campaign("ackless", Ackless(), examples=3, aim=0)
    assert campaign.summaries["G1"].status == ADAPTER_ERROR
    errors = campaign.adapter_error_runs
    assert errors >= 1 and campaign.summaries["G1"].adapter_errors == errors
    assert f"**ADAPTER ERROR** ({errors}/3 runs" in to_markdown([campaign])
    session = ConformanceSession(
        {"ackless": Ackless()}, examples=3, seed=0, ci=False, defaults=(3, 3)
    )
    session.campaigns["ackless"] = campaign
    with pytest.raises(
        pytest.fail.Exception, match=rf"(?s)ADAPTER ERROR in {errors} of 3 runs.*has no end"
    ):
        session.check_guarantee("ackless", "G1")


def test_every_guarantee_has_a_premise_and_liveness_is_judged() -> None:
    """L1 and L2 are guarantees like the others, with premises."""
    assert list(GUARANTEES)[-2:] == ["L1", "L2"]
    caps = SimqAdapter().capabilities
    result = SimqAdapter().run(KILLED)
    idx = index_of(result.history)
    from simq_conformance.properties import config_for

    config = config_for(result)
    assert all(g.premise(idx, config) >= 0 for g in GUARANTEES.values())
    assert caps.simulated
