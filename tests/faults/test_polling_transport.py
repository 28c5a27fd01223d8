"""The polling transport: kombu's virtual transports polled by Celery's synchronous loop
(``filesystem://``, SQLAlchemy; simq/world/polling.py). Workers poll for one message at
a time, a killed worker loses its unacked messages, a closing channel puts them back at
the end of the queue unflagged, a warm shutdown drains once more, a revoke is read at
the next poll, and a broker restart keeps the queues (G4, G7, G10, G17)."""

from __future__ import annotations

import math
import time

import celery
import pytest

import simq
from simq.checkers.base import ACKS_AT_ONCE_ON_SYNLOOP
from simq.exceptions import InvalidArgument

#: Celery's revoke command stores REVOKED itself from 5.6.2 (worker/control.py _revoke
#: calls backend.mark_as_revoked); 5.5's only adds the id to the worker's revoked set.
REVOKE_MARKS_REVOKED = tuple(celery.VERSION[:3]) >= (5, 6, 2)

POLL_1S = {"broker_transport_options": {"polling_interval": 1.0}}
#: Why a timeline test needs Celery 5.7: its acks go out at once without an event loop.
ACKS_5_5 = "Celery 5.5 queues acks for synloop's next turn (Consumer.call_soon): another timeline"


def make_app(**settings):
    app = simq.App("shop", **{**POLL_1S, **settings})

    @app.task(shared=False)
    def work(seconds):
        time.sleep(seconds)
        return seconds

    @app.task(shared=False, acks_late=True)
    def late(seconds):
        time.sleep(seconds)
        return seconds

    return app, work, late


def deliveries(sim, *task_ids):
    """``(seconds, task index, worker, redelivered)`` per delivery of ``task_ids``."""
    index = {tid: n for n, tid in enumerate(task_ids)}
    return [
        (round(e.time - sim.started_at, 3), index[e.task_id], e.worker, e["redelivered"])
        for e in sim.history.where(kind="delivered")
        if e.task_id in index
    ]


@pytest.mark.parametrize(
    ("interval", "fetched"),
    [
        # Nothing is pushed: published at 0.3 s, between polls, the message waits for
        # the worker's next poll (an empty poll waits polling_interval).
        (1.0, 1.0),
        # polling_interval=0 is kombu's busy loop: the message is taken as it lands.
        (0, 0.3),
        # kombu sleeps at most the drain's timeout (synloop's 2 s) between polls.
        (5, 2.0),
    ],
)
def test_an_idle_worker_finds_a_message_at_its_next_poll(simulation, interval, fetched):
    """A message published between polls is fetched at the worker's next poll."""
    app, work, _ = make_app(broker_transport_options={"polling_interval": interval})
    sim = simulation(app, transport="polling")
    sim.advance(0.3)
    r = work.delay(0)
    sim.run()
    assert deliveries(sim, r.id) == [(fetched, 0, "worker-1", False)]
    assert r.get() == 0
    assert sim.check() == []


@pytest.mark.celery_version(min="5.7", why=ACKS_5_5)
@pytest.mark.parametrize(
    ("multiplier", "fetched"),
    [
        # A window of one: the next message at the first poll after the ack (acks at
        # 2.5, 5.5 and 8.5 s, fetches at the 3, 6 and 9 s polls).
        (1, [0.0, 3.0, 6.0, 9.0]),
        # A window of four holds two: billiard's pool takes one job per child
        # (putlocks), and the consumer that received a task while its only child is busy
        # waits with it in hand, polling nothing, until the child is free.
        (4, [0.0, 0.0, 2.5, 5.0]),
    ],
)
def test_one_message_per_poll_within_the_prefetch_window(simulation, multiplier, fetched):
    """Fetches on a polling transport: one per poll, within the window, and none while
    the consumer waits to hand a task to a busy pool."""
    app, _, late = make_app()
    sim = simulation(app, transport="polling", prefetch_multiplier=multiplier)
    rs = [late.delay(2.5) for _ in range(4)]
    sim.run()
    assert deliveries(sim, *(r.id for r in rs)) == [
        (at, n, "worker-1", False) for n, at in enumerate(fetched)
    ]
    assert sim.check() == []


