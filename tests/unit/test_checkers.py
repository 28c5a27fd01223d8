"""The checkers as a whole: their types, their configuration, and real simq runs that pass.

Each guarantee's own checker is tested against doctored histories in
``test_checkers_*.py``; here every checker reads correct histories of real simulations
(CELERY_SEMANTICS.md §3.2) and finds nothing.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import celery
import pytest
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from checker_support import T0, Story, only

import simq
from simq import checkers
from simq.checkers import CHECKS, CheckConfig, Violation, config_from, run_all
from simq.history import Event, History

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)


def workload(app: celery.Celery) -> Any:
    """Tasks covering every outcome: retry, failure, Reject, Ignore, limits, rate limits."""

    class Tasks:
        @app.task(name="shop.flaky", bind=True, max_retries=2, default_retry_delay=5)
        def flaky(self, x):
            if self.request.retries < 2:
                raise self.retry(exc=ValueError("not yet"))
            return x

        @app.task(name="shop.late", acks_late=True, track_started=True)
        def late(x):
            time.sleep(3)
            return x

        @app.task(name="shop.boom")
        def boom():
            raise KeyError("k")

        @app.task(name="shop.requeue", bind=True, acks_late=True)
        def requeue(self):
            if not self.request.delivery_info["redelivered"]:
                raise Reject("again", requeue=True)
            return 1

        @app.task(name="shop.refuse")
        def refuse():
            raise Reject("no", requeue=False)

        @app.task(name="shop.ignore")
        def ignore():
            raise Ignore()

        @app.task(name="shop.limited", soft_time_limit=2, time_limit=4)
        def limited(catch):
            try:
                time.sleep(3)
            except SoftTimeLimitExceeded:
                if catch:
                    return "caught"
                raise
            return "done"

        @app.task(name="shop.hard", bind=True, time_limit=2, acks_late=True, acks_on_timeout=False)
        def hard(self):
            if not self.request.delivery_info["redelivered"]:
                time.sleep(5)
            return 2

        @app.task(name="shop.limited_rate", rate_limit="1/s")
        def limited_rate(x):
            return x

    return Tasks


def submit(tasks: Any) -> list[Any]:
    return [
        tasks.flaky.delay(1),
        tasks.late.apply_async((2,), countdown=10),
        tasks.boom.delay(),
        tasks.late.apply_async((3,), expires=0.5, countdown=1),
        tasks.requeue.delay(),
        tasks.refuse.delay(),
        tasks.ignore.delay(),
        tasks.limited.delay(True),
        tasks.limited.delay(False),
        tasks.hard.delay(),
        *(tasks.limited_rate.delay(i) for i in range(4)),
    ]


def drained(app: celery.Celery, **options: Any) -> tuple[simq.Simulation, list[Violation]]:
    tasks = workload(app)
    with simq.Simulation(app, seed=3, **options) as sim:
        submit(tasks)
        sim.run()
        return sim, run_all(sim.history, config_from(sim))


@pytest.mark.parametrize(
    "options",
    [
        {"workers": 1, "concurrency": 1},
        {"workers": 1, "concurrency": 1, "prefetch_multiplier": 1},
        {"workers": 2, "concurrency": 3},
        {"workers": 2, "concurrency": 2, "prefetch_multiplier": 0},
        {"workers": 2, "concurrency": 2, "transport": "redis"},
        {"workers": 1, "concurrency": 2, "transport": "sqs"},
    ],
    ids=["c1", "c1-prefetch1", "2x3", "unlimited", "redis", "sqs"],
)
def test_every_checker_passes_a_correct_simulation(options: dict[str, Any]) -> None:
    """Every checker finds nothing in a drained simq run of every kind of outcome (§3.2)."""
    sim, violations = drained(simq.App("shop"), **options)
    assert "time-limit" in sim.history.kinds() and "declined" in sim.history.kinds()
    assert violations == []


def test_checkers_pass_a_simulation_with_acks_late_everywhere() -> None:
    """An app with task_acks_late and acks_on_failure off keeps every guarantee (§3.1)."""
    app = simq.App("shop", task_acks_late=True, task_acks_on_failure=False)
    sim, violations = drained(app, workers=2, concurrency=2)
    assert sim.history.where(kind="rejected", requeue=False)
    assert violations == []


def test_checkers_pass_a_visibility_timeout_duplicate_on_redis() -> None:
    """A countdown longer than redis's visibility timeout duplicates; G6 tolerates it (§3.2 G6)."""
    app = simq.App("shop", broker_transport_options={"visibility_timeout": 5})

    @app.task(name="shop.later")
    def later():
        return 1

    with simq.Simulation(app, seed=0, workers=2, transport="redis") as sim:
        later.apply_async(countdown=12)
        sim.run()
        assert len(sim.history.where(kind="started")) >= 2
        assert sim.history.where(kind="delivered", copy=True)
        assert run_all(sim.history, config_from(sim)) == []


