"""Behaviour tests of ``Task.retry()`` on simulated workers (CELERY_SEMANTICS.md §1.8, §4).

``Task.retry`` is Celery's own; these tests check what it does on the simulation: the
messages it publishes, when they run, the states stored. Tasks use ``shared=False`` so a
task of one test is not registered on the apps of later tests (Celery's shared tasks).
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from typing import Any

import celery
import pytest
from celery import states
from celery.exceptions import MaxRetriesExceededError, TaskRevokedError

import simq

CELERY_VERSION = (celery.VERSION.major, celery.VERSION.minor)

#: Task.retry merges explicit args or kwargs with the original call only from 5.7
#: (app/task.py retry, #6494); 5.5 sends them as given, so the retried call breaks.
MERGES_RETRY_ARGUMENTS = pytest.mark.celery_version(
    min="5.7", why="5.5's Task.retry does not merge explicit args/kwargs with the original call"
)


def offsets(sim: simq.Simulation, **criteria: Any) -> list[float]:
    """Virtual seconds since the start of each event matching ``criteria``."""
    return [e.time - sim.started_at for e in sim.history.where(**criteria)]


def index(sim: simq.Simulation, **criteria: Any) -> int:
    """Position in the history of the only event matching ``criteria``."""
    matches = list(sim.history.where(**criteria))
    assert len(matches) == 1, matches
    return next(i for i, e in enumerate(sim.history) if e is matches[0])


@pytest.fixture
def app() -> celery.Celery:
    return celery.Celery("shop")


def test_retry_republishes_the_same_task_id_with_retries_plus_one(app, simulation):
    """Each retry is a new message with the same task id and retries one higher (§4.1, G18)."""

    @app.task(shared=False, bind=True)
    def flaky(self):
        raise self.retry(exc=ValueError("boom"))

    sim = simulation(app)
    r = flaky.delay()
    with pytest.raises(ValueError, match=r"^boom$"):
        r.get()
    published = sim.history.where(kind="published")
    assert {e.task_id for e in published} == {r.id}
    assert [e["retries"] for e in published] == [0, 1, 2, 3]
    assert len({e.message_id for e in published}) == 4
    assert [e["retries"] for e in sim.history.where(kind="started")] == [0, 1, 2, 3]


def test_countdown_defaults_to_default_retry_delay(app, simulation):
    """Without countdown or eta a retry runs default_retry_delay (180 s) later (§1.8 step 3)."""

    @app.task(shared=False, bind=True, max_retries=2)
    def flaky(self):
        raise self.retry()

    sim = simulation(app)
    r = flaky.delay()
    with pytest.raises(MaxRetriesExceededError):
        r.get()
    assert offsets(sim, kind="started") == [0.0, 180.0, 360.0]
    retry_etas = [e["eta"] for e in sim.history.where(kind="published")][1:]
    assert retry_etas == ["2030-01-01T00:03:00+00:00", "2030-01-01T00:06:00+00:00"]


def test_task_default_retry_delay_attribute_sets_the_countdown(app, simulation):
    """The task's default_retry_delay replaces the 180 s default (§1.2)."""

    @app.task(shared=False, bind=True, max_retries=1, default_retry_delay=7)
    def flaky(self):
        raise self.retry()

    sim = simulation(app)
    with pytest.raises(MaxRetriesExceededError):
        flaky.delay().get()
    assert offsets(sim, kind="started") == [0.0, 7.0]


def test_explicit_eta_schedules_the_retry(app, simulation):
    """retry(eta=...) runs the retry at that time, not after default_retry_delay (§4.1)."""

    @app.task(shared=False, bind=True, max_retries=1)
    def flaky(self):
        if self.request.retries == 0:
            eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=25)
            raise self.retry(eta=eta)
        return "ok"

    sim = simulation(app)
    assert flaky.delay().get() == "ok"
    assert offsets(sim, kind="started") == [0.0, 25.0]
    assert sim.history.where(kind="published")[1]["eta"] == "2030-01-01T00:00:25+00:00"


