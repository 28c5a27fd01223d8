"""Make docs/img/timeline.png: the HTML timeline of the order example, with faults.

Run from anywhere: ``python docs/img/make_timeline_png.py``. Needs Chromium
(``/usr/bin/chromium``; Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import simq
from simq.examples.campaign import sample_history
from simq.timeline import attempts, write_html

HERE = Path(__file__).resolve().parent
PNG = HERE / "timeline.png"
NOTES = (
    "seed 0 · 2 workers x 2 children · 5 orders",
    "faults: crash_worker('worker-2', at=0.7, restart_after=15); "
    "lose_connection('worker-1', at=12, reconnect_after=3)",
)


def history() -> simq.History:
    """The order example with a worker crash and a lost connection (the docs' example)."""
    return sample_history()


def main() -> int:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        print("chromium is missing: sudo apt-get install chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        run = history()
        page = write_html(run, Path(tmp) / "timeline.html", notes=NOTES)
        # Show the details of the attempt retried most (the latest such), as a hover would.
        shown = max(attempts(run), key=lambda bar: (bar.retries, bar.start)).attempt
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={Path(tmp) / 'profile'}",
            "--virtual-time-budget=5000", "--window-size=1400,700", f"--screenshot={PNG}",
            f"{page.as_uri()}#tip={shown}",
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    print(f"wrote {PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
