"""Shared fixtures for the fault tests: an app and a readable rendering of a history.

``trail(sim, *task_ids)`` renders the events of those tasks (and every worker or broker
fault after the start) as one short line each, prefixed with the virtual second it
happened at, so a test can assert a whole history exactly::

    assert trail(sim, r.id) == ["0 delivered m1 worker-1", "0 started m1 worker-1", ...]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import simq
from simq.history import Event


@pytest.fixture
def app() -> simq.App:
    return simq.App("shop")


def _result(value: Any) -> str:
    if isinstance(value, dict) and "exc_type" in value:
        args = ", ".join(repr(a) for a in value.get("exc_message") or ())
        return f"{value['exc_type']}({args})"
    return repr(value)


def render(event: Event, origin: float) -> str:
    """One line for ``event``: seconds since ``origin``, kind, message and the details."""
    d = event.details
    mid = event.message_id or ""
    worker = event.worker or ""
    kind = event.kind
    if kind == "published":
        text = f"published {mid} retries={d.get('retries')}"
        if d.get("eta"):
            text += f" eta={d['eta']}"
    elif kind == "delivered":
        text = f"delivered {mid} {worker}"
        text += " redelivered" if d.get("redelivered") else ""
        text += " copy" if d.get("copy") else ""
    elif kind == "started":
        text = f"started {mid} {worker} retries={d.get('retries')}"
    elif kind == "state":
        text = f"state {d['state']}"
        if d.get("result") is not None and d["state"] != "STARTED":
            text += f" {_result(d['result'])}"
    elif kind == "state-discarded":
        text = f"state-discarded {d['state']}"
    elif kind == "rejected":
        text = f"rejected {mid} requeue={d['requeue']}"
    elif kind == "requeued":
        text = f"requeued {mid} {d.get('reason')}" + (" copy" if d.get("copy") else "")
    elif kind in ("revoked", "cancelled", "lost"):
        text = f"{kind} {mid} {d.get('reason')}"
    elif kind == "revoke":
        text = "revoke" + (" terminate" if d.get("terminate") else "")
    elif kind == "time-limit":
        text = f"time-limit {mid} {d['which']} {d['limit']}"
    elif kind in ("child-killed", "child-lost"):
        text = f"{kind} {mid} exitcode={d.get('exitcode')}"
    elif kind in ("failed", "retried") and d.get("exception"):
        text = f"{kind} {mid} {_result(d['exception'])}"
    elif kind == "shutdown":
        text = f"shutdown {worker} {'warm' if d.get('warm') else 'cold'}"
    elif kind == "broker-restarted":
        text = f"broker-restarted lost={d.get('lost')}"
    elif event.task_id is None:
        text = f"{kind} {worker}".rstrip()
    else:
        text = f"{kind} {mid}".rstrip()
    return f"{event.time - origin:g} {text}"


def _trail(sim: simq.Simulation, *task_ids: str) -> list[str]:
    origin = sim.started_at
    out = []
    for event in sim.history:
        if event.task_id is None:
            if event.kind == "worker-online" and event.time == origin:
                continue  # the workers the simulation started with
        elif task_ids and event.task_id not in task_ids:
            continue
        out.append(render(event, origin))
    return out


@pytest.fixture
def trail() -> Callable[..., list[str]]:
    """``trail(sim, *task_ids)``: the history of those tasks and every fault, as lines."""
    return _trail