def test_countdown_wins_over_eta(app, simulation):
    """When both are given the countdown decides the retry time (§4.1)."""

    @app.task(shared=False, bind=True, max_retries=1)
    def flaky(self):
        if self.request.retries == 0:
            eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=500)
            raise self.retry(eta=eta, countdown=5)
        return "ok"

    sim = simulation(app)
    assert flaky.delay().get() == "ok"
    assert offsets(sim, kind="started") == [0.0, 5.0]


def test_countdown_zero_retries_immediately(app, simulation):
    """retry(countdown=0) publishes a message without an ETA that runs at once (§1.8 step 3)."""

    @app.task(shared=False, bind=True, max_retries=1)
    def flaky(self):
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "ok"

    sim = simulation(app)
    assert flaky.delay().get() == "ok"
    assert [e["eta"] for e in sim.history.where(kind="published")] == [None, None]
    assert offsets(sim, kind="started") == [0.0, 0.0]


def test_max_retries_three_means_four_executions(app, simulation):
    """With the default max_retries=3 the task runs 4 times, then fails (§4.2, Celery test #1)."""
    runs = []

    @app.task(shared=False, bind=True)
    def flaky(self):
        runs.append(self.request.retries)
        raise self.retry(countdown=1)

    simulation(app)
    with pytest.raises(MaxRetriesExceededError):
        flaky.delay().get()
    assert runs == [0, 1, 2, 3]


def test_retry_max_retries_argument_overrides_the_task_attribute(app, simulation):
    """retry(max_retries=5) allows 6 executions although the task says 3 (§4.2)."""
    runs = []

    @app.task(shared=False, bind=True)
    def flaky(self):
        runs.append(self.request.retries)
        raise self.retry(countdown=1, max_retries=5, exc=KeyError("k"))

    simulation(app)
    with pytest.raises(KeyError):
        flaky.delay().get()
    assert runs == [0, 1, 2, 3, 4, 5]


def test_max_retries_none_retries_until_success(app, simulation):
    """A task with max_retries=None keeps retrying until it stops asking (§4.2)."""
    runs = []

    @app.task(shared=False, bind=True, max_retries=None)
    def flaky(self):
        runs.append(self.request.retries)
        if self.request.retries < 10:
            raise self.retry(countdown=1)
        return "done"

    simulation(app)
    assert flaky.delay().get() == "done"
    assert runs == list(range(11))


def test_exc_is_reraised_when_retries_are_exhausted(app, simulation):
    """Past max_retries the exc given to retry() becomes the FAILURE and get() raises it (§4.2)."""

    @app.task(shared=False, bind=True, max_retries=2)
    def flaky(self):
        raise self.retry(exc=ValueError(f"boom {self.request.retries}"), countdown=1)

    sim = simulation(app)
    r = flaky.delay()
    with pytest.raises(ValueError, match=r"^boom 2$"):
        r.get()
    writes = [(e["state"], e["result"]["exc_message"]) for e in sim.history.where(kind="state")]
    assert writes == [
        (states.RETRY, ["boom 0"]),
        (states.RETRY, ["boom 1"]),
        (states.FAILURE, ["boom 2"]),
    ]
    assert r.state == states.FAILURE
    assert len(sim.history.where(kind="published")) == 3


def test_max_retries_exceeded_error_without_exc(app, simulation):
    """Without exc, exhausted retries fail with MaxRetriesExceededError naming the call (§1.8)."""

    @app.task(shared=False, bind=True, max_retries=1, name="shop.charge")
    def charge(self, order, amount=0):
        raise self.retry(countdown=1)

    simulation(app)
    r = charge.delay(1, amount=2)
    pattern = rf"^Can't retry shop\.charge\[{r.id}\] args:\(1,\) kwargs:\{{'amount': 2\}}$"
    with pytest.raises(MaxRetriesExceededError, match=pattern):
        r.get()
    assert r.state == states.FAILURE


def test_max_retries_exceeded_error_carries_task_args_and_kwargs(app, simulation):
    """The MaxRetriesExceededError raised in the body carries task_args and task_kwargs (§4.2)."""

    @app.task(shared=False, bind=True, max_retries=0)
    def charge(self, order, amount=0):
        try:
            self.retry(countdown=1)
        except MaxRetriesExceededError as exc:
            return {"args": list(exc.task_args), "kwargs": exc.task_kwargs}

    simulation(app)
    assert charge.delay(1, amount=2).get() == {"args": [1], "kwargs": {"amount": 2}}