@pytest.mark.parametrize("acks_late", [True, False])
def test_an_ack_waits_for_the_next_turn_on_celery_5_5(simulation, acks_late):
    """Celery 5.7 acks at once without an event loop (Consumer.call_soon_ack); 5.5 queued
    acks for synloop's next turn (Consumer.call_soon, perform_pending_operations), and
    with a window of one nothing is fetched meanwhile, so the turn ends only as its
    drain times out, 2 s after it began: measured on filesystem:// with one child,
    0.10 s tasks took 2.0 s each on 5.5.3 (early ack too) and 0.1 to 0.2 s on 5.7.0."""
    app, _, _ = make_app(broker_transport_options={"polling_interval": 0.1})

    @app.task(shared=False, acks_late=acks_late)
    def quick():
        time.sleep(0.1)

    sim = simulation(app, transport="polling", prefetch_multiplier=1)
    for _ in range(4):
        quick.delay()
    sim.run()
    starts = [round(e.time - sim.started_at, 3) for e in sim.history.where(kind="started")]
    step = 0.1 if ACKS_AT_ONCE_ON_SYNLOOP else 2.0
    assert starts == [round(n * step, 3) for n in range(4)]
    assert sim.check() == []


@pytest.mark.skipif(ACKS_AT_ONCE_ON_SYNLOOP, reason="Celery 5.7 acks at once (call_soon_ack)")
def test_queued_acks_go_out_newest_first_on_celery_5_5(simulation):
    """Celery 5.5's perform_pending_operations pops its queue: acks asked for together go
    out in reverse order (measured on filesystem://, four children: asked 0, 1, 4, 3 at
    0.30 s, sent 3, 4, 1, 0 at 2.01 s)."""
    app, _, late = make_app(broker_transport_options={"polling_interval": 0.1})
    sim = simulation(app, transport="polling", concurrency=4, prefetch_multiplier=1)
    rs = [late.delay(0.3) for _ in range(4)]
    sim.run()
    order = {r.id: n for n, r in enumerate(rs)}
    acks = sim.history.where(kind="acked")
    assert [order[e.task_id] for e in acks] == [3, 2, 1, 0]
    assert {round(e.time - sim.started_at, 3) for e in acks} == {2.0}


@pytest.mark.parametrize("warm", [True, False])
def test_queued_acks_go_out_before_the_worker_stops(simulation, warm):
    """An ack queued for a turn that never comes (the loop ended with the shutdown) goes
    out as the consumer shuts down (Celery 5.5's Consumer.shutdown runs the pending
    operations first): each task runs once, its message acked, on every Celery."""
    app, _, late = make_app()

    @app.task(shared=False, acks_late=True, time_limit=2)
    def bounded():
        time.sleep(10)

    sim = simulation(app, transport="polling", prefetch_multiplier=1, concurrency=2)
    finished, cut = late.delay(1.5), bounded.delay()
    sim.shutdown_worker("worker-1", at=1.2 if warm else 1.7, warm=warm)
    sim.run()
    acked = {e.task_id for e in sim.history.where(kind="acked")}
    offline = sim.history.where(kind="worker-offline").first()
    assert acked == {finished.id, cut.id}
    assert all(e.time <= offline.time for e in sim.history.where(kind="acked"))
    assert len(sim.history.where(kind="started")) == 2  # nothing ran again
    assert sim.check() == []


def test_an_eta_message_widens_the_window_as_on_other_transports(simulation):
    """A held ETA message does not count against the window: the next one is fetched too."""
    app, work, _ = make_app()
    sim = simulation(app, transport="polling", prefetch_multiplier=1)
    eta = work.apply_async((0,), countdown=10)
    plain = work.delay(0)
    sim.run()
    assert deliveries(sim, eta.id, plain.id) == [
        (0.0, 0, "worker-1", False),
        (0.0, 1, "worker-1", False),
    ]
    assert sim.check() == []


