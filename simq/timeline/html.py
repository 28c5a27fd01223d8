"""A history as one self-contained, interactive HTML page.

The page holds its CSS, its script and the timeline's data (JSON, ``<`` escaped) inline
and loads nothing: open it from disk, attach it to a CI run, mail it. The script draws
an SVG chart from the data: workers as blocks, child lanes as rows, attempts as bars
coloured by outcome, retries and redeliveries as arrows from one attempt to the next,
faults as vertical markers, outages (a crashed worker, a lost connection) as hatched
spans. Hovering shows details; the mouse wheel, the buttons, drag and shift+wheel zoom
and pan the time axis. ``#zoom=4`` (and ``&at=12.5``, a time to centre on) in the URL
zooms at load.

Every drawn element carries ``data-kind`` (``bar``, ``link``, ``marker``, ``lane``,
``outage``) and, as they apply, ``data-attempt``, ``data-outcome``, ``data-worker``,
``data-fault``; the chart's ``data-range`` is the visible time range, "start end".
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simq.history import History
from simq.timeline.model import OUTCOMES, RUNNING, Timeline, build
from simq.timeline.text import summary

__all__ = ["FAULT_COLOURS", "OUTCOME_COLOURS", "render_html", "write_html"]

#: Bar fill by outcome.
OUTCOME_COLOURS: dict[str, str] = {
    "succeeded": "#2f9e5b",
    "failed": "#d9453c",
    "retried": "#f0a030",
    "ignored": "#98a2ad",
    "declined": "#8e63c7",
    "revoked": "#5f6b78",
    "child-lost": "#a8321f",
    "child-killed": "#6e1b10",
    "cancelled": "#c96f16",
    "time-limit": "#e0559b",
    "lost": "#1f1f1f",
    "requeued": "#3b82c4",
    RUNNING: "#cfd8e3",
}
#: Marker colour by fault kind.
FAULT_COLOURS: dict[str, str] = {
    "worker-crashed": "#d9453c",
    "connection-lost": "#e67e22",
    "child-killed": "#6e1b10",
    "shutdown": "#5f6b78",
    "broker-restarted": "#8e44ad",
    "revoke": "#5f6b78",
    "fault-skipped": "#98a2ad",
    "worker-offline": "#98a2ad",
}


def render_html(history: History, title: str = "simq timeline", notes: Sequence[str] = ()) -> str:
    """``history`` as a self-contained HTML page; ``notes`` are listed at the top."""
    timeline = build(history)
    payload = json.dumps(_data(timeline), separators=(",", ":"), ensure_ascii=False)
    # Inside <script>, "</script" or "<!--" would end or confuse the element: no "<" at all.
    payload = payload.replace("<", "\\u003c")
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return (
        _PAGE.replace("__TITLE__", html.escape(title))
        .replace("__SUMMARY__", html.escape(summary(timeline)))
        .replace("__NOTES__", f'<ul class="notes">{items}</ul>' if items else "")
        .replace("__STYLE__", _STYLE)
        .replace("__SCRIPT__", _SCRIPT)
        .replace("__DATA__", payload)
    )


def write_html(
    history: History,
    path: str | os.PathLike[str],
    *,
    title: str = "simq timeline",
    notes: Sequence[str] = (),
) -> Path:
    """Write :func:`render_html` of ``history`` to ``path``; return the path."""
    target = Path(path)
    target.write_text(render_html(history, title=title, notes=notes), encoding="utf-8")
    return target


def _data(timeline: Timeline) -> dict[str, Any]:
    present = {bar.outcome for bar in timeline.bars}
    order = [kind for kind in (*OUTCOMES, RUNNING) if kind in present]
    order += sorted(present - set(order))
    return {
        "span": timeline.span,
        "outcomes": order,
        "colors": {kind: OUTCOME_COLOURS.get(kind, "#888888") for kind in order},
        "faultColors": FAULT_COLOURS,
        "workers": [
            {"name": row.name, "concurrency": row.concurrency, "lanes": row.lanes}
            for row in timeline.workers
        ],
        "bars": [
            {
                "attempt": bar.attempt,
                "task": bar.task,
                "taskId": bar.task_id,
                "message": bar.message_id,
                "worker": bar.worker,
                "lane": bar.lane,
                "start": bar.start,
                "end": bar.end,
                "outcome": bar.outcome,
                "retries": bar.retries,
                "redelivered": bar.redelivered,
                "previous": bar.previous,
                "via": bar.previous_via,
                "exception": bar.exception,
                "detail": bar.detail,
            }
            for bar in timeline.bars
        ],
        "markers": [
            {
                "kind": marker.kind,
                "time": marker.time,
                "worker": marker.worker,
                "taskId": marker.task_id,
                "attempt": marker.attempt,
                "label": marker.label,
                "until": marker.until,
            }
            for marker in timeline.markers
        ],
    }


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__STYLE__</style>
</head>
<body>
<header>
<h1>__TITLE__</h1>
<p class="summary">__SUMMARY__</p>
__NOTES__
</header>
<div class="toolbar">
<button type="button" id="zoom-in" title="zoom in (+)">+</button>
<button type="button" id="zoom-out" title="zoom out (-)">&minus;</button>
<button type="button" id="reset" title="show everything (0)">reset</button>
<span id="range" class="range"></span>
<span class="hint">wheel: zoom &middot; drag or shift+wheel: pan &middot; double-click: reset</span>
</div>
<div id="legend" class="legend"></div>
<div id="wrap"><svg id="chart" role="img" aria-label="timeline"></svg></div>
<div id="tip" class="tip" hidden></div>
<script type="application/json" id="simq-data">__DATA__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""

_STYLE = """
:root { color-scheme: light; }
body { margin: 0; padding: 12px 16px; font: 13px/1.4 system-ui, -apple-system, "Segoe UI",
  Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2530; background: #fff; }
header h1 { font-size: 17px; margin: 0 0 2px; }
.summary { margin: 0 0 4px; color: #4a5563; }
.notes { margin: 4px 0 6px; padding: 6px 10px 6px 26px; background: #f5f7fa;
  border-left: 3px solid #3b82c4; font: 12px/1.5 ui-monospace, SFMono-Regular, Menlo,
  Consolas, monospace; white-space: pre-wrap; }
.toolbar { display: flex; align-items: center; gap: 6px; margin: 6px 0 4px; }
.toolbar button { font: inherit; min-width: 30px; padding: 2px 8px; border: 1px solid #b8c2cc;
  border-radius: 4px; background: #f8fafc; cursor: pointer; }
.toolbar button:hover { background: #e9eef4; }
.range { font-variant-numeric: tabular-nums; color: #4a5563; margin-left: 6px; }
.hint { margin-left: auto; color: #8592a0; font-size: 12px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 2px 0 6px; font-size: 12px;
  color: #334; }
.legend span.item { display: inline-flex; align-items: center; gap: 5px; }
.legend i { display: inline-block; width: 14px; height: 10px; border-radius: 2px; }
.legend i.outline { background: #fff; border: 1.5px solid #1d2530; }
.legend i.line { height: 0; border-top: 2px solid; border-radius: 0; width: 18px; }
.legend i.dash { border-top-style: dashed; }
.legend i.vline { width: 0; height: 12px; border-left: 2px solid; border-radius: 0; }
#wrap { border: 1px solid #dde3ea; border-radius: 4px; overflow: hidden; }
svg { display: block; user-select: none; cursor: grab; }
svg.dragging { cursor: grabbing; }
svg text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
.axis text { fill: #5b6775; font-variant-numeric: tabular-nums; }
.grid { stroke: #e4e9ef; }
.worker-name { font-weight: 600; fill: #1d2530; }
.lane-name { fill: #8592a0; font-size: 10px; }
.head { fill: #f1f4f8; }
.lane { fill: #fbfcfd; }
.lane.odd { fill: #f6f8fa; }
.bar { stroke: rgba(0,0,0,.25); stroke-width: .5; }
.bar.redelivered { stroke: #1d2530; stroke-width: 1.2; }
.bar.running { stroke: #6b7b8c; stroke-dasharray: 2 2; }
.bar.hl { stroke: #0b63ce; stroke-width: 2.2; }
.link { fill: none; stroke-width: 1.3; opacity: .75; }
.link.message { stroke: #3b82c4; stroke-dasharray: 4 3; }
.link.task { stroke: #c98512; }
.link:hover, .link.hl { opacity: 1; stroke-width: 2.4; }
.marker-label { font-size: 10.5px; font-weight: 600; }
.hit { stroke: transparent; stroke-width: 9; }
.empty { fill: #8592a0; font-size: 14px; }
.tip { position: fixed; z-index: 10; max-width: 460px; padding: 6px 9px; background: #1d2530;
  color: #f4f6f8; border-radius: 4px; font-size: 12px; pointer-events: none;
  box-shadow: 0 2px 8px rgba(0,0,0,.25); }
.tip table { border-collapse: collapse; }
.tip th { text-align: left; font-weight: 400; color: #a9b4c0; padding: 0 10px 0 0;
  vertical-align: top; white-space: nowrap; }
.tip td { padding: 0; word-break: break-word; }
.tip .title { font-weight: 600; margin-bottom: 3px; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("simq-data").textContent);
  var svg = document.getElementById("chart");
  var NS = svg.namespaceURI;
  var wrap = document.getElementById("wrap");
  var tip = document.getElementById("tip");
  var LEFT = 150, RIGHT = 20, AXIS = 24, HEAD = 32, GAP = 10, GLOBAL = 24, LABEL_CHAR = 6.1;

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(parent, x, y, value, cls) {
    var node = el("text", {x: x, y: y}, parent);
    if (cls) node.setAttribute("class", cls);
    node.textContent = value;
    return node;
  }
  function seconds(t) {
    var s = (Math.round(t * 1000) / 1000).toFixed(3).replace(/0+$/, "").replace(/\.$/, "");
    return s === "-0" ? "0" : s;
  }

  // ---- legend --------------------------------------------------------------------
  var legend = document.getElementById("legend");
  function legendItem(swatch, label, attrs) {
    var item = document.createElement("span");
    item.className = "item";
    for (var key in attrs) item.setAttribute(key, attrs[key]);
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(label));
    legend.appendChild(item);
  }
  var counts = {};
  data.bars.forEach(function (b) { counts[b.outcome] = (counts[b.outcome] || 0) + 1; });
  data.outcomes.forEach(function (kind) {
    var i = document.createElement("i");
    i.style.background = data.colors[kind];
    legendItem(i, kind + " (" + counts[kind] + ")", {"data-legend": kind,
      "data-color": data.colors[kind]});
  });
  if (data.bars.some(function (b) { return b.redelivered; })) {
    var outline = document.createElement("i");
    outline.className = "outline";
    legendItem(outline, "redelivered (outlined)", {"data-legend": "redelivered"});
  }
  [["message", "#3b82c4", "redelivery (same message)"],
   ["task", "#c98512", "retry (same task)"]].forEach(function (t) {
    if (!data.bars.some(function (b) { return b.via === t[0]; })) return;
    var i = document.createElement("i");
    i.className = "line" + (t[0] === "message" ? " dash" : "");
    i.style.borderColor = t[1];
    legendItem(i, t[2], {"data-legend": "link-" + t[0]});
  });
  var faultKinds = [];
  data.markers.forEach(function (m) {
    if (faultKinds.indexOf(m.kind) < 0) faultKinds.push(m.kind);
  });
  faultKinds.forEach(function (kind) {
    var i = document.createElement("i");
    i.className = "vline";
    i.style.borderColor = data.faultColors[kind] || "#5f6b78";
    legendItem(i, kind, {"data-legend": "fault-" + kind});
  });

  // ---- vertical layout: fixed at load ---------------------------------------------
  var bars = data.bars, markers = data.markers, workers = data.workers;
  var globals = markers.filter(function (m) { return m.worker === null; });
  // Lanes fill the window's height when there are few, between 24 and 48 pixels.
  var laneCount = workers.reduce(function (n, w) { return n + w.lanes; }, 0);
  var room = window.innerHeight - wrap.getBoundingClientRect().top - 24 - AXIS -
    (globals.length ? GLOBAL : 0) - workers.length * (HEAD + GAP);
  var LANE = Math.max(24, Math.min(48, Math.floor(room / Math.max(laneCount, 1))));
  var BAR = Math.round(LANE * 0.58);
  var blocks = {};
  var y = AXIS + (globals.length ? GLOBAL : 0) + 4;
  workers.forEach(function (w) {
    blocks[w.name] = {top: y, laneTop: y + HEAD, bottom: y + HEAD + w.lanes * LANE};
    y = blocks[w.name].bottom + GAP;
  });
  // A worker a marker names but no block exists for (only markers, no attempts) has none.
  var height = Math.max(y + 6, 120);
  svg.setAttribute("height", height);

  var span = data.span;
  var pad = span > 0 ? span * 0.01 : 0.5;
  var full0 = -pad, full1 = span + pad;
  var view0 = full0, view1 = full1, plotW = 600;

  function X(t) { return LEFT + (t - view0) / (view1 - view0) * plotW; }
  function timeAt(px) { return view0 + (px - LEFT) / plotW * (view1 - view0); }

  // ---- static elements ---------------------------------------------------------------
  var defs = el("defs", {}, svg);
  var clip = el("rect", {x: LEFT, y: 0, width: plotW, height: height},
    el("clipPath", {id: "plot"}, defs));
  var hatch = el("pattern", {id: "hatch", width: 6, height: 6,
    patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)"}, defs);
  el("rect", {width: 6, height: 6, fill: "#ffffff", "fill-opacity": "0"}, hatch);
  el("line", {x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#000", "stroke-width": 2,
    "stroke-opacity": ".13"}, hatch);
  [["message", "#3b82c4"], ["task", "#c98512"]].forEach(function (pair) {
    var m = el("marker", {id: "arrow-" + pair[0], viewBox: "0 0 8 8", refX: 7, refY: 4,
      markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse"}, defs);
    el("path", {d: "M0,0 L8,4 L0,8 z", fill: pair[1]}, m);
  });

  var gLanes = el("g", {}, svg);
  var gAxis = el("g", {"class": "axis"}, svg);
  var gPlot = el("g", {"clip-path": "url(#plot)"}, svg);
  var gOutage = el("g", {}, gPlot);
  var gBars = el("g", {}, gPlot);
  var gLinks = el("g", {}, gPlot);
  var gMarkers = el("g", {}, gPlot);

  var laneRects = [], heads = [];
  if (globals.length) {
    heads.push(el("rect", {"class": "head", x: 0, y: AXIS, height: GLOBAL - 2}, gLanes));
    text(gLanes, 8, AXIS + 15, "broker / control", "worker-name");
  }
  workers.forEach(function (w) {
    var b = blocks[w.name];
    heads.push(el("rect", {"class": "head", x: 0, y: b.top, height: HEAD}, gLanes));
    text(gLanes, 8, b.top + 13, w.name, "worker-name");
    text(gLanes, 8, b.top + 25, "concurrency " + w.concurrency, "lane-name");
    for (var i = 0; i < w.lanes; i++) {
      var r = el("rect", {"class": "lane" + (i % 2 ? " odd" : ""), x: 0,
        y: b.laneTop + i * LANE, height: LANE, "data-kind": "lane", "data-worker": w.name,
        "data-lane": i}, gLanes);
      laneRects.push(r);
      text(gLanes, LEFT - 8, b.laneTop + i * LANE + LANE / 2 + 3.5,
        (i < w.concurrency ? "child " : "extra ") + i, "lane-name").setAttribute(
        "text-anchor", "end");
    }
  });
  if (!bars.length && !markers.length) {
    text(svg, LEFT + 10, AXIS + 40, "empty history: no attempts and no faults", "empty");
  }

  function rowMid(bar) {
    var b = blocks[bar.worker];
    return b ? b.laneTop + bar.lane * LANE + LANE / 2 : 0;
  }

  var byAttempt = {}, byTask = {};
  var barNodes = bars.map(function (bar, i) {
    byAttempt[bar.attempt] = i;
    var cls = "bar" + (bar.redelivered ? " redelivered" : "") +
      (bar.outcome === "running" ? " running" : "");
    var node = el("rect", {"class": cls, y: rowMid(bar) - BAR / 2, height: BAR, rx: 2,
      fill: data.colors[bar.outcome] || "#888888", "data-kind": "bar",
      "data-attempt": bar.attempt, "data-outcome": bar.outcome, "data-worker": bar.worker,
      "data-lane": bar.lane, "data-task": bar.task, "data-tip": "b" + i}, gBars);
    (byTask[bar.taskId] = byTask[bar.taskId] || []).push(node);
    return node;
  });

  var links = [];
  bars.forEach(function (bar, i) {
    if (bar.previous === null || !(bar.previous in byAttempt)) return;
    var from = byAttempt[bar.previous];
    var node = el("path", {"class": "link " + bar.via, "data-kind": "link",
      "data-attempt": bar.attempt, "data-from": bar.previous, "data-via": bar.via,
      "marker-end": "url(#arrow-" + bar.via + ")", "data-tip": "l" + links.length}, gLinks);
    links.push({node: node, from: from, to: i});
  });

  var outages = [];
  var markerNodes = markers.map(function (m, i) {
    var color = data.faultColors[m.kind] || "#5f6b78";
    var b = m.worker === null ? null : blocks[m.worker];
    var top = b ? b.top : AXIS, bottom = b ? b.bottom : height;
    if (b && m.until !== undefined && (m.kind === "worker-crashed" ||
        m.kind === "connection-lost" || m.kind === "shutdown")) {
      var o = el("rect", {"data-kind": "outage", "data-fault": m.kind,
        "data-worker": m.worker, y: b.laneTop, height: b.bottom - b.laneTop, fill: color,
        "fill-opacity": ".10"}, gOutage);
      var h = el("rect", {y: b.laneTop, height: b.bottom - b.laneTop, fill: "url(#hatch)"},
        gOutage);
      outages.push({nodes: [o, h], from: m.time, to: m.until === null ? span : m.until});
    }
    var g = el("g", {"data-kind": "marker", "data-fault": m.kind,
      "data-worker": m.worker === null ? "" : m.worker, "data-tip": "m" + i}, gMarkers);
    var dashed = m.kind === "worker-offline" || m.kind === "fault-skipped";
    var line = el("line", {y1: top, y2: bottom, stroke: color, "stroke-width": 1.6},
      g);
    if (dashed) line.setAttribute("stroke-dasharray", "4 3");
    var hit = el("line", {"class": "hit", y1: top, y2: bottom}, g);
    var label = text(g, 0, 0, m.label.replace(" " + m.worker, ""), "marker-label");
    label.setAttribute("fill", color);
    return {g: g, line: line, hit: hit, label: label, top: top, global: !b,
      width: label.textContent.length * LABEL_CHAR};
  });

  // ---- horizontal layout: on every zoom, pan and resize --------------------------
  function nice(x) {
    var p = Math.pow(10, Math.floor(Math.log10(x))), m = x / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }
  function drawAxis() {
    while (gAxis.firstChild) gAxis.removeChild(gAxis.firstChild);
    var step = nice((view1 - view0) / Math.max(2, plotW / 90));
    var digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
    for (var t = Math.ceil(view0 / step) * step; t <= view1 + 1e-12; t += step) {
      if (t < -1e-9) continue;
      var x = X(t);
      el("line", {"class": "grid", x1: x, x2: x, y1: AXIS - 4, y2: height}, gAxis);
      var label = text(gAxis, x, AXIS - 8, "+" + Math.abs(t).toFixed(digits) + "s");
      label.setAttribute("text-anchor", "middle");
    }
  }
  function layout() {
    var width = Math.max(wrap.clientWidth, 480);
    svg.setAttribute("width", width);
    plotW = width - LEFT - RIGHT;
    clip.setAttribute("width", plotW + 2);
    clip.setAttribute("x", LEFT - 1);
    heads.forEach(function (r) { r.setAttribute("width", width); });
    laneRects.forEach(function (r) { r.setAttribute("width", width); });
    drawAxis();
    barNodes.forEach(function (node, i) {
      var bar = bars[i], x = X(bar.start);
      node.setAttribute("x", x);
      node.setAttribute("width", Math.max(X(bar.end) - x, 3));
    });
    links.forEach(function (link) {
      var a = bars[link.from], b = bars[link.to];
      var x1 = Math.max(X(a.end), X(a.start) + 3), y1 = rowMid(a);
      var x2 = X(b.start), y2 = rowMid(b);
      var c = Math.max(24, Math.abs(x2 - x1) / 2);
      // Within one lane, an arc over the bars in between rather than a line through them.
      var lift = Math.abs(y2 - y1) < 1 ? Math.min(LANE * 0.9, 6 + Math.abs(x2 - x1) / 8) : 0;
      if (lift) c = Math.min(c, Math.abs(x2 - x1) / 3 + 4);
      link.node.setAttribute("d", "M" + x1 + "," + y1 + " C" + (x1 + c) + "," + (y1 - lift) +
        " " + (x2 - c) + "," + (y2 - lift) + " " + x2 + "," + y2);
    });
    outages.forEach(function (o) {
      var x = X(o.from), w = Math.max(X(o.to) - x, 1);
      o.nodes.forEach(function (n) { n.setAttribute("x", x); n.setAttribute("width", w); });
    });
    var ends = {};
    markerNodes.forEach(function (m, i) {
      var x = X(markers[i].time);
      [m.line, m.hit].forEach(function (l) { l.setAttribute("x1", x); l.setAttribute("x2", x); });
      // Labels in the block's header, on the first of two rows with room, else hidden.
      var key = m.global ? "" : markers[i].worker;
      var rows = ends[key] = ends[key] || [-Infinity, -Infinity];
      var levels = m.global ? 1 : 2, shown = false;
      for (var level = 0; level < levels && !shown; level++) {
        if (x + 3 >= rows[level] && x + 3 + m.width <= LEFT + plotW + RIGHT) {
          rows[level] = x + 3 + m.width + 8;
          m.label.setAttribute("x", x + 3);
          m.label.setAttribute("y", m.top + 13 + level * 13);
          shown = x >= LEFT - 1;
        }
      }
      m.label.style.display = shown ? "" : "none";
    });
    svg.setAttribute("data-range", view0.toFixed(6) + " " + view1.toFixed(6));
    document.getElementById("range").textContent =
      "showing +" + seconds(Math.max(view0, 0)) + "s to +" + seconds(view1) + "s of " +
      seconds(span) + " s";
  }

  // ---- zoom and pan --------------------------------------------------------------
  function clamp() {
    var width = view1 - view0;
    if (view0 < full0) { view0 = full0; view1 = full0 + width; }
    if (view1 > full1) { view1 = full1; view0 = Math.max(full0, full1 - width); }
  }
  function zoom(factor, at) {
    var width = view1 - view0;
    var target = Math.min(full1 - full0, Math.max((full1 - full0) * 1e-6, 1e-6, width / factor));
    if (at === undefined || at === null || isNaN(at)) at = (view0 + view1) / 2;
    view0 = at - (at - view0) / width * target;
    view1 = view0 + target;
    clamp();
    layout();
  }
  function pan(dt) { view0 += dt; view1 += dt; clamp(); layout(); }
  function reset() { view0 = full0; view1 = full1; layout(); }
  function fromHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    var factor = parseFloat(params.get("zoom"));
    if (factor > 0) {
      view0 = full0; view1 = full1;
      var at = parseFloat(params.get("at"));
      zoom(factor, isNaN(at) ? undefined : at);
    }
    var attempt = params.get("tip");
    if (attempt !== null && attempt in byAttempt) {
      var box = barNodes[byAttempt[attempt]].getBoundingClientRect();
      showTip("b" + byAttempt[attempt], box.right, box.bottom);
    }
  }

  document.getElementById("zoom-in").addEventListener("click", function () { zoom(2); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoom(0.5); });
  document.getElementById("reset").addEventListener("click", reset);
  svg.addEventListener("dblclick", reset);
  svg.addEventListener("wheel", function (e) {
    e.preventDefault();
    var scale = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
      pan((e.deltaX || e.deltaY) * scale * (view1 - view0) / plotW);
    } else {
      var box = svg.getBoundingClientRect();
      zoom(Math.exp(-e.deltaY * scale * 0.0015), timeAt(e.clientX - box.left));
    }
  }, {passive: false});
  var drag = null;
  svg.addEventListener("mousedown", function (e) {
    if (e.button !== 0) return;
    drag = {x: e.clientX, v0: view0, v1: view1};
    svg.classList.add("dragging");
  });
  window.addEventListener("mousemove", function (e) {
    if (!drag) return;
    var dt = (e.clientX - drag.x) * (drag.v1 - drag.v0) / plotW;
    view0 = drag.v0 - dt; view1 = drag.v1 - dt; clamp(); layout();
  });
  window.addEventListener("mouseup", function () {
    drag = null;
    svg.classList.remove("dragging");
  });
  window.addEventListener("keydown", function (e) {
    if (e.key === "+" || e.key === "=") zoom(2);
    else if (e.key === "-") zoom(0.5);
    else if (e.key === "0") reset();
    else if (e.key === "ArrowLeft") pan(-(view1 - view0) / 10);
    else if (e.key === "ArrowRight") pan((view1 - view0) / 10);
  });
  window.addEventListener("resize", layout);
  window.addEventListener("hashchange", fromHash);

  // ---- details on hover ------------------------------------------------------------
  function rows(title, pairs) {
    tip.textContent = "";
    var head = document.createElement("div");
    head.className = "title";
    head.textContent = title;
    tip.appendChild(head);
    var table = document.createElement("table");
    pairs.forEach(function (p) {
      if (p[1] === null || p[1] === undefined || p[1] === "") return;
      var tr = table.insertRow(), th = document.createElement("th");
      th.textContent = p[0];
      tr.appendChild(th);
      tr.insertCell().textContent = String(p[1]);
    });
    tip.appendChild(table);
  }
  function describe(ref) {
    var i = parseInt(ref.slice(1), 10);
    if (ref[0] === "b") {
      var b = bars[i];
      rows(b.task, [["task id", b.taskId], ["attempt", b.attempt], ["message", b.message],
        ["worker", b.worker + ", lane " + b.lane], ["started", "+" + seconds(b.start) + "s"],
        ["ended", "+" + seconds(b.end) + "s (" + seconds(b.end - b.start) + " s)"],
        ["outcome", b.outcome], ["retries", b.retries],
        ["redelivered", b.redelivered ? "yes" : ""],
        ["after", b.previous === null ? "" : b.previous + (b.via === "message" ?
          " (redelivery of the message)" : " (earlier attempt of the task)")],
        ["exception", b.exception], ["detail", b.detail]]);
      return byTask[b.taskId];
    }
    if (ref[0] === "l") {
      var link = links[i], a = bars[link.from], c = bars[link.to];
      rows((c.via === "message" ? "redelivery: " : "retry: ") + a.attempt + " \u2192 " +
        c.attempt, [["task", c.task], ["task id", c.taskId],
        ["from", a.attempt + " on " + a.worker + ", " + a.outcome + " at +" +
          seconds(a.end) + "s"],
        ["to", c.attempt + " on " + c.worker + ", started +" + seconds(c.start) + "s"]]);
      return [link.node];
    }
    var m = markers[i];
    rows(m.kind, [["what", m.label], ["worker", m.worker], ["at", "+" + seconds(m.time) + "s"],
      ["until", m.until === null ? "" : "+" + seconds(m.until) + "s"],
      ["task id", m.taskId], ["attempt", m.attempt]]);
    return [];
  }
  var lit = [], current = null;
  function showTip(ref, x, y) {
    if (ref !== current) {
      lit.forEach(function (n) { n.classList.remove("hl"); });
      lit = ref ? describe(ref) || [] : [];
      lit.forEach(function (n) { n.classList.add("hl"); });
      current = ref;
    }
    if (!ref) { tip.hidden = true; return; }
    tip.hidden = false;
    var left = x + 14, top = y + 14;
    if (left + tip.offsetWidth > window.innerWidth - 4) left = x - tip.offsetWidth - 14;
    if (top + tip.offsetHeight > window.innerHeight - 4) top = y - tip.offsetHeight - 14;
    tip.style.left = Math.max(4, left) + "px";
    tip.style.top = Math.max(4, top) + "px";
  }
  svg.addEventListener("mousemove", function (e) {
    if (drag) { tip.hidden = true; return; }
    var target = e.target.closest ? e.target.closest("[data-tip]") : null;
    showTip(target ? target.getAttribute("data-tip") : null, e.clientX, e.clientY);
  });
  svg.addEventListener("mouseleave", function () {
    tip.hidden = true;
    lit.forEach(function (n) { n.classList.remove("hl"); });
    lit = []; current = null;
  });

  layout();
  fromHash();
  window.simqTimeline = {zoom: zoom, pan: pan, reset: reset,
    range: function () { return [view0, view1]; }};
})();
"""
