"""Tests for simq.history: frozen events, filtering and lossless JSON Lines round trips."""

from __future__ import annotations

import datetime as dt

import attrs
import celery
import pytest

import simq
from simq.history import Event, History

T0 = 1_893_456_000.0  # 2030-01-01T00:00:00Z


def sample() -> History:
    return History(
        [
            Event("worker-online", T0, worker="w1", details={"queues": ["celery"]}),
            Event("published", T0, "t1", "m1", details={"task": "a", "queue": "celery"}),
            Event("published", T0 + 0.25, "t2", "m2", details={"task": "b", "queue": "q2"}),
            Event(
                "delivered", T0 + 0.5, "t1", "m1", "w1", {"queue": "celery", "redelivered": False}
            ),
            Event("delivered", T0 + 0.5, "t2", "m2", "w2", {"queue": "q2", "redelivered": True}),
            Event("state", T0 + 1, "t1", None, "w1", {"state": "SUCCESS", "result": 3}),
            Event("state", T0 + 2, "t2", None, "w2", {"state": "FAILURE", "result": None}),
        ]
    )


def simulated() -> History:
    app = celery.Celery("hist")

    @app.task(shared=False, bind=True, max_retries=1)
    def flaky(self: celery.Task, label: str) -> dict[str, object]:
        if not self.request.retries:
            raise self.retry(exc=ValueError("later", 2), countdown=1.5)
        return {"label": label, "nested": [1, 2.5, None, {"ok": True}]}

    with simq.Simulation(app, seed=3, workers=2) as sim:
        flaky.delay('héllo "quoted" \n line ☃')
        flaky.apply_async(("x",), countdown=0.1, priority=4)
        sim.run()
        return sim.history


def test_event_is_frozen() -> None:
    """Assigning to an event's field raises FrozenInstanceError."""
    event = Event("acked", T0, "t1", "m1", "w1")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.kind = "rejected"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.time = T0 + 1  # type: ignore[misc]


def test_event_at_is_timezone_aware_utc() -> None:
    """Event.at is the event's time as an aware datetime in UTC."""
    at = Event("acked", T0 + 1.5).at
    assert at == dt.datetime(2030, 1, 1, 0, 0, 1, 500000, tzinfo=dt.timezone.utc)
    assert at.utcoffset() == dt.timedelta(0)
    assert at.tzinfo is dt.timezone.utc


def test_event_item_access_reads_details() -> None:
    """event["key"] reads the event's details."""
    event = Event("rejected", T0, details={"requeue": True})
    assert event["requeue"] is True
    with pytest.raises(KeyError):
        event["missing"]


def test_where_filters_on_fields() -> None:
    """where() keeps the events whose kind, task id and worker equal the criteria."""
    history = sample()
    assert history.where(kind="published").kinds() == ["published", "published"]
    assert [e.time for e in history.where(task_id="t2")] == [T0 + 0.25, T0 + 0.5, T0 + 2]
    assert history.where(worker="w1").kinds() == ["worker-online", "delivered", "state"]
    assert history.where(kind="delivered", worker="w2").kinds() == ["delivered"]
    assert len(history.where(kind="delivered", worker="w3")) == 0


def test_where_filters_on_details() -> None:
    """Keywords other than the event fields match the event's details."""
    history = sample()
    assert [e.task_id for e in history.where(queue="q2")] == ["t2", "t2"]
    assert [e.task_id for e in history.where(kind="state", state="SUCCESS")] == ["t1"]
    assert [e.task_id for e in history.where(redelivered=False)] == ["t1"]
    assert [e.task_id for e in history.where(result=None)] == ["t2"]


def test_where_with_a_missing_detail_matches_nothing() -> None:
    """An event without the detail key never matches it, not even against None."""
    history = sample()
    assert len(history.where(kind="published", state=None)) == 0


