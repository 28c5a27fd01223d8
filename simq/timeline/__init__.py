"""Timelines of a run's history: in the terminal and as a self-contained HTML page.

::

    from simq.timeline import render_text, write_html

    print(render_text(sim.history))
    write_html(sim.history, "timeline.html", notes=[f"seed {seed}"])

:func:`attempts` and :func:`markers` are the model both draw: every started attempt as a
:class:`Bar` (worker, lane, times, outcome, the attempt it follows) and every fault as a
:class:`Marker`.
"""

from __future__ import annotations

from simq.timeline.html import render_html, write_html
from simq.timeline.model import Bar, Marker, attempts, markers
from simq.timeline.text import render_text

__all__ = ["Bar", "Marker", "attempts", "markers", "render_html", "render_text", "write_html"]
