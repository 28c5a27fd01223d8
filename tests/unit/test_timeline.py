"""simq.timeline: the attempt/fault model, the terminal timeline and the HTML page, on
real simulated histories with faults (the browser test draws the page: see
tests/integration/test_timeline_browser.py)."""

from __future__ import annotations

import collections
import json
import re
import time
from pathlib import Path

import pytest

import simq
from simq.examples import orders as ex
from simq.examples.campaign import sample_history
from simq.history import Event, History
from simq.timeline import attempts, markers, render_html, render_text, write_html
from simq.timeline.model import OUTCOMES, build


def orders_history() -> simq.History:
    """The order example with a worker crash and a lost connection (the docs' example)."""
    return sample_history()


@pytest.fixture(scope="module")
def history() -> History:
    return orders_history()


def killed_child_history() -> History:
    """A sleeper whose child is killed at 2 s, and a second one revoked before it runs."""
    app = simq.App("shop")

    @app.task(name="shop.sleeper", acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def sleeper() -> str:
        time.sleep(10)
        return "done"

    with simq.Simulation(app, seed=1, workers=1, concurrency=1) as sim:
        first = sleeper.delay()
        second = sleeper.delay()
        sim.kill_child(first.id, at=2)
        sim.revoke(second.id, at=1)
        sim.run()
        return sim.history


def test_one_bar_per_started_attempt(history: History) -> None:
    """Every started attempt is a bar, in start order, with its task and worker."""
    bars = attempts(history)
    started = history.where(kind="started")
    assert len(bars) == len(started) > 10
    assert [bar.attempt for bar in bars] == [e["attempt"] for e in started]
    for bar, event in zip(bars, started, strict=True):
        assert (bar.task, bar.task_id, bar.worker) == (event["task"], event.task_id, event.worker)
        assert bar.retries == event["retries"]
        assert bar.start == pytest.approx(event.time - history.first().time)
        assert bar.end >= bar.start


def test_every_bar_has_its_first_outcome(history: History) -> None:
    """A bar's outcome is the first outcome event of its attempt, at its end time."""
    origin = history.first().time
    for bar in attempts(history):
        ends = [
            e
            for e in history.where(kind=list(OUTCOMES), attempt=bar.attempt)
            if e.time - origin >= bar.start
        ]
        assert ends, bar
        assert bar.outcome == ends[0].kind
        assert bar.end == pytest.approx(ends[0].time - origin)


def test_attempt_running_at_the_crash_is_requeued(history: History) -> None:
    """A late-ack attempt running on worker-2 when it crashed ends requeued, at the crash,
    and the same message's next started attempt links back to it as a redelivery."""
    crash = next(m for m in markers(history) if m.kind == "worker-crashed")
    bars = attempts(history)
    crashed = [b for b in bars if b.worker == "worker-2" and b.start <= crash.time < b.end + 1e-9]
    crashed = [b for b in crashed if b.outcome != "succeeded" and b.outcome != "retried"]
    assert crashed
    for bar in crashed:
        assert bar.outcome == "requeued"
        assert bar.detail == "reason: worker-crashed"
        assert bar.end == pytest.approx(crash.time)
    by_attempt = {bar.attempt: bar for bar in bars}
    redeliveries = [b for b in bars if b.previous in {c.attempt for c in crashed}]
    assert redeliveries
    for bar in redeliveries:
        earlier = by_attempt[bar.previous or ""]
        assert bar.previous_via == "message"
        assert bar.message_id == earlier.message_id
        assert bar.redelivered
        assert bar.start >= earlier.end


def test_retries_link_to_the_previous_attempt_of_the_task(history: History) -> None:
    """A retry (a new message of the same task) links to the task's previous attempt."""
    bars = attempts(history)
    by_attempt = {bar.attempt: bar for bar in bars}
    retries = [b for b in bars if b.previous_via == "task"]
    assert retries
    for bar in retries:
        earlier = by_attempt[bar.previous or ""]
        assert earlier.task_id == bar.task_id
        assert earlier.message_id != bar.message_id
        assert bar.retries >= earlier.retries
    first = [b for b in bars if b.previous is None]
    assert all(b.retries == 0 for b in first)


def test_lanes_never_overlap_within_a_worker(history: History) -> None:
    """Two attempts in one lane of a worker never run at the same time, and each lane
    is the lowest free one."""
    bars = attempts(history)
    for a in bars:
        for b in bars:
            if a is not b and a.worker == b.worker and a.lane == b.lane:
                assert a.end <= b.start or b.end <= a.start, (a, b)
    rows = {row.name: row for row in build(history).workers}
    assert {name: row.concurrency for name, row in rows.items()} == {
        "worker-1": 2,
        "worker-2": 2,
    }
    for bar in bars:
        assert 0 <= bar.lane < rows[bar.worker].lanes


def test_faults_are_markers(history: History) -> None:
    """The crash, its worker-offline and the lost connection are markers with their end."""
    found = [(m.kind, m.worker, round(m.time, 3), m.until) for m in markers(history)]
    assert found == [
        ("worker-crashed", "worker-2", 0.7, pytest.approx(15.7)),
        ("worker-offline", "worker-2", 0.7, None),
        ("connection-lost", "worker-1", 12.0, pytest.approx(15.0)),
    ]


def test_killed_child_and_revoke() -> None:
    """kill_child ends its attempt child-killed and is a marker; a revoke is a marker of
    no worker; the redelivered attempt after the kill links to the killed one."""
    history = killed_child_history()
    bars = attempts(history)
    killed = [b for b in bars if b.outcome == "child-killed"]
    assert len(killed) == 1
    assert killed[0].detail == "exit code -9"
    assert killed[0].end == pytest.approx(2.0)
    kinds = [(m.kind, m.worker) for m in markers(history)]
    assert ("child-killed", "worker-1") in kinds
    assert ("revoke", None) in kinds
    text = render_text(history)
    assert "!! child-killed worker-1 at +2s" in text
    assert "broker and control" in text
    assert "!! revoke at +1s" in text


def test_text_timeline(history: History) -> None:
    """One summary line, a block per worker, one line per attempt, faults interleaved."""
    text = render_text(history)
    bars = attempts(history)
    lines = text.splitlines()
    assert lines[0].startswith(
        f"simq timeline: {len({b.task_id for b in bars} | _published(history))} tasks, "
        f"{len(bars)} attempts (succeeded "
    )
    assert "  !! worker-crashed worker-2 at +0.7s (restart after 15 s), until +15.7s" in lines
    assert "  !! connection-lost worker-1 at +12s, until +15s" in lines
    assert [line.split()[0] for line in lines if line.startswith("worker-")] == [
        "worker-1",
        "worker-2",
    ]
    for bar in bars:
        matching = [line for line in lines if re.search(rf"\s{re.escape(bar.attempt)}\s", line)]
        assert len(matching) == 1, bar.attempt
        assert f"[lane {bar.lane}]  started -> {bar.outcome} (" in matching[0]
    # The crash comes after the attempts that started before it, in worker-2's block.
    block = lines[lines.index(next(line for line in lines if line.startswith("worker-2"))) :]
    crash = next(i for i, line in enumerate(block) if "worker-crashed" in line)
    before = [line for line in block[1:crash] if line.lstrip().startswith("+")]
    assert before
    assert all(float(line.split()[0][1:-1]) <= 0.7 for line in before)


def _published(history: History) -> set[str]:
    return {e.task_id for e in history.where(kind="published") if e.task_id}


@pytest.mark.parametrize("width", [60, 100, 160])
def test_text_fits_its_width(history: History, width: int) -> None:
    assert max(len(line) for line in render_text(history, width=width).splitlines()) <= width


def test_empty_history() -> None:
    """An empty history renders as text and as HTML, with nothing to draw."""
    assert attempts(History()) == [] == markers(History())
    assert render_text(History()).splitlines() == [
        "simq timeline: 0 tasks, 0 attempts; 0 faults; 0 workers; 0 s, 0 events",
        "(no attempts and no faults)",
    ]
    data = _embedded(render_html(History()))
    assert data["bars"] == data["markers"] == data["workers"] == []


def test_attempt_still_running_at_the_end() -> None:
    """A history cut mid-attempt: the attempt runs to the last event."""
    full = orders_history()
    cut = History(e for e in full if e.time - full.first().time < 0.1)
    running = [b for b in attempts(cut) if b.outcome == "running"]
    assert running
    assert all(b.end == pytest.approx(cut.last().time - cut.first().time) for b in running)


def _embedded(page: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="simq-data">(.*?)</script>', page, re.S)
    assert match
    data: dict[str, object] = json.loads(match.group(1))
    return data


def test_html_is_one_self_contained_file(history: History, tmp_path: Path) -> None:
    """The page loads nothing: no URL, no src=, no link to a stylesheet; the data is
    embedded and matches the model."""
    path = write_html(history, tmp_path / "t.html", notes=["seed 0", "replay: simq demo"])
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "t.html"
    assert page.startswith("<!DOCTYPE html>")
    for needle in ("http", "src=", "<link", "@import", "url(http", "//cdn"):
        assert needle not in page.lower()
    assert "<li>seed 0</li><li>replay: simq demo</li>" in page
    data = _embedded(page)
    assert [bar["attempt"] for bar in data["bars"]] == [b.attempt for b in attempts(history)]  # type: ignore[attr-defined]
    assert len(data["markers"]) == len(markers(history))  # type: ignore[arg-type]


def test_html_escapes_what_it_embeds() -> None:
    """Task names, notes and the title cannot close the script element or inject markup."""
    evil = "</script><script>alert(1)</script><!--"
    history = History(
        [
            Event("worker-online", 10.0, worker="w<1>", details={"concurrency": 1}),
            Event(
                "started", 10.0, "t1", "m1", "w<1>", {"task": evil, "retries": 0, "attempt": "m1.1"}
            ),
            Event("failed", 11.0, "t1", "m1", "w<1>", {"exception": evil, "attempt": "m1.1"}),
        ]
    )
    page = render_html(history, title=evil, notes=[evil])
    assert page.count("</script>") == 2
    assert "<script>alert" not in page
    assert "&lt;/script&gt;" in page
    bar = _embedded(page)["bars"][0]  # type: ignore[index]
    assert bar["task"] == evil and bar["exception"] == evil and bar["outcome"] == "failed"


def test_big_history_renders_quickly() -> None:
    """Thousands of events: the model and the page are built in well under a second each."""
    with simq.Simulation(ex.app, seed=3, workers=4, concurrency=4) as sim:
        for order in range(1, 121):
            ex.place_order.delay(order, 10.0)
        sim.crash_worker("worker-3", at=5, restart_after=10)
        sim.run()
        history = sim.history
    assert len(history) > 3000
    page = render_html(history)
    text = render_text(history)
    outcomes = collections.Counter(bar["outcome"] for bar in _embedded(page)["bars"])  # type: ignore[attr-defined]
    assert sum(outcomes.values()) == len(history.where(kind="started"))
    assert text.count("\n") > len(history.where(kind="started"))
