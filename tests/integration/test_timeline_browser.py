"""The HTML timeline drawn by a real browser: headless Chromium loads the written page
from disk, runs its script and dumps the DOM it drew; the tests count what is there.

Chromium is /usr/bin/chromium (Debian: ``apt-get install chromium``). Under ``CI=true``
a missing Chromium fails the tests (CI installs it); elsewhere they are skipped.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

import simq
from simq.examples import orders as ex
from simq.examples.campaign import sample_history
from simq.history import History
from simq.timeline import attempts, markers, write_html
from simq.timeline.html import OUTCOME_COLOURS
from simq.timeline.model import build

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=5000",
]  # fmt: skip


def _chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        message = "Chromium is missing: sudo apt-get install -y chromium"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(f"{message} (set CI=true to make this a failure)")
    return found


class Element:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.text = ""


class _Collect(HTMLParser):
    """Every element of a page with its attributes and its own text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1].text += data


class Page:
    """The DOM Chromium dumped after the page's script ran."""

    def __init__(self, dom: str) -> None:
        parser = _Collect()
        parser.feed(dom)
        self.dom = dom
        self.elements = parser.elements

    def kind(self, kind: str) -> list[Element]:
        return [e for e in self.elements if e.attrs.get("data-kind") == kind]

    def by_id(self, name: str) -> Element:
        return next(e for e in self.elements if e.attrs.get("id") == name)

    @property
    def range(self) -> tuple[float, float]:
        start, end = self.by_id("chart").attrs["data-range"].split()
        return float(start), float(end)


def draw(history: History, tmp_path: Path, fragment: str = "", name: str = "t") -> Page:
    """Write ``history``'s page, load it in headless Chromium and return the drawn DOM."""
    chromium = _chromium()
    path = write_html(history, tmp_path / f"{name}.html", notes=["seed 0"])
    command = [
        chromium, *FLAGS, f"--user-data-dir={tmp_path / f'{name}-profile'}",
        "--window-size=1400,900", "--dump-dom", path.as_uri() + fragment,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    page = Page(done.stdout)
    # The script ran to its end: it writes the visible range last.
    assert page.by_id("range").text.startswith("showing "), done.stdout[-2000:]
    return page


def orders_history() -> simq.History:
    """The order example with a worker crash and a lost connection (the docs' example)."""
    return sample_history()


def test_page_draws_every_attempt_fault_lane_and_link(tmp_path: Path) -> None:
    history = orders_history()
    page = draw(history, tmp_path)
    bars = attempts(history)

    drawn = page.kind("bar")
    assert len(drawn) == len(bars) == len(history.where(kind="started"))
    assert [e.attrs["data-attempt"] for e in drawn] == [b.attempt for b in bars]
    for element, bar in zip(drawn, bars, strict=True):
        assert element.tag == "rect"
        assert element.attrs["data-outcome"] == bar.outcome
        assert element.attrs["data-worker"] == bar.worker
        assert element.attrs["fill"] == OUTCOME_COLOURS[bar.outcome]
        assert float(element.attrs["width"]) >= 3

    faults = collections.Counter(m.kind for m in markers(history))
    assert faults == {"worker-crashed": 1, "worker-offline": 1, "connection-lost": 1}
    assert collections.Counter(e.attrs["data-fault"] for e in page.kind("marker")) == faults
    crash = next(e for e in page.kind("marker") if e.attrs["data-fault"] == "worker-crashed")
    assert crash.attrs["data-worker"] == "worker-2"
    assert {e.attrs["data-fault"] for e in page.kind("outage")} == {
        "worker-crashed",
        "connection-lost",
    }

    lanes = collections.Counter(e.attrs["data-worker"] for e in page.kind("lane"))
    assert lanes == {row.name: row.lanes for row in build(history).workers}
    assert lanes == {"worker-1": 2, "worker-2": 2}

    links = page.kind("link")
    linked = [b for b in bars if b.previous is not None]
    assert links and len(links) == len(linked)
    assert {
        (e.attrs["data-from"], e.attrs["data-attempt"], e.attrs["data-via"]) for e in links
    } == {(b.previous, b.attempt, b.previous_via) for b in linked}
    assert {"message", "task"} <= {e.attrs["data-via"] for e in links}
    for link in links:
        assert link.attrs["d"].startswith("M")

    legend = {e.attrs["data-legend"]: e for e in page.elements if "data-legend" in e.attrs}
    for outcome in {b.outcome for b in bars}:
        assert outcome in legend, outcome
        assert legend[outcome].attrs["data-color"] == OUTCOME_COLOURS[outcome]
    assert {"fault-worker-crashed", "fault-connection-lost", "link-task"} <= set(legend)


def test_zoom_from_the_url_fragment(tmp_path: Path) -> None:
    """``#zoom=4`` narrows the visible time range to a quarter, ``&at=`` keeps that time
    where it was; bars and markers are all still in the DOM."""
    history = orders_history()
    whole = draw(history, tmp_path, name="whole")
    start, end = whole.range
    span = build(history).span
    assert start < 0 <= span < end
    zoomed = draw(history, tmp_path, "#zoom=4", name="zoomed")
    zstart, zend = zoomed.range
    assert zend - zstart == pytest.approx((end - start) / 4, rel=1e-4)
    assert zstart == pytest.approx((start + end) / 2 - (end - start) / 8, abs=1e-4)
    anchored = draw(history, tmp_path, "#zoom=10&at=0", name="anchored")
    astart, aend = anchored.range
    assert aend - astart == pytest.approx((end - start) / 10, rel=1e-4)
    # Time 0 stays at the same place on screen: as far from the left edge, in tenths.
    assert astart == pytest.approx(start / 10, abs=1e-4)
    assert len(zoomed.kind("bar")) == len(whole.kind("bar"))
    assert len(zoomed.kind("marker")) == len(whole.kind("marker"))


def test_empty_history_page(tmp_path: Path) -> None:
    page = draw(History(), tmp_path)
    for kind in ("bar", "marker", "link", "lane"):
        assert page.kind(kind) == []
    assert "empty history" in page.dom


def test_thousands_of_events(tmp_path: Path) -> None:
    """A big run: every started attempt is drawn, in lanes no wider than the workers'."""
    with simq.Simulation(ex.app, seed=3, workers=4, concurrency=4) as sim:
        for order in range(1, 121):
            ex.place_order.delay(order, 10.0)
        sim.crash_worker("worker-3", at=5, restart_after=10)
        sim.lose_connection("worker-1", at=20, reconnect_after=5)
        sim.run()
        history = sim.history
    assert len(history) > 3000
    page = draw(history, tmp_path)
    assert len(page.kind("bar")) == len(history.where(kind="started"))
    assert len(page.kind("lane")) == 16
    assert len(page.kind("marker")) == len(markers(history))
    assert len(page.kind("link")) == sum(1 for b in attempts(history) if b.previous is not None)
