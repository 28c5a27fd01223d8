"""Signal handlers: a failed task is written to the audit log."""

from __future__ import annotations

from typing import Any

from celery import signals

from shop import db


@signals.task_failure.connect
def audit_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    """Record which task failed and why (Celery sends ``task_failure`` in the worker)."""
    db.audit.append((getattr(sender, "name", str(sender)), repr(exception)))
