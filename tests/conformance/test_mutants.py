"""Mutation testing of the conformance suite: every planted bug must be caught.

On the simulator every mutant of the corpus is certified at the suite's default budget
and must fail the guarantee written to catch it. On real Redis, one Celery-level and one
transport-level mutant are planted in real worker processes through the adapter (the
whole matrix runs in ``nox -s mutants``).
"""

from __future__ import annotations

import re

import celery
import pytest

from simq_conformance import Fault, ProbeCall, RunSettings, Workload
from simq_conformance.adapters.simq_adapter import SimqAdapter
from simq_conformance.campaign import run_campaign
from simq_conformance.mutants import CORPUS, MUTANTS, UnknownMutant, get, planted
from simq_conformance.mutants.matrix import Cell, to_markdown
from simq_conformance.plugin import SIMULATED_EXAMPLES
from simq_conformance.properties import FAIL, check_run

pytest_plugins = ("pytester",)


def test_the_corpus_has_the_planted_bugs_the_issue_lists() -> None:
    assert len(CORPUS) >= 12
    assert {m.layer for m in CORPUS} == {"celery", "consumer", "transport"}
    for mutant in CORPUS:
        assert mutant.plantable("simq"), mutant.name
        assert mutant.plantable("redis"), mutant.name
        assert mutant.expect, mutant.name


@pytest.mark.parametrize("name", list(MUTANTS))
def test_every_mutant_is_killed_on_the_simulator_at_the_default_budget(name: str) -> None:
    adapter = SimqAdapter()
    adapter.mutant = name
    campaign = run_campaign("simq", adapter, examples=SIMULATED_EXAMPLES, shrink=False)
    failed = {g for g, s in campaign.summaries.items() if s.status == FAIL}
    assert failed & set(MUTANTS[name].expect), (name, sorted(failed))


def test_without_a_mutant_the_simulator_passes_the_same_campaign() -> None:
    campaign = run_campaign("simq", SimqAdapter(), examples=SIMULATED_EXAMPLES, shrink=False)
    assert [g for g, s in campaign.summaries.items() if s.status == FAIL] == []


def test_a_planted_mutant_is_gone_after_its_block() -> None:
    from celery.worker import request

    init, deaf = request.Request.__init__, request.revoked_tasks
    with planted("revoke-ignored", "simq"):
        assert request.revoked_tasks is not deaf
        request.revoked_tasks.add("x")
        assert "x" not in request.revoked_tasks
    with planted("soft-limit-ignored", "simq"):
        assert request.Request.__init__ is not init
    assert request.Request.__init__ is init
    assert request.revoked_tasks is deaf


def _noop() -> None:
    return None


def test_a_mutant_that_binds_tasks_changes_only_the_apps_made_inside_its_block() -> None:
    with planted("late-ack-for-early", "simq"):
        inside = celery.Celery("inside")
        late = inside.task(_noop, name="t", shared=False)
        assert late.acks_late is True
    outside = celery.Celery("outside")
    early = outside.task(_noop, name="t", shared=False)
    assert early.acks_late is False


def test_unknown_and_unplantable_mutants_are_named_with_the_fix() -> None:
    with pytest.raises(
        UnknownMutant,
        match=r"^unknown mutant 'eta-ignore'; did you mean 'eta-ignored'\? Mutants: "
        r"lost-unacked-on-kill, no-restore-on-connection-loss, .*, redelivery-after-success$",
    ):
        get("eta-ignore")
    with pytest.raises(
        UnknownMutant,
        match=re.escape(
            "mutant 'lost-unacked-on-kill' (transport: a killed worker's unacked messages are "
            "never returned) cannot be planted in 'amqp': it has patches for simq, redis. "
            "Mutants for 'amqp': early-ack-for-acks-late,"
        ),
    ):
        get("lost-unacked-on-kill", "amqp")


def test_the_plugin_plants_a_mutant_and_the_suite_fails(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--conformance=simq", "--conformance-mutant=expires-ignored", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*FAILED*test_guarantee[[]simq-G9[]]*"])
    result.stdout.fnmatch_lines(["*reproduce:*--conformance-mutant=expires-ignored*"])


