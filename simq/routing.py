"""Routing: which queue a message goes to (options > task_routes > task_default_queue).

Celery's precedence (``celery/app/routes.py``): explicit options win, then the first
``task_routes`` entry that matches (dicts by exact name, glob or regex; callables),
then ``task_default_queue``. A queue missing from ``task_queues`` is QueueNotFound
unless ``task_create_missing_queues`` (the default).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from typing import Any

from simq.exceptions import QueueNotFound

__all__ = ["route"]


def route(
    conf: Any, name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any
) -> tuple[str, str, str]:
    """Queue, exchange and routing key (options > task_routes > task_default_queue)."""
    if (
        not conf.task_routes
        and conf.task_create_missing_queues
        and not options.get("exchange")
        and not options.get("routing_key")
    ):
        queue = options.get("queue") or conf.task_default_queue
        if not isinstance(queue, str):
            queue = getattr(queue, "name", str(queue))
        return queue, "", queue
    matched: dict[str, Any] = {}
    for router in _routers(conf.task_routes):
        found = router(name, args, kwargs, options, task)
        if found:
            matched = {"queue": found} if isinstance(found, str) else dict(found)
            break
    merged = dict(matched)
    merged.update({k: v for k, v in options.items() if v is not None})
    queue = merged.get("queue") or conf.task_default_queue
    queue = queue if isinstance(queue, str) else getattr(queue, "name", str(queue))
    declared = [conf.task_default_queue] + [
        q if isinstance(q, str) else getattr(q, "name", "") for q in conf.task_queues or ()
    ]
    if queue not in declared and not conf.task_create_missing_queues:
        raise QueueNotFound(f"Queue {queue!r} missing from task_queues")
    exchange = merged.get("exchange")
    exchange = exchange if isinstance(exchange, str) else getattr(exchange, "name", None)
    routing_key = merged.get("routing_key")
    if not exchange and not routing_key:
        return queue, "", queue
    return queue, exchange or "", routing_key or queue


def _routers(routes: Any) -> list[Callable[..., Any]]:
    if not routes:
        return []
    items = routes if isinstance(routes, list | tuple) else [routes]
    out: list[Callable[..., Any]] = []
    for item in items:
        if callable(item):
            out.append(_call_router(item))
        elif isinstance(item, Mapping):
            out.append(_map_router(item))
        else:
            raise TypeError(f"task_routes entries must be dicts or callables, got {item!r}")
    return out


def _call_router(fun: Callable[..., Any]) -> Callable[..., Any]:
    def route(name: str, args: Any, kwargs: Any, options: Any, task: Any) -> Any:
        return fun(name, args, kwargs, options, task=task)

    return route


def _map_router(table: Mapping[Any, Any]) -> Callable[..., Any]:
    exact = {k: v for k, v in table.items() if isinstance(k, str) and "*" not in k}
    patterns = [
        (k if isinstance(k, re.Pattern) else re.compile(fnmatch.translate(k)), v)
        for k, v in table.items()
        if not (isinstance(k, str) and "*" not in k)
    ]

    def route(name: str, args: Any, kwargs: Any, options: Any, task: Any) -> Any:
        if name in exact:
            return exact[name]
        for pattern, value in patterns:
            if pattern.match(name):
                return value
        return None

    return route