@pytest.mark.celery_version(min="5.7", why=ACKS_5_5)
def test_an_eta_task_holds_the_window_open_until_it_starts(simulation):
    """The timer thread waits for a free child to hand over a due ETA task, and Celery
    lowers the prefetch count only then; synloop gives the channel that count at its
    next turn. So with a window of one, the next message comes as the ETA task starts,
    while it runs unacked (recorded on filesystem://: 1 ms after its start), and the one
    after waits (G5 allows the first on the synchronous loop)."""
    app, _, late = make_app(broker_transport_options={"polling_interval": 0.1})
    sim = simulation(app, transport="polling", prefetch_multiplier=1)
    eta = late.apply_async((0.3,), countdown=1)
    busy, b, c = late.delay(1.5), late.delay(0), late.delay(0)
    sim.run()
    assert deliveries(sim, eta.id, busy.id, b.id, c.id) == [
        (0.0, 0, "worker-1", False),
        (0.0, 1, "worker-1", False),  # the ETA message is outside the window
        (1.5, 2, "worker-1", False),  # as the ETA task starts, on the stale count
        (1.9, 3, "worker-1", False),  # after b ran: the turn ended, the window is 1
    ]
    started = sim.history.where(kind="started", task_id=eta.id).first()
    assert started.time - sim.started_at == 1.5
    assert sim.check() == []


@pytest.mark.parametrize("value", [-1, "fast", True, math.nan, math.inf])
def test_a_bad_polling_interval_is_refused(value):
    """polling_interval must be a finite number of seconds >= 0."""
    app = simq.App("shop", broker_transport_options={"polling_interval": value})
    with pytest.raises(
        InvalidArgument,
        match=(
            r"^Simulation\(\): app\.conf\.broker_transport_options\['polling_interval'\] must "
            r"be a number of seconds >= 0 on the polling transport, got .+: kombu sleeps "
            r"that long after an empty poll; pass how long a worker waits before polling its "
            r"queues again \(kombu's default: 1, 0 to poll without pause\)$"
        ),
    ):
        simq.Simulation(app, transport="polling")


def test_the_transport_list_names_polling(app):
    """An unknown transport is refused with the list of transports, polling included."""
    with pytest.raises(
        simq.SimqError,
        match=r"^unknown transport 'poling'; use one of amqp, redis, sqs, polling; "
        r"did you mean 'polling'\?$",
    ):
        simq.Simulation(app, transport="poling")


def test_a_killed_worker_loses_its_unacked_messages(simulation, trail):
    """A crash loses what the worker held unacked (kombu's virtual QoS lives in the
    process): recorded lost [worker-crashed] with the attempt; nothing is requeued."""
    app, work, late = make_app()
    sim = simulation(app, transport="polling", workers=1, prefetch_multiplier=2)
    running, held = late.delay(5), work.delay(0)
    sim.crash_worker("worker-1", at=1, restart_after=1)
    sim.run()
    assert trail(sim, running.id, held.id)[2:] == [
        "0 delivered m1 worker-1",
        "0 started m1 worker-1 retries=0",
        "0 delivered m2 worker-1",
        "1 worker-crashed worker-1",
        "1 lost m1 worker-crashed",
        "1 lost m2 worker-crashed",
        "1 worker-offline worker-1",
        "2 worker-online worker-1",
    ]
    lost = sim.history.where(kind="lost")
    assert [e["attempt"] for e in lost] == ["m1.1", "m2.1"]
    assert not sim.history.where(kind="requeued")


def test_check_accepts_a_killed_polling_worker(simulation):
    """The checkers accept the losses of a killed polling worker."""
    app, work, late = make_app()
    sim = simulation(app, transport="polling", workers=1, prefetch_multiplier=2)
    late.delay(5), work.delay(0)
    sim.crash_worker("worker-1", at=1, restart_after=1)
    sim.run()
    assert sim.check() == []