def test_throw_false_success_is_final_and_later_write_is_discarded(app, simulation):
    """retry(throw=False), then return, stores SUCCESS; the retry's write is discarded (§2.2)."""

    @app.task(shared=False, bind=True, max_retries=1)
    def once_more(self):
        if self.request.retries == 0:
            self.retry(countdown=10, throw=False)
            return "first"
        return "second"

    sim = simulation(app)
    r = once_more.delay()
    assert r.get() == "first"
    sim.run()
    assert sim.history.where(kind="published", retries=1).first().time == sim.started_at
    assert [e["state"] for e in sim.history.where(kind="state")] == [states.SUCCESS]
    discarded = sim.history.where(kind="state-discarded")
    assert [(e["state"], e["result"]) for e in discarded] == [(states.SUCCESS, "second")]
    assert offsets(sim, kind="started") == [0.0, 10.0]
    assert app.AsyncResult(r.id).get() == "first"


def test_throw_false_then_raise_stores_failure_that_the_retry_overwrites(app, simulation):
    """retry(throw=False), then an exception, stores FAILURE; the retry replaces it (§2.2)."""

    @app.task(shared=False, bind=True, max_retries=1)
    def once_more(self):
        if self.request.retries == 0:
            self.retry(countdown=10, throw=False)
            raise RuntimeError("after retry")
        return "second"

    sim = simulation(app)
    r = once_more.delay()
    with pytest.raises(RuntimeError, match=r"^after retry$"):
        r.get()
    sim.run()
    assert [e["state"] for e in sim.history.where(kind="state")] == [
        states.FAILURE,
        states.SUCCESS,
    ]
    assert r.state == states.FAILURE  # cached on this instance, as in Celery
    assert app.AsyncResult(r.id).get() == "second"


def test_retry_without_arguments_reuses_the_request_arguments(app, simulation):
    """A plain retry() resends the original args and kwargs (Celery test #2)."""
    seen = []

    @app.task(shared=False, bind=True)
    def add(self, x, y=0):
        seen.append((list(self.request.args), dict(self.request.kwargs)))
        if self.request.retries < 3:
            raise self.retry(countdown=1)
        return x + y

    simulation(app)
    assert add.delay(40, y=2).get() == 42
    assert seen == [([40], {"y": 2})] * 4


@pytest.mark.parametrize(
    ("retry_with", "call_args", "call_kwargs", "expected"),
    [
        pytest.param(
            {"args": (2, 3)},
            (),
            {"foo": 1, "bar": 2, "label": "kept"},
            [[2, 3], {"label": "kept"}],
            marks=MERGES_RETRY_ARGUMENTS,
        ),
        pytest.param(
            {"args": (7,)},
            (),
            {"foo": 1, "bar": 2},
            [[7], {"bar": 2}],
            marks=MERGES_RETRY_ARGUMENTS,
        ),
        pytest.param(
            {"args": (7, 8)},
            (1,),
            {"bar": 2, "label": "z"},
            [[7, 8], {"label": "z"}],
            marks=MERGES_RETRY_ARGUMENTS,
        ),
        pytest.param(
            {"kwargs": {"bar": 5}}, (1, 2), {}, [[1, 5], {}], marks=MERGES_RETRY_ARGUMENTS
        ),
        pytest.param(
            {"kwargs": {"bar": 5}},
            (1, 2),
            {"label": "x"},
            [[1, 5], {}],
            marks=MERGES_RETRY_ARGUMENTS,
        ),
        ({"kwargs": {"label": "y"}}, (1, 2), {}, [[1, 2], {"label": "y"}]),
        ({"args": (4, 4), "kwargs": {}}, (1, 2), {"label": "x"}, [[4, 4], {}]),
    ],
)
def test_retry_arguments_merge_with_the_original_call(
    app, simulation, retry_with, call_args, call_kwargs, expected
):
    """Explicit retry args or kwargs merge with the original call as in 5.7 (§1.8 step 4)."""
    seen = []

    @app.task(shared=False, bind=True, max_retries=1)
    def task(self, foo, bar, label="default"):
        seen.append([list(self.request.args), dict(self.request.kwargs)])
        if self.request.retries == 0:
            raise self.retry(countdown=0, **retry_with)
        return [foo, bar, label]

    simulation(app)
    task.apply_async(call_args, call_kwargs).get()
    assert seen[1] == expected


