"""The sample project's own test suite (examples/shop/tests) passes, run as its users run it.

The shop is a separate project with its own pytest settings (examples/shop/pytest.ini),
so its suite runs in a pytest process of its own, not inside this one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHOP_TESTS = ROOT / "examples" / "shop" / "tests"


def test_shop_suite_passes() -> None:
    """Every shop test passes on simq: features, the three bugs, their eager twins, fixes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SHOP_TESTS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary = re.search(r"(\d+) passed", output)
    assert summary is not None, output
    assert int(summary.group(1)) == 15, output
    assert "failed" not in output and "error" not in output.lower(), output