def test_a_lost_connection_requeues_at_the_back_unflagged(simulation):
    """A closing channel puts unacked messages again at the end of the queue, without the
    redelivered flag (kombu's Channel._restore), behind the message still waiting."""
    app, _, late = make_app()
    sim = simulation(app, transport="polling", prefetch_multiplier=2)
    a, b, c = late.delay(3), late.delay(0), late.delay(0)
    sim.lose_connection("worker-1", at=1, reconnect_after=1)
    sim.run()
    requeued = sim.history.where(kind="requeued")
    assert [(e.task_id, e["reason"]) for e in requeued] == [
        (a.id, "connection-lost"),
        (b.id, "connection-lost"),
    ]
    # Reconnected at 2, the worker takes c and waits with it for its only child, still
    # running a until 3 (billiard's putlocks): it fetches nothing more until then.
    assert deliveries(sim, a.id, b.id, c.id)[2:] == [
        (2.0, 2, "worker-1", False),
        (3.0, 0, "worker-1", False),
        (3.0, 1, "worker-1", False),
    ]
    assert sim.check() == []


@pytest.mark.celery_version(min="5.7", why=ACKS_5_5)
def test_a_warm_shutdown_drains_once_more(simulation, trail):
    """After a warm shutdown the worker polls once more, fetches a message that arrived
    meanwhile and runs it before it goes offline (synloop's finally, G17)."""
    app, work, _ = make_app()
    sim = simulation(app, transport="polling", prefetch_multiplier=1)
    first = work.delay(5)
    sim.advance(0.5)
    second = work.delay(1)
    sim.shutdown_worker("worker-1", at=0.2)
    sim.run()
    assert trail(sim, first.id, second.id)[-9:] == [
        "0.7 shutdown worker-1 warm",
        "0.7 delivered m2 worker-1",
        "5 state SUCCESS 5",
        "5 succeeded m1",
        "5 started m2 worker-1 retries=0",
        "5 acked m2",
        "6 state SUCCESS 1",
        "6 succeeded m2",
        "6 worker-offline worker-1",
    ]
    assert sim.check() == []


@pytest.mark.celery_version(min="5.7", why=ACKS_5_5)
def test_a_warm_shutdown_fetches_two_messages_at_most(simulation):
    """The turn in flight at the signal and synloop's one more turn fetch a message each;
    a third stays in the queue (recorded on SQLAlchemy: two fetches after the SIGTERM)."""
    app, work, _ = make_app()
    sim = simulation(app, transport="polling", prefetch_multiplier=1)
    sim.shutdown_worker("worker-1", at=0.2)
    sim.advance(0.5)
    rs = [work.delay(0) for _ in range(3)]
    sim.run()
    assert deliveries(sim, *(r.id for r in rs)) == [
        (1.2, 0, "worker-1", False),
        (1.2, 1, "worker-1", False),
    ]
    assert [r.state for r in rs] == ["SUCCESS", "SUCCESS", "PENDING"]
    assert sim.check() == []


def test_a_warm_shutdown_runs_what_the_pool_was_handed():
    """Messages received before a warm shutdown run (synloop hands them to the pool);
    on amqp they go back to the queue."""
    for transport, requeued in [("polling", 0), ("amqp", 1)]:
        app, work, _ = make_app()
        with simq.Simulation(app, transport=transport, prefetch_multiplier=2) as sim:
            first, second = work.delay(3), work.delay(1)
            sim.shutdown_worker("worker-1", at=1)
            sim.run()
        assert len(sim.history.where(kind="requeued")) == requeued, transport
        ran = {e.task_id for e in sim.history.where(kind="succeeded")}
        assert ran == ({first.id, second.id} if transport == "polling" else {first.id})
        assert sim.check() == []