def test_retry_inherits_the_absolute_expiry(app, simulation):
    """A retry keeps the original absolute expires; past it, REVOKED 'expired' (§4.1, exp14)."""
    runs = []

    @app.task(shared=False, bind=True)
    def slow(self):
        runs.append(self.request.retries)
        raise self.retry(countdown=150)

    sim = simulation(app)
    r = slow.apply_async(expires=100)
    with pytest.raises(TaskRevokedError, match=r"^expired$"):
        r.get()
    published = sim.history.where(kind="published")
    assert [e["expires"] for e in published] == ["2030-01-01T00:01:40+00:00"] * 2
    assert runs == [0]
    revoked = sim.history.where(kind="revoked")
    assert [(e.message_id, e["reason"]) for e in revoked] == [(published[1].message_id, "expired")]
    assert offsets(sim, kind="revoked") == [150.0]
    assert sim.history.where(kind="acked", message_id=published[1].message_id).first()
    assert r.state == states.REVOKED


def test_retry_inherits_time_limits(app, simulation):
    """The retry's request carries the original call's time limits (§4.1, exp2)."""
    seen = []

    @app.task(shared=False, bind=True, max_retries=1)
    def limited(self):
        req = self.request
        # 5.5's Context has only the timelimit pair; 5.7 also unpacks it (app/task.py).
        unpacked = (getattr(req, "time_limit", None), getattr(req, "soft_time_limit", None))
        seen.append((list(req.timelimit), *unpacked))
        if req.retries == 0:
            raise self.retry(countdown=1)
        return "ok"

    simulation(app)
    assert limited.apply_async(time_limit=30, soft_time_limit=20).get() == "ok"
    unpacked = (30, 20) if CELERY_VERSION >= (5, 7) else (None, None)
    assert seen == [([30, 20], *unpacked)] * 2


def test_retry_goes_to_the_queue_the_task_came_from(app, simulation):
    """A task sent to queue 'q2' retries into 'q2' (§4.1 routing)."""

    @app.task(shared=False, bind=True, max_retries=1)
    def routed(self):
        if self.request.retries == 0:
            raise self.retry(countdown=1)
        return self.request.delivery_info["routing_key"]

    sim = simulation(app, workers=0)
    sim.add_worker(queues=["q2"])
    assert routed.apply_async(queue="q2").get() == "q2"
    assert [e["queue"] for e in sim.history.where(kind="published")] == ["q2", "q2"]
    assert [e["queue"] for e in sim.history.where(kind="delivered")] == ["q2", "q2"]


def test_retry_keeps_the_priority(simulation):
    """The retry message keeps the original delivery priority (§4.1)."""
    app = celery.Celery("shop")
    app.conf.task_queue_max_priority = 10

    @app.task(shared=False, bind=True, max_retries=1)
    def urgent(self):
        if self.request.retries == 0:
            raise self.retry(countdown=1)
        return self.request.delivery_info["priority"]

    sim = simulation(app)
    assert urgent.apply_async(priority=7).get() == 7
    assert [e["priority"] for e in sim.history.where(kind="published")] == [7, 7]


def test_retry_keeps_custom_headers(app, simulation):
    """Custom message headers travel with the retry (§4.1)."""
    seen = []

    @app.task(shared=False, bind=True, max_retries=1)
    def tagged(self):
        seen.append(self.request.headers)
        if self.request.retries == 0:
            raise self.retry(countdown=1)

    simulation(app)
    tagged.apply_async(headers={"x-tenant": "acme"}).get()
    assert seen == [{"x-tenant": "acme"}] * 2


