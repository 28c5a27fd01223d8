"""Ready-made invariants for scenarios: each raises InvariantViolated naming what broke.

A scenario asserts what must hold whatever the faults did::

    def checkout(sim):
        ...publish orders, sim.run()...
        simq.invariants.exactly_once(charged_order_ids, expected=range(1, 21), what="charge")
        simq.invariants.all_finished(sim)

:func:`guarantees` checks Celery's own guarantees (``sim.check()``); a campaign runs it
after every scenario anyway.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable
from typing import Any

from celery import states

from simq.exceptions import InvariantViolated

__all__ = [
    "all_finished",
    "at_least_once",
    "at_most_once",
    "exactly_once",
    "guarantees",
    "nothing_lost",
]

#: Outcomes that end a task whose result is not stored (``ignore_result``).
_FINAL_OUTCOMES = frozenset({"succeeded", "failed", "revoked", "ignored", "unregistered"})
_SHOWN = 5


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def guarantees(sim: Any, **overrides: Any) -> None:
    """Celery's guarantees hold on ``sim``'s history (``sim.check(**overrides) == []``)."""
    violations = sim.check(**overrides)
    if violations:
        first = violations[0]
        others = f" (and {len(violations) - 1} more violations)" if len(violations) > 1 else ""
        raise InvariantViolated(first.guarantee, f"{first.message}{others}")


def _counts(effects: Iterable[Hashable]) -> collections.Counter[Hashable]:
    return collections.Counter(effects)


def at_most_once(effects: Iterable[Hashable], what: str = "effect") -> None:
    """No key appears twice in ``effects`` (e.g. the order ids a payment task charged)."""
    twice = [f"{key!r} {n} times" for key, n in _counts(effects).items() if n > 1]
    if twice:
        raise InvariantViolated(
            f"at_most_once({what})", f"{what} happened more than once: {_listing(twice)}"
        )


def at_least_once(
    effects: Iterable[Hashable], expected: Iterable[Hashable], what: str = "effect"
) -> None:
    """Every key of ``expected`` appears in ``effects``."""
    seen = _counts(effects)
    never = [repr(key) for key in expected if not seen[key]]
    if never:
        raise InvariantViolated(
            f"at_least_once({what})", f"{what} never happened for {_listing(never)}"
        )


def exactly_once(
    effects: Iterable[Hashable], expected: Iterable[Hashable] | None = None, what: str = "effect"
) -> None:
    """Each key appears once in ``effects``; with ``expected``, each of those keys, no other."""
    seen = _counts(effects)
    wrong = [f"{key!r} {n} times" for key, n in seen.items() if n != 1]
    if expected is not None:
        wanted = list(expected)
        wrong += [f"{key!r} never" for key in wanted if not seen[key]]
        stray = set(seen) - set(wanted)
        wrong += [f"{key!r} not expected" for key in sorted(stray, key=repr)]
    if wrong:
        raise InvariantViolated(
            f"exactly_once({what})", f"{what} not exactly once: {_listing(wrong)}"
        )


def all_finished(sim: Any) -> None:
    """Every task published in ``sim`` ended: a ready state stored (SUCCESS, FAILURE,
    REVOKED), or for ``ignore_result`` tasks a final outcome recorded."""
    history = sim.history
    final: dict[str, str] = {}
    for event in history.where(kind="state"):
        final[event.task_id] = event["state"]
    ended = {e.task_id for e in history.where(kind=sorted(_FINAL_OUTCOMES))}
    open_: list[str] = []
    for event in history.where(kind="published"):
        tid = event.task_id
        if final.get(tid) in states.READY_STATES:
            continue
        if event.details.get("ignore_result") and tid in ended:
            continue
        label = f"{event['task']}[{tid}] ({final.get(tid, 'PENDING')})"
        if label not in open_:
            open_.append(label)
    if open_:
        raise InvariantViolated("all_finished", f"tasks never finished: {_listing(open_)}")


def nothing_lost(sim: Any) -> None:
    """No message was lost: no ``lost`` event, no message dropped by a broker restart."""
    lost = [
        f"{e.task_id} ({e.details.get('reason', 'lost')} at +{e.time - sim.started_at:g} s)"
        for e in sim.history.where(kind="lost")
    ]
    lost += [
        f"{e['lost']} messages in a broker restart at +{e.time - sim.started_at:g} s"
        for e in sim.history.where(kind="broker-restarted")
        if e["lost"]
    ]
    if lost:
        raise InvariantViolated("nothing_lost", f"messages lost: {_listing(lost)}")
