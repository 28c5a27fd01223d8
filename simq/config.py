"""``app.conf``: Celery's setting names and defaults, with attribute and item access."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

__all__ = ["DEFAULTS", "Settings"]

#: Celery 5.7's defaults for the settings simq reads or that users commonly set.
DEFAULTS: dict[str, Any] = {
    "accept_content": ("json",),
    "broker_connection_retry": True,
    "broker_transport": None,
    "broker_transport_options": {},
    "broker_url": None,
    "enable_utc": True,
    "result_accept_content": None,
    "result_backend": None,
    "result_expires": dt.timedelta(days=1),
    "result_extended": False,
    "result_serializer": "json",
    "task_acks_late": False,
    "task_acks_on_failure": None,
    "task_acks_on_failure_or_timeout": True,
    "task_acks_on_timeout": None,
    "task_always_eager": False,
    "task_annotations": None,
    "task_compression": None,
    "task_create_missing_queues": True,
    "task_default_delivery_mode": 2,
    "task_default_exchange": None,
    "task_default_exchange_type": "direct",
    "task_default_priority": None,
    "task_default_queue": "celery",
    "task_default_rate_limit": None,
    "task_default_routing_key": None,
    "task_eager_propagates": False,
    "task_ignore_result": False,
    "task_inherit_parent_priority": False,
    "task_protocol": 2,
    "task_publish_retry": True,
    "task_publish_retry_policy": {
        "max_retries": 3,
        "interval_start": 0,
        "interval_max": 1,
        "interval_step": 0.2,
    },
    "task_queue_max_priority": None,
    "task_queues": None,
    "task_reject_on_worker_lost": None,
    "task_retry_on_worker_lost": False,
    "task_routes": None,
    "task_send_sent_event": False,
    "task_serializer": "json",
    "task_soft_time_limit": None,
    "task_store_eager_result": False,
    "task_store_errors_even_if_ignored": False,
    "task_time_limit": None,
    "task_track_started": False,
    "timezone": None,
    "worker_cancel_long_running_tasks_on_connection_loss": False,
    "worker_concurrency": None,
    "worker_deduplicate_successful_tasks": False,
    "worker_disable_prefetch": False,
    "worker_disable_rate_limits": False,
    "worker_eta_task_limit": None,
    "worker_lost_wait": 10.0,
    "worker_prefetch_multiplier": 4,
    "worker_send_task_events": False,
    "worker_soft_shutdown_timeout": 0.0,
}


class Settings(MutableMapping[str, Any]):
    """Application settings: Celery's names, Celery's defaults, changes on top.

    Both ``app.conf.task_acks_late`` and ``app.conf["task_acks_late"]`` work; unknown
    names are allowed (as in Celery) and read as ``KeyError``/``AttributeError`` until set.
    """

    def __init__(self, changes: Mapping[str, Any] | None = None) -> None:
        # Every value also lives in the instance __dict__, so ``conf.name`` is a plain
        # attribute read on the hot path; __getattr__ only runs for unknown names.
        object.__setattr__(self, "_changes", {})
        object.__setattr__(self, "_version", 0)
        self.__dict__.update(DEFAULTS)
        for key, value in (changes or {}).items():
            self[key] = value

    def __getitem__(self, key: str) -> Any:
        if key.startswith("_") or key not in self.__dict__:
            raise KeyError(key)
        return self.__dict__[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or key.startswith("_") or key == "changes":
            raise KeyError(f"{key!r} is not a valid setting name")
        self._changes[key] = value
        self.__dict__[key] = value
        self.__dict__["_version"] += 1

    def __delitem__(self, key: str) -> None:
        del self._changes[key]
        self.__dict__["_version"] += 1
        if key in DEFAULTS:
            self.__dict__[key] = DEFAULTS[key]
        else:
            del self.__dict__[key]

    def __iter__(self) -> Iterator[str]:
        return iter([k for k in self.__dict__ if not k.startswith("_")])

    def __len__(self) -> int:
        return sum(1 for k in self.__dict__ if not k.startswith("_"))

    def __getattr__(self, key: str) -> Any:
        raise AttributeError(f"app.conf has no setting {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    @property
    def version(self) -> int:
        """Bumped by every change: tasks re-read config-derived attributes when it moves."""
        return int(self.__dict__["_version"])

    @property
    def changes(self) -> dict[str, Any]:
        """The settings that differ from Celery's defaults."""
        return dict(self._changes)

    def __repr__(self) -> str:
        return f"<Settings {self._changes!r}>"