def test_a_revoke_is_read_at_the_next_poll():
    """A revoke reaches a polling worker at its next poll: a task that starts before
    then runs (a revoke read a turn late, G10); on amqp it is skipped."""
    outcomes = {}
    for transport in ("polling", "amqp"):
        app, work, _ = make_app()
        with simq.Simulation(app, transport=transport, prefetch_multiplier=2) as sim:
            work.delay(0.5)
            target = work.delay(0)
            sim.revoke(target.id, at=0.2)
            sim.run()
        revoked = sim.history.where(kind="state", task_id=target.id, state="REVOKED")
        started = sim.history.where(kind="started", task_id=target.id)
        outcomes[transport] = (
            [round(e.time - sim.started_at, 3) for e in started],
            [round(e.time - sim.started_at, 3) for e in revoked],
        )
        assert sim.check() == []
    # Polling: started at 0.5, the revoke read at the 1 s poll finds it SUCCESS already;
    # amqp: stored REVOKED by the command at once (5.6.2+), and skipped by the worker at
    # 0.5.
    by_command = [0.2] if REVOKE_MARKS_REVOKED else []
    assert outcomes == {"polling": ([0.5], []), "amqp": ([], [*by_command, 0.5])}


def test_a_revoke_unread_at_a_lost_connection_is_read_after_reconnecting(simulation):
    """A revoke still waiting for the worker's next poll is read at its first poll after
    it reconnects; the task it names never starts (G10)."""
    app, work, _ = make_app()
    sim = simulation(app, transport="polling")
    target = work.apply_async((0,), countdown=5)
    sim.revoke(target.id, at=0.2)
    sim.lose_connection("worker-1", at=0.5, reconnect_after=1)
    sim.run()
    revoked = sim.history.where(kind="state", task_id=target.id, state="REVOKED")
    # Read at the first poll after reconnecting (1.5 s), where 5.6.2+'s command stores
    # REVOKED; 5.5's worker stores it when the task's ETA comes (5 s) and skips it.
    first = 1.5 if REVOKE_MARKS_REVOKED else 5.0
    assert [round(e.time - sim.started_at, 3) for e in revoked][:1] == [first]
    assert not sim.history.where(kind="started", task_id=target.id)
    assert sim.check() == []


def test_a_broker_restart_keeps_the_queued_messages(simulation):
    """Files or rows survive a restart: nothing is lost, unacked messages are requeued."""
    app, _, late = make_app()
    sim = simulation(app, transport="polling", prefetch_multiplier=1)
    rs = [late.delay(2) for _ in range(3)]
    sim.restart_broker(at=1)
    sim.run()
    assert not sim.history.where(kind="lost")
    assert sim.history.where(kind="broker-restarted").last()["lost"] == 0
    assert [e["reason"] for e in sim.history.where(kind="requeued")] == ["broker-restart"]
    assert [r.get() for r in rs] == [2, 2, 2]
    assert sim.check() == []


def test_the_checkers_read_it_as_memory_on_the_synchronous_loop(simulation):
    """config_from gives the checkers kombu's virtual-transport model, synloop on."""
    from simq.checkers import config_from

    app, _, _ = make_app()
    config = config_from(simulation(app, transport="polling"))
    assert (config.transport, config.sync_loop, config.emulates_acks) == ("polling", True, False)


def history_of(seed: int) -> str:
    app, work, late = make_app()
    with simq.Simulation(app, seed=seed, workers=2, transport="polling") as sim:
        for n in range(6):
            (late if n % 2 else work).apply_async((n % 3,), countdown=n % 4 or None)
        sim.lose_connection("worker-2", at=1, reconnect_after=1)
        sim.shutdown_worker("worker-1", at=2.5)
        sim.crash_worker("worker-2", at=4, restart_after=1)
        sim.run()
        return sim.history.to_jsonl()


def test_polling_runs_are_deterministic():
    """The same seed gives a byte-identical history with faults; another seed differs."""
    assert history_of(3) == history_of(3)
    assert history_of(3) != history_of(4)