def test_the_plugin_refuses_a_mutant_it_cannot_plant(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--conformance=celery-memory", "--conformance-mutant=eta-ignored"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--conformance-mutant=eta-ignored: adapter 'celery-memory' takes no mutant*"]
    )
    result = pytester.runpytest_subprocess("--conformance=simq", "--conformance-mutant=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--conformance-mutant: adapter 'simq': unknown mutant 'nope'*"])


def test_the_matrix_names_what_killed_each_mutant_and_what_survived() -> None:
    cells = [
        Cell("simq", "(none)", "pass", (), 37, 3.0),
        Cell("simq", "eta-ignored", "killed", ("G16",), 40, 4.0),
        Cell("simq", "revoke-ignored", "survived", (), 37, 3.2),
        Cell("celery-rabbitmq", "lost-unacked-on-kill", "n/a", detail="no patches for amqp"),
    ]
    table = to_markdown(cells)
    assert (
        "| `eta-ignored` | a countdown or ETA is ignored: the task starts at once | killed by G16 (40 runs, 4 s) |"
        in table
    )
    assert "SURVIVED (37 runs, 3 s)" in table
    assert "n/a (no patches for amqp)" in table
    assert table.endswith("1 of 2 planted mutants killed.\n")
    assert [c.ok for c in cells] == [True, True, False, True]


def test_the_matrix_marks_a_mutant_the_plugin_cannot_plant_not_applicable(tmp_path) -> None:
    """The plugin alone decides where a mutant can be planted; the matrix reads its
    usage error (no broker is contacted: the plugin refuses at configuration)."""
    from simq_conformance.mutants.matrix import run_cell

    cell = run_cell("celery-rabbitmq", "lost-unacked-on-kill", tmp_path)
    assert (cell.status, cell.detail) == ("n/a", "cannot be planted in 'amqp'")
    assert cell.ok and cell.text() == "n/a (cannot be planted in 'amqp')"
    memory = run_cell("celery-memory", "eta-ignored", tmp_path)
    assert (memory.status, memory.detail) == ("n/a", "takes no mutant")


# -- real Redis: mutants planted in real worker processes ---------------------------------


def _redis(mutant: str | None) -> object:
    from simq_conformance.adapters.celery_adapter import celery_redis

    adapter = celery_redis(timeout=20.0)
    adapter.mutant = mutant
    return adapter


_ETA = Workload(
    RunSettings(),
    calls=(ProbeCall("ret", (1,), {"countdown": 2.0}, "c1"),),
)


@pytest.mark.services
@pytest.mark.parametrize("mutant", [None, "eta-ignored"])
def test_a_celery_mutant_planted_in_real_workers_is_caught(mutant: str | None) -> None:
    """The worker processes plant the bug as they boot; the checkers see its effect."""
    result = _redis(mutant).run(_ETA)  # type: ignore[attr-defined]
    verdicts = check_run(result)
    assert result.complete, result.notes
    assert (verdicts["G16"].status == FAIL) is (mutant is not None), verdicts["G16"]


_TWICE = Workload(
    RunSettings(conf={"task_acks_late": True}),
    calls=(ProbeCall("ret", (1,), key="c1"), ProbeCall("sleep", (0.3,), key="c2")),
)


@pytest.mark.services
def test_a_transport_mutant_planted_in_real_workers_is_caught() -> None:
    """kombu's Redis transport in the workers delivers every task message twice."""
    result = _redis("double-delivery").run(_TWICE)  # type: ignore[attr-defined]
    verdicts = check_run(result)
    delivered = [e for e in result.history if e.kind == "delivered"]
    assert len(delivered) == 4
    assert {g for g, v in verdicts.items() if v.status == FAIL} & {"G1", "G2", "L2"}


@pytest.mark.services
def test_a_lost_message_mutant_fails_liveness_on_real_redis() -> None:
    workload = Workload(
        RunSettings(conf={"task_acks_late": True}),
        calls=(ProbeCall("sleep", (1.5,), key="c1"),),
        faults=(Fault("kill_worker", 0.5, 0),),
    )
    result = _redis("lost-unacked-on-kill").run(workload)  # type: ignore[attr-defined]
    verdicts = check_run(result)
    assert {g for g, v in verdicts.items() if v.status == FAIL} & {"G4", "L1", "L2"}
