"""One test per guarantee and adapter (§3.2's G1-G18, liveness L1-L2), and the differential.

The plugin (``simq_conformance.plugin``) parametrizes ``conformance_adapter`` with the
adapters given to ``--conformance`` and ``differential_adapter`` with the real ones that
have a simulated counterpart. Each adapter's workloads run once, in its campaign.
"""

from __future__ import annotations

from typing import Any

import pytest

from simq_conformance.properties import GUARANTEES


@pytest.mark.parametrize("guarantee", list(GUARANTEES))
def test_guarantee(conformance: Any, conformance_adapter: str, guarantee: str) -> None:
    """The adapter keeps the guarantee on every workload, and some run exercised it (§3.2)."""
    conformance.check_guarantee(conformance_adapter, guarantee)


def test_differential(conformance: Any, differential_adapter: str) -> None:
    """The real adapter and the simulator on its transport agree on every workload (§3.2)."""
    conformance.check_differential(differential_adapter)
