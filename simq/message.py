"""Task messages as immutable data, in Celery's protocol-2 vocabulary.

A message is what travels through the simulated broker. ``headers`` use protocol-2
names (``id``, ``task``, ``retries``, ``eta``, ``expires``, ``timelimit``, ``root_id``,
``parent_id``, ``group``, ``shadow``, ``ignore_result``, ...), ``body`` is the
``[args, kwargs, embed]`` triple as Celery's producer serialized it, and the routing
fields say where it goes. ``eta`` and
``expires`` are also kept as virtual epoch seconds so the world never parses ISO strings.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Message"]


@attrs.frozen(slots=True)
class Message:
    """One published task message.

    Attributes:
        message_id: Identity of this publication (a retry is a new message, same task id).
        task_id: The task id (header ``id``).
        task: The task name (header ``task``).
        headers: Protocol-2 headers.
        body: Serialized ``[args, kwargs, embed]``, as kombu encoded it.
        content_type: The body's content type (``application/json``, ...).
        content_encoding: The body's encoding (``utf-8``, ``binary``).
        properties: The AMQP properties Celery set (correlation_id, reply_to, ...).
        queue: Queue the message is routed to.
        exchange: Exchange name (``""`` for the default exchange).
        routing_key: Routing key.
        priority: Message priority, or None.
        eta: Earliest execution time in virtual epoch seconds, or None.
        expires: Absolute expiry in virtual epoch seconds, or None.
    """

    message_id: str
    task_id: str
    task: str
    headers: dict[str, Any]
    body: Any
    content_type: str
    content_encoding: str
    properties: dict[str, Any]
    queue: str
    exchange: str
    routing_key: str
    priority: int | None = None
    eta: float | None = None
    expires: float | None = None

    @property
    def retries(self) -> int:
        return int(self.headers.get("retries") or 0)
