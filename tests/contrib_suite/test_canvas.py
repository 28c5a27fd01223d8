"""Chains, groups and a task calling another, on the worker of ``celery_worker``."""

from __future__ import annotations

from typing import Any

from celery import chain, chord, group
from celery.result import AsyncResult
from suite_tasks import add, audit, mul, order, same


def test_chain_passes_each_result_on(depends_on_current_app: Any, celery_worker: Any) -> None:
    result = chain(add.s(2, 2), mul.s(10), add.s(1)).delay()
    assert result.get(timeout=10) == 41
    assert result.parent.get(timeout=10) == 40
    assert result.parent.parent.get(timeout=10) == 4


def test_group_collects_every_result(depends_on_current_app: Any, celery_worker: Any) -> None:
    result = group(add.s(i, i) for i in range(5)).delay()
    assert result.get(timeout=10) == [0, 2, 4, 6, 8]
    assert result.completed_count() == 5
    assert result.successful()


def test_task_calls_another(
    celery_app: Any, depends_on_current_app: Any, celery_worker: Any
) -> None:
    child_id = order.delay([1, 2, 3]).get(timeout=10)
    assert AsyncResult(child_id, app=celery_app).get(timeout=10) == 6


def test_chord_joins_a_never_stored_member_as_none(
    depends_on_current_app: Any, celery_worker: Any
) -> None:
    """A chord header holding a group result is joined by Redis's chord code; a member
    whose result is never stored (ignore_result) reaches the body as None, at once."""
    header = [add.s(1, 1) | group(add.s(1), add.s(2)), audit.s(3, 3)]
    assert chord(header, same.s()).delay().get(timeout=10) == [[3, 4], None]
