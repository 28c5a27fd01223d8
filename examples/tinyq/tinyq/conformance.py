"""tinyq's conformance adapter: ``pytest --conformance=tinyq.conformance:TinyqAdapter``.

The capabilities say what tinyq can be judged on, and why not the rest: every skip the
suite reports is generated from them.
"""

from __future__ import annotations

import os
import uuid

import attrs
import redis

from simq_conformance import BaseAdapter, Capabilities, Deviation, RunResult, Workload
from simq_conformance.calibrate import calibrate
from tinyq import probes
from tinyq.broker import HEARTBEAT_TTL
from tinyq.run import REPLACE_AFTER, Run
from tinyq.worker import BUGS

__all__ = ["TinyqAdapter"]

#: Redis database 13: the example's own, apart from every other adapter's.
DEFAULT_URL = "redis://127.0.0.1:6379/13"

_NO_CHILD = "tinyq runs each task in the worker process itself: there is no pool child"
_NO_CONTROL = "tinyq has no remote control: nothing can revoke a published task"
_NO_CONNECTION = (
    "tinyq keeps unacked messages in Redis lists, not on a connection: a cut connection "
    "or a broker restart is not a fault that returns them"
)
_NO_REDELIVERY_AFTER_SUCCESS = (
    "no tinyq fault redelivers a message after its task stored SUCCESS: only a kill "
    "between the SUCCESS write and the ack could, and they are microseconds apart"
)

#: Every kind tinyq's worker and adapter record (none of time limits or pool children).
_OBSERVES = (
    "published", "delivered", "started", "acked", "rejected", "requeued", "lost", "state",
    "state-discarded", "succeeded", "failed", "retried", "ignored", "declined", "revoked",
    "worker-online", "worker-offline", "worker-crashed", "shutdown",
)  # fmt: skip

CAPABILITIES = Capabilities(
    adapter="tinyq",
    # Unacked messages come back when their holder is gone (its heartbeat expired).
    transport="amqp",
    faults=frozenset({"kill_worker", "warm_shutdown"}),
    probes=probes.PROBES,
    time_limits=False,
    observes=frozenset(_OBSERVES),
    deviations=(
        Deviation("fault:kill_child", _NO_CHILD),
        Deviation("probe:die", _NO_CHILD),
        Deviation("probe:exceed", "tinyq enforces no time limits"),
        Deviation("fault:revoke", _NO_CONTROL),
        Deviation("fault:terminate", _NO_CONTROL),
        Deviation("fault:cut_connection", _NO_CONNECTION),
        Deviation("fault:restart_broker", _NO_CONNECTION),
        Deviation("fault:cold_shutdown", "SIGTERM is tinyq's only shutdown, and it is warm"),
        # The worker honours worker_deduplicate_successful_tasks, but G14's premise (a
        # message redelivered after its task stored SUCCESS) needs a kill between the
        # SUCCESS write and the ack, microseconds apart here: no run would exercise it.
        Deviation("G14", _NO_REDELIVERY_AFTER_SUCCESS),
    ),
    # A dead worker's messages come back once its heartbeat expires and another worker
    # (or its replacement, a second later, after a Python start) reclaims them.
    transport_slack=HEARTBEAT_TTL + REPLACE_AFTER,
    # Countdowns wait in Redis (a sorted set), not in the worker.
    delayed_delivery="broker",
)


class TinyqAdapter(BaseAdapter):
    """Real tinyq worker processes on the Redis at ``url`` (database 13 by default)."""

    def __init__(self, url: str | None = None) -> None:
        bug = os.environ.get("TINYQ_BUG")
        if bug and bug not in BUGS:
            raise ValueError(f"TINYQ_BUG={bug!r} is no bug tinyq plants; use one of {BUGS}")
        self.url = url or DEFAULT_URL
        self.prefix = f"tinyq:{uuid.uuid4().hex[:8]}:"  # each run adds its own part
        self.capabilities = CAPABILITIES

    def setup(self) -> None:
        """Check Redis answers, then measure the slack on tinyq itself."""
        redis.Redis.from_url(self.url, socket_connect_timeout=2).ping()
        measured = calibrate(self)
        self.capabilities = attrs.evolve(
            self.capabilities, slack=measured.slack, slack_source=measured.describe()
        )

    def run(self, workload: Workload) -> RunResult:
        return Run(self, workload).execute()

    def teardown(self) -> None:
        client = redis.Redis.from_url(self.url)
        keys = list(client.scan_iter(match=self.prefix + "*", count=500))
        if keys:
            client.delete(*keys)