def test_retry_of_a_root_task_has_its_own_id_as_parent(app, simulation):
    """The retry message's parent_id is the retrying task's own id; root_id is kept (§4.1, exp2)."""

    @app.task(shared=False, bind=True, max_retries=1)
    def flaky(self):
        if self.request.retries == 0:
            raise self.retry(countdown=1)
        return [self.request.parent_id, self.request.root_id]

    sim = simulation(app)
    r = flaky.delay()
    assert r.get() == [r.id, r.id]
    published = sim.history.where(kind="published")
    assert [(e["parent_id"], e["root_id"]) for e in published] == [(None, r.id), (r.id, r.id)]


def test_state_is_retry_with_the_exception_between_attempts(app, simulation):
    """Between attempts a fresh AsyncResult shows RETRY with the exc as result (§4.3)."""

    @app.task(shared=False, bind=True, max_retries=1)
    def flaky(self):
        if self.request.retries == 0:
            raise self.retry(exc=ValueError("later"), countdown=60)
        return "ok"

    sim = simulation(app)
    r = flaky.delay()
    sim.advance(30)
    waiting = app.AsyncResult(r.id)
    assert waiting.state == states.RETRY
    assert not waiting.ready()
    assert isinstance(waiting.result, ValueError)
    assert waiting.result.args == ("later",)
    assert r.get() == "ok"
    assert [e["state"] for e in sim.history.where(kind="state")] == [states.RETRY, states.SUCCESS]


def test_retry_is_published_before_retry_state_before_late_ack(app, simulation):
    """For acks_late, PUB(retry) precedes ST(RETRY), which precedes ACK(old message) (G13)."""

    @app.task(shared=False, bind=True, max_retries=1, acks_late=True)
    def flaky(self):
        if self.request.retries == 0:
            raise self.retry(countdown=5)
        return "ok"

    sim = simulation(app)
    flaky.delay().get()
    first = sim.history.where(kind="published")[0].message_id
    pub = index(sim, kind="published", retries=1)
    st = index(sim, kind="state", state=states.RETRY)
    ack = index(sim, kind="acked", message_id=first)
    assert pub < st < ack


def test_retries_header_grows_by_exactly_one(app, simulation):
    """Across the retry messages of a task the retries header increases by exactly 1 (G18)."""

    @app.task(shared=False, bind=True, max_retries=6)
    def flaky(self):
        if self.request.retries < 6:
            raise self.retry(countdown=self.request.retries)
        return "ok"

    sim = simulation(app)
    r = flaky.delay()
    assert r.get() == "ok"
    retries = [e["retries"] for e in sim.history.where(kind="published", task_id=r.id)]
    assert [b - a for a, b in itertools.pairwise(retries)] == [1] * 6


def test_retry_of_a_child_task_keeps_its_parent(app, simulation):
    """A retried subtask keeps the parent_id of the task that sent it (§4.1, §5.5)."""

    @app.task(shared=False, bind=True, max_retries=1, name="shop.child")
    def child(self):
        if self.request.retries == 0:
            raise self.retry(countdown=1)
        return self.request.parent_id

    @app.task(shared=False, bind=True, name="shop.parent")
    def parent(self):
        return child.delay().id

    sim = simulation(app)
    parent_result = parent.delay()
    child_id = parent_result.get()
    assert app.AsyncResult(child_id).get() == parent_result.id
    published = sim.history.where(kind="published", task_id=child_id)
    assert [e["parent_id"] for e in published] == [parent_result.id] * 2
    assert [e["root_id"] for e in published] == [parent_result.id] * 2


def test_countdown_counts_from_the_retry_call(app, simulation):
    """The retry's ETA is measured from when retry() is called, not from the start (§4.1)."""

    @app.task(shared=False, bind=True, max_retries=1)
    def slow(self):
        time.sleep(5)
        if self.request.retries == 0:
            raise self.retry(countdown=10)
        return "ok"

    sim = simulation(app)
    assert slow.delay().get() == "ok"
    assert offsets(sim, kind="started") == [0.0, 15.0]
    assert offsets(sim, kind="published") == [0.0, 5.0]