def test_where_with_a_collection_matches_any_member() -> None:
    """A list, tuple or set criterion matches an event whose value is any of its members."""
    history = sample()
    assert history.where(kind=["published", "state"]).kinds() == [
        "published",
        "published",
        "state",
        "state",
    ]
    assert len(history.where(task_id=("t1", "t2"), kind="delivered")) == 2
    assert [e.worker for e in history.where(worker={"w2"})] == ["w2", "w2"]
    assert [e.task_id for e in history.where(state=frozenset({"FAILURE", "REVOKED"}))] == ["t2"]
    assert len(history.where(kind=[])) == 0


def test_where_treats_a_string_as_one_value() -> None:
    """A string criterion is compared whole, never as a collection of characters."""
    history = History([Event("a", T0), Event("ab", T0)])
    assert history.where(kind="ab").kinds() == ["ab"]


def test_jsonl_round_trip_of_a_simulation_is_exact() -> None:
    """from_jsonl(to_jsonl()) gives an equal history that writes the identical text."""
    history = simulated()
    text = history.to_jsonl()
    back = History.from_jsonl(text)
    assert back == history
    assert back.to_jsonl() == text
    assert len(back) == len(history) == len(text.splitlines())
    assert all(isinstance(e.time, float) for e in back)


def test_jsonl_round_trip_keeps_unicode_floats_and_nesting() -> None:
    """Non-ASCII text, exact floats and nested details survive a round trip."""
    history = History(
        [
            Event(
                "state",
                0.1 + 0.2,
                "t☃",
                None,
                "wörker",
                {"result": {"x": [1, 2.5e-7, None, True, 'é\n"q"']}, "when": 1e300},
            ),
            Event("acked", T0 + 1 / 3),
        ]
    )
    text = history.to_jsonl()
    assert "☃" in text
    back = History.from_jsonl(text)
    assert back == history
    assert back[0].time == 0.1 + 0.2
    assert back[1].time == T0 + 1 / 3
    assert back.to_jsonl() == text


def test_to_jsonl_writes_one_line_per_event() -> None:
    """Each event is one compact JSON line ending in a newline; an empty history is ''."""
    text = sample().to_jsonl()
    assert text.endswith("\n")
    assert text.splitlines()[1] == (
        '{"kind":"published","time":1893456000.0,"task_id":"t1","message_id":"m1",'
        '"worker":null,"details":{"task":"a","queue":"celery"}}'
    )
    assert History().to_jsonl() == ""
    assert History.from_jsonl("") == History()


def test_from_jsonl_skips_blank_lines() -> None:
    """Blank lines between events are ignored."""
    lines = sample().to_jsonl().splitlines()
    text = "\n" + lines[0] + "\n   \n" + lines[1] + "\n\n"
    assert History.from_jsonl(text) == sample()[:2]


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("{not json", r"Expecting property name enclosed in double quotes: .+"),
        ('{"kind": "acked", "time": 1.0, "colour": "red"}', r".*unexpected keyword argument.+"),
        ("[1, 2]", r".+ must be a mapping.*"),
        ('{"time": 1.0}', r".*missing 1 required positional argument: 'kind'"),
    ],
)
def test_from_jsonl_names_the_malformed_line(bad_line: str, reason: str) -> None:
    """A line that is not an event raises ValueError naming its line number."""
    good = sample().to_jsonl().splitlines()[0]
    text = f"{good}\n\n{bad_line}\n{good}\n"
    with pytest.raises(ValueError, match=rf"^line 3 is not a history event: {reason}$"):
        History.from_jsonl(text)


def test_history_indexing_slicing_first_last() -> None:
    """A history indexes to events, slices to histories, and names an empty one."""
    history = sample()
    assert history[0].kind == "worker-online"
    assert isinstance(history[1:3], History)
    assert history[1:3].kinds() == ["published", "published"]
    assert history.first() is history[0]
    assert history.last() is history[-1]
    with pytest.raises(IndexError, match=r"^the history is empty$"):
        History().first()
    with pytest.raises(IndexError, match=r"^the history is empty$"):
        History().last()
