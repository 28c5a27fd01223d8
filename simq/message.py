"""Task messages as immutable data, in Celery's protocol-2 vocabulary.

A message is what travels through the simulated broker. ``headers`` use protocol-2
names (``id``, ``task``, ``retries``, ``eta``, ``expires``, ``timelimit``, ``root_id``,
``parent_id``, ``group``, ``shadow``, ``ignore_result``, ...), ``body`` is the
``[args, kwargs, embed]`` triple as Celery's producer serialized it, and the routing
fields say where it goes. ``eta`` and
``expires`` are also kept as virtual epoch seconds so the world never parses ISO strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from kombu.serialization import loads

__all__ = ["Message", "canvas_details"]

#: What kombu's JSON serializer writes for a message that is part of no canvas
#: (``app/amqp.py`` ``as_task_v2``'s embed): such a body need not be decoded.
_PLAIN_EMBED = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


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

    def canvas(self) -> dict[str, Any]:
        """The canvas details of this message (see :func:`canvas_details`)."""
        body = self.body
        if self.task != "celery.chord_unlock" and not self.headers.get("group"):
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            if isinstance(text, str) and text.endswith(_PLAIN_EMBED):
                return {}  # the common case, without decoding the body
        try:
            decoded = loads(body, self.content_type, self.content_encoding)
        except Exception:  # an undecodable body has no canvas to record (the worker says so)
            return {}
        return canvas_details(self.task, self.headers, decoded)


def _sig_id(sig: Any) -> str | None:
    options = sig.get("options") if isinstance(sig, Mapping) else None
    value = options.get("task_id") if isinstance(options, Mapping) else None
    return str(value) if value is not None else None


def _sig_name(sig: Any) -> str | None:
    value = sig.get("task") if isinstance(sig, Mapping) else None
    return str(value) if value is not None else None


def canvas_details(task: str, headers: Mapping[str, Any], body: Any) -> dict[str, Any]:
    """What a ``published`` event records of a message's place in a canvas.

    ``body`` is the decoded ``(args, kwargs, embed)`` triple of protocol 2
    (``celery/app/amqp.py`` ``as_task_v2``). Only the keys that apply are returned, so
    a message outside any canvas records nothing more:

    * ``group``, ``group_index``: the headers of a group member (``group.freeze``);
    * ``chord``: the task id of the chord body a header task counts towards (its
      embed's ``chord``), or that a ``celery.chord_unlock`` task polls for (its
      ``callback`` keyword);
    * ``chain``: the task ids of the chain steps still to run after this one, in run
      order (the embed's ``chain`` is kept reversed: ``app/trace.py`` pops the last);
    * ``link``, ``link_error``: the task names of the callbacks and errbacks (their
      ids are usually made only when they are sent).
    """
    out: dict[str, Any] = {}
    if headers.get("group") is not None:
        out["group"] = headers["group"]
        out["group_index"] = headers.get("group_index")
    parts = list(body) if isinstance(body, list | tuple) else []
    kwargs = parts[1] if len(parts) > 1 and isinstance(parts[1], Mapping) else {}
    embed = parts[2] if len(parts) > 2 and isinstance(parts[2], Mapping) else {}
    chord = embed.get("chord")
    if task == "celery.chord_unlock":
        # fallback_chord_unlock sends (group_id, body) as arguments; older code paths
        # pass the body as the ``callback`` keyword.
        args = parts[0] if parts and isinstance(parts[0], list | tuple) else ()
        chord = kwargs.get("callback") or (args[1] if len(args) > 1 else None)
    if chord:
        out["chord"] = _sig_id(chord)
    chain = embed.get("chain")
    if chain:
        out["chain"] = [_sig_id(sig) for sig in reversed(chain)]
    for key, name in (("callbacks", "link"), ("errbacks", "link_error")):
        sigs = embed.get(key)
        if sigs:
            out[name] = [_sig_name(sig) for sig in sigs]
    return out