def test_checkers_pass_a_revoke_before_delivery() -> None:
    """A task revoked before it is delivered is discarded and the history keeps G10 (§3.2 G10)."""
    app = simq.App("shop")

    @app.task(name="shop.later")
    def later():
        return 1

    with simq.Simulation(app, seed=0) as sim:
        r = later.apply_async(countdown=30)
        r.revoke()
        sim.run()
        assert sim.history.where(kind="revoked", reason="revoked")
        assert run_all(sim.history, config_from(sim)) == []


def test_checks_maps_every_guarantee_to_its_checker() -> None:
    """CHECKS lists G1 to G18 in order, then the canvas C1 to C4, each with its check."""
    assert list(CHECKS) == [f"G{n}" for n in range(1, 19)] + [f"C{n}" for n in range(1, 5)]
    for name, check in CHECKS.items():
        assert check is getattr(checkers, f"check_{name.lower()}")
        doc = check.__doc__ or ""
        assert f"§3.2 {name}" in doc if name.startswith("G") else doc.startswith(f"{name}: ")


def test_checkers_import_nothing_from_the_world_or_the_engine() -> None:
    """No checker module imports simq.world or simq.engine (STYLE.md: imports point down)."""
    import ast
    import pathlib

    root = pathlib.Path(checkers.__file__).parent
    imported = set()
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    simq_modules = {m for m in imported if m.startswith("simq")}
    assert simq_modules <= {"simq", "simq.history"} | {
        f"simq.checkers.{p.stem}" for p in root.glob("*.py")
    }


def test_a_violation_prints_its_guarantee_and_describes_its_evidence() -> None:
    """str() gives 'G5: message'; describe() adds one JSON line per event."""
    event = Event("delivered", T0, "t1", "m1", "w1", {"queue": "celery"})
    v = Violation("G5", "too many", (event,))
    assert str(v) == "G5: too many"
    assert v.describe().splitlines() == [
        "G5: too many",
        '    {"kind":"delivered","time":1893456000.0,"task_id":"t1","message_id":"m1",'
        '"worker":"w1","details":{"queue":"celery"}}',
    ]


def test_check_config_reads_per_task_settings_with_a_wildcard() -> None:
    """A task's entry wins over "*", which wins over Celery's default."""
    config = CheckConfig(acks_late={"*": True, "shop.fast": False}, max_retries={"a": None})
    assert config.late("shop.fast") is False
    assert config.late("shop.other") is True
    assert config.setting("max_retries", "a") is None
    assert config.setting("max_retries", "b") == 3
    assert config.setting("acks_on_failure", "b") is True


def test_check_config_knows_each_transports_visibility_timeout() -> None:
    """redis defaults to 3600 s and sqs to 1800 s; amqp has none; a given value wins."""
    assert CheckConfig().effective_visibility_timeout is None
    assert CheckConfig(transport="redis").effective_visibility_timeout == 3600.0
    assert CheckConfig(transport="sqs").effective_visibility_timeout == 1800.0
    assert CheckConfig(transport="redis", visibility_timeout=5).effective_visibility_timeout == 5


def test_check_config_rejects_an_unknown_transport() -> None:
    """An unknown transport name is refused with the list of known ones."""
    with pytest.raises(
        ValueError,
        match=r"^transport must be one of amqp, redis, sqs, memory, "
        r"got 'kafka'$",
    ):
        CheckConfig(transport="kafka")


