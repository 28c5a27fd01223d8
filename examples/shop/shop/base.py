"""The shop's custom base Task (``Celery(task_cls="shop.base:ShopTask")``)."""

from __future__ import annotations

from typing import Any

from celery import Task

from shop import db


class ShopTask(Task):
    """Every shop task: records each run, so tests and operators can count executions."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        db.runs.append((self.name, args))
        return super().__call__(*args, **kwargs)
