"""The seams: a real Celery app runs on the simulation, and is left exactly as it was."""

from __future__ import annotations

import uuid

import celery
import pytest
from celery.app import amqp as celery_amqp
from celery.app import trace as celery_trace
from celery.worker import state as worker_state
from kombu import Exchange, Queue
from kombu.utils.uuid import uuid as kombu_uuid

import simq
from simq.exceptions import NoActiveSimulation, SimqError

#: A broker nothing listens on: if the simulation ever reached for the configured
#: broker or backend, the test would fail with a connection error.
UNREACHABLE = "redis://127.0.0.1:1/0"


def _app() -> celery.Celery:
    app = celery.Celery("seams", broker=UNREACHABLE, backend=UNREACHABLE, set_as_current=False)

    @app.task(name="seams.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_an_app_configured_for_redis_never_reaches_it_inside_a_simulation() -> None:
    """Publishing and reading results go to the simulated broker and store only."""
    app = _app()
    with simq.Simulation(app, seed=1) as sim:
        assert app.tasks["seams.add"].delay(2, 3).get(timeout=5) == 5
        assert sim.history.kinds().count("published") == 1
    assert app.conf.broker_url == UNREACHABLE
    assert app.conf.result_backend == UNREACHABLE


def test_the_app_is_as_before_after_the_block() -> None:
    """Producer pool, connection pool, backend, current app and tracers are restored."""
    app = _app()
    add = app.tasks["seams.add"]
    add.__trace__ = None
    before = (app.amqp._producer_pool, app._pool, app._backend_cache, app._local.__dict__.copy())
    current = celery._state._tls.current_app
    with simq.Simulation(app, seed=1):
        assert add.delay(1, 1).get() == 2
        assert add.__trace__ is not None  # Celery built a tracer over the simulated backend
        assert type(app.backend).__module__ == "simq.seams.backend"
    after = (app.amqp._producer_pool, app._pool, app._backend_cache, app._local.__dict__.copy())
    assert after == before
    assert celery._state._tls.current_app is current
    assert add.__trace__ is None


def test_the_app_is_restored_when_the_block_raises() -> None:
    """An exception in the block still restores the app."""
    app = _app()
    with pytest.raises(ZeroDivisionError), simq.Simulation(app, seed=1):
        app.tasks["seams.add"].delay(1, 1).get()
        1 / 0  # noqa: B018
    assert app.amqp._producer_pool is None
    assert app._pool is None


def test_the_interpreter_is_as_before_after_the_block() -> None:
    """uuid4, kombu's uuid(), Celery's origin and hostname functions are restored."""
    saved = (
        uuid.uuid4,
        kombu_uuid.__defaults__,
        celery_amqp.anon_nodename,
        celery_trace.gethostname,
    )
    app = _app()
    with simq.Simulation(app, seed=1):
        assert uuid.uuid4 is not saved[0]
        app.tasks["seams.add"].delay(1, 1).get()
    assert (
        uuid.uuid4,
        kombu_uuid.__defaults__,
        celery_amqp.anon_nodename,
        celery_trace.gethostname,
    ) == saved


def test_celery_worker_state_is_emptied_inside_and_restored_after() -> None:
    """celery.worker.state's process-wide revoked set does not leak in or out."""
    worker_state.revoked.add("outside-id")
    try:
        app = _app()
        with simq.Simulation(app, seed=1) as sim:
            assert "outside-id" not in worker_state.revoked
            sim.revoke("inside-id")
        assert "outside-id" in worker_state.revoked
        assert "inside-id" not in worker_state.revoked
    finally:
        worker_state.revoked.discard("outside-id")


def test_task_ids_come_from_the_seed() -> None:
    """The same seed gives the same task ids; another seed gives others."""

    def ids(seed: int) -> list[str]:
        app = _app()
        with simq.Simulation(app, seed=seed):
            return [app.tasks["seams.add"].delay(i, 1).id for i in range(3)]

    assert ids(5) == ids(5)
    assert ids(5) != ids(6)


def test_the_origin_header_names_no_real_process() -> None:
    """The origin header comes from the simulation, not this machine's pid."""
    app = _app()
    seen: list[dict[str, object]] = []

    def capture(headers: dict[str, object], **_: object) -> None:
        seen.append(headers)

    celery.signals.before_task_publish.connect(capture, weak=False)
    try:
        with simq.Simulation(app, seed=1):
            app.tasks["seams.add"].delay(1, 1).get()
    finally:
        celery.signals.before_task_publish.disconnect(capture)
    assert seen[0]["origin"] == "gen0@simq"


def test_an_eager_app_is_refused() -> None:
    """task_always_eager would bypass the simulation: a clear error names the fix."""
    app = _app()
    app.conf.task_always_eager = True
    with pytest.raises(SimqError, match=r"task_always_eager=True.*task_always_eager = False"):
        simq.Simulation(app).start()
    assert app.amqp._producer_pool is None


def test_two_simulations_cannot_be_active_at_once() -> None:
    """Time is patched process-wide: a second active simulation is an error."""
    with simq.Simulation(_app()) as sim, pytest.raises(SimqError, match="another simulation"):
        simq.Simulation(_app()).start()
    assert not sim.active


def test_simq_app_has_no_broker_outside_a_simulation() -> None:
    """simq.App's broker exists only in a simulation, and says so."""
    app = simq.App("only-simulated")

    @app.task
    def ping() -> str:
        return "pong"

    with pytest.raises(NoActiveSimulation, match="exists only inside a simulation"):
        ping.delay()
    with simq.Simulation(app):
        assert ping.delay().get() == "pong"


def test_a_worker_declares_its_queues_so_topic_routing_reaches_them() -> None:
    """Messages routed by exchange and routing key follow kombu's bindings."""
    app = _app()
    app.conf.task_queues = [Queue("audit", Exchange("events", type="topic"), routing_key="order.#")]
    add = app.tasks["seams.add"]
    with simq.Simulation(app, seed=1, workers=0) as sim:
        sim.add_worker(queues=["audit"])
        routed = add.apply_async((1, 2), exchange="events", routing_key="order.created")
        assert routed.get() == 3
        stray = add.apply_async((1, 2), exchange="events", routing_key="user.created")
        sim.run()
        assert sim.history.where(task_id=stray.id).kinds() == ["published", "lost"]
        assert sim.history.where(task_id=stray.id, kind="lost")[0]["reason"] == "unroutable"


def test_each_simulated_child_has_its_own_pid_and_node_name() -> None:
    """os.getpid() in a task and the STARTED meta name the simulated child and worker."""
    import os
    import time

    app = celery.Celery("pids", set_as_current=False)
    app.conf.task_track_started = True

    @app.task(bind=True, shared=False)
    def who(self: celery.Task) -> list[object]:
        time.sleep(1)
        return [os.getpid(), self.request.hostname]

    real_pid = os.getpid()
    with simq.Simulation(app, seed=1, workers=2, concurrency=2) as sim:
        results = [r.get() for r in [who.delay() for _ in range(4)]]
        started = [e["result"] for e in sim.history.where(kind="state", state="STARTED")]
    assert sorted(map(tuple, results)) == [
        (101, "worker-1"),
        (102, "worker-1"),
        (103, "worker-2"),
        (104, "worker-2"),
    ]
    assert sorted(s["pid"] for s in started) == [101, 102, 103, 104]
    assert os.getpid() == real_pid


def test_workers_import_the_apps_task_modules_like_a_booting_worker(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``include=`` and ``autodiscover_tasks()`` modules are imported as workers start."""
    import sys
    from pathlib import Path

    root = Path(str(tmp_path))
    for package, body in (
        (
            "incpkg",
            "from celery import shared_task\n\n@shared_task(name='inc.double')\ndef double(x):\n    return 2 * x\n",
        ),
        (
            "discpkg",
            "from celery import shared_task\n\n@shared_task(name='disc.triple')\ndef triple(x):\n    return 3 * x\n",
        ),
    ):
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
        (root / package / "tasks.py").write_text(body)
    monkeypatch.syspath_prepend(str(root))
    app = celery.Celery("proj", include=["incpkg.tasks"], set_as_current=False)
    app.autodiscover_tasks(["discpkg"])
    try:
        with simq.Simulation(app, seed=1):
            assert app.send_task("inc.double", (4,)).get() == 8
            assert app.send_task("disc.triple", (4,)).get() == 12
    finally:
        for name in ("incpkg", "incpkg.tasks", "discpkg", "discpkg.tasks"):
            sys.modules.pop(name, None)