def test_config_from_reads_the_simulation() -> None:
    """config_from takes transport, windows, per-task settings and completeness from a sim."""
    app = simq.App(
        "shop", task_acks_on_failure=False, broker_transport_options={"visibility_timeout": 7}
    )

    @app.task(name="shop.slow", acks_late=True, max_retries=None, rate_limit="2/s", time_limit=9)
    def slow():
        time.sleep(1)

    with simq.Simulation(
        app, seed=0, workers=2, concurrency=3, prefetch_multiplier=2, transport="redis"
    ) as sim:
        slow.delay()
        early = config_from(sim)
        sim.run()
        config = config_from(sim, slack=0.5)
    assert (early.complete, config.complete) == (False, True)
    assert config.transport == "redis"
    assert config.effective_visibility_timeout == 7
    assert config.prefetch == {"worker-1": 6, "worker-2": 6}
    assert config.late("shop.slow") is True
    # task_acks_on_failure is new in 5.7 (app/defaults.py): 5.5 acks a failure by default.
    assert config.setting("acks_on_failure", "shop.slow") is (CELERY_VERSION < (5, 7))
    assert config.setting("max_retries", "shop.slow") is None
    assert config.setting("rate_limit", "shop.slow") == "2/s"
    assert config.setting("time_limit", "shop.slow") == 9
    assert config.slack == 0.5


def test_run_all_reports_violations_in_guarantee_order() -> None:
    """run_all concatenates the checkers' findings, G1 first."""
    s = Story().online("w1", concurrency=1, prefetch_multiplier=1)
    s.publish("m1", "t1").publish("m2", "t2").deliver("m1").deliver("m2")
    s.ack("m2")
    violations = run_all(s.history, CheckConfig())
    assert [v.guarantee for v in violations] == ["G1", "G5"]


def test_checkers_accept_a_history_read_back_from_json_lines() -> None:
    """A history saved as JSON Lines and read back is judged the same (a recording)."""
    sim, violations = drained(simq.App("shop"), workers=1, concurrency=2)
    assert violations == []
    again = History.from_jsonl(sim.history.to_jsonl())
    config = attrs.evolve(config_from(sim))
    assert run_all(again, config) == []
    broken = History([e for e in again if not (e.kind == "acked" and e.message_id == "m1")])
    found = [v for v in run_all(broken, config) if v.guarantee == "G1"]
    assert only(found, "G1").message.startswith("shop.flaky[")
    assert only(found, "G1").message.endswith(
        "was never acked; early ack happens when the task starts"
    )


# -- reading histories with copies side by side -------------------------------------


def test_a_write_during_side_by_side_runs_goes_to_the_attempt_that_ends_next() -> None:
    """Two copies of one message run on one worker; each RETRY belongs to the next to end."""
    s = Story().online("w1", concurrency=2).publish("m1", "t1", eta=60).deliver("m1").at(50)
    s.requeued("m1", reason="visibility-timeout", copy=True)
    s.deliver("m1", redelivered=True, copy=True).at(60).start("m1").start("m1").at(72)
    for _ in range(2):
        s.publish(f"m{len(s.tasks) + 1}", "t1", retries=1).state("t1", "RETRY", None)
        s.outcome("retried", "m1", exception=None, when=0).ack("m1")
    config = CheckConfig(transport="redis", visibility_timeout=50, acks_late={"*": True})
    assert run_all(s.history, config) == []


def test_a_copy_revoked_at_receipt_is_told_from_one_waiting_on_its_eta() -> None:
    """An expired copy revoked on receipt is not mistaken for the older copy on its timer."""
    s = Story().online("w1").publish("m1", "t1", eta=60, expires=8).deliver("m1").at(10)
    s.requeued("m1", reason="visibility-timeout", copy=True)
    s.deliver("m1", redelivered=True, copy=True)
    s.outcome("revoked", "m1", reason="expired", expired=True, terminated=False)
    s.state("t1", "REVOKED", {"exc_type": "TaskRevokedError"}).ack("m1").at(60)
    s.outcome("revoked", "m1", reason="expired", expired=True, terminated=False)
    s.state("t1", "REVOKED", {"exc_type": "TaskRevokedError"}).ack("m1")
    config = CheckConfig(transport="sqs", visibility_timeout=10, complete=True)
    assert run_all(s.history, config) == []
