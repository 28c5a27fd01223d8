"""tinyq's broker: a reliable queue on Redis, written with redis-py and three Lua scripts.

Keys, all under one prefix per run (``tinyq:<adapter>:<run>:``):

* ``queue``: a list; publish is ``LPUSH``, a worker takes from the right with ``BLMOVE``
  into its own ``processing:<worker>`` list, where the message waits, unacked, until
  the worker acks it (``LREM``);
* ``scheduled``: a sorted set of messages with a countdown, by due time; every worker
  moves the due ones to ``queue`` before it blocks (delayed delivery in the broker);
* ``workers`` and ``alive:<worker>``: each worker refreshes a key that expires after
  :data:`HEARTBEAT_TTL`; a worker whose key expired is dead, and any live worker moves
  its processing list back to the front of ``queue``, flagged ``redelivered`` (the
  "amqp" model: unacked messages come back once their holder is gone);
* ``result:<task_id>`` (state and result; ``SUCCESS`` is never overwritten) and
  ``count:<key>`` (how many times a probe call ran);
* ``log:<worker>``: every write (a publication, an ack, a state) logs, in the same
  transaction, the event that records it. A worker killed between a write and its
  record leaves the event there, and the adapter records it (the outbox pattern).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any, cast

import attrs
import redis

__all__ = ["HEARTBEAT_TTL", "Broker", "Event", "iso", "log_field", "parse_iso"]

#: Seconds after its last heartbeat that a worker counts as dead.
HEARTBEAT_TTL = 1.0

_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, m in ipairs(due) do redis.call('ZREM', KEYS[1], m); redis.call('LPUSH', KEYS[2], m) end
return #due
"""
# Back to the front of the queue (the right end, where workers take), flagged.
_RECLAIM = """
local m = redis.call('RPOP', KEYS[1])
while m do
  local msg = cjson.decode(m)
  msg['redelivered'] = true
  redis.call('RPUSH', KEYS[2], cjson.encode(msg))
  m = redis.call('RPOP', KEYS[1])
end
redis.call('SREM', KEYS[3], ARGV[1])
"""
_STORE = """
if redis.call('HGET', KEYS[1], 'state') == 'SUCCESS' then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'result', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
"""


#: An event in simq's vocabulary, as a dict: kind, at, task_id, message_id, worker, details.
Event = dict[str, Any]


def log_field(event: Event) -> str:
    """The event's name in the log: its kind and attempt (or message, for a publication)."""
    return f"{event['kind']} {event['details'].get('attempt') or event['message_id']}"


def iso(epoch: float | None) -> str | None:
    """An instant as Celery writes it in a message header (ISO 8601, UTC)."""
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def parse_iso(text: str | None) -> float | None:
    return None if text is None else dt.datetime.fromisoformat(text).timestamp()


@attrs.define(eq=False)
class Broker:
    """One run's queue, scheduled set, worker registry and results."""

    client: redis.Redis
    prefix: str
    _scripts: dict[str, Any] = attrs.field(factory=dict, init=False)

    @classmethod
    def connect(cls, url: str, prefix: str) -> Broker:
        return cls(redis.Redis.from_url(url), prefix)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _script(self, source: str) -> Any:
        if source not in self._scripts:
            self._scripts[source] = self.client.register_script(source)
        return self._scripts[source]

    # -- publishing ---------------------------------------------------------------------

    def publish(self, message: dict[str, Any], publisher: str, event: Event) -> None:
        """Queue ``message`` now, or in ``scheduled`` until its ``eta``; log ``event``."""
        raw = json.dumps(message, sort_keys=True)
        eta = parse_iso(message.get("eta"))
        with self.client.pipeline(transaction=True) as pipe:
            if eta is not None and eta > time.time():
                pipe.zadd(self.key("scheduled"), {raw: eta})
            else:
                pipe.lpush(self.key("queue"), raw)
            self._log(pipe, publisher, event)
            pipe.execute()

    # -- consuming ----------------------------------------------------------------------

    def promote_due(self) -> None:
        self._script(_PROMOTE)(keys=[self.key("scheduled"), self.key("queue")], args=[time.time()])

    def take(self, worker: str, timeout: float) -> bytes | None:
        """The next message, moved into ``worker``'s processing list (unacked)."""
        queue, processing = self.key("queue"), self.key("processing", worker)
        # redis-py's stub says int; Redis 6+ takes a float timeout.
        raw = self.client.blmove(queue, processing, timeout, "RIGHT", "LEFT")  # type: ignore[arg-type]
        return cast("bytes | None", raw)

    def ack(self, worker: str, raw: bytes, event: Event) -> None:
        """Remove the message for good (acked, or rejected without requeue); log ``event``."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lrem(self.key("processing", worker), 1, raw)  # type: ignore[arg-type]
            self._log(pipe, worker, event)
            pipe.execute()

    def requeue(self, worker: str, raw: bytes) -> None:
        """Give the message back to the front of the queue, flagged ``redelivered``."""
        message = json.loads(raw)
        message["redelivered"] = True
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lrem(self.key("processing", worker), 1, raw)  # type: ignore[arg-type]
            pipe.rpush(self.key("queue"), json.dumps(message, sort_keys=True))
            pipe.execute()

    # -- workers ------------------------------------------------------------------------

    def heartbeat(self, worker: str) -> None:
        self.client.set(self.key("alive", worker), 1, px=int(HEARTBEAT_TTL * 1000))
        self.client.sadd(self.key("workers"), worker)

    def leave(self, worker: str) -> None:
        self.client.delete(self.key("alive", worker))
        self.client.srem(self.key("workers"), worker)

    def reclaim_dead(self) -> None:
        """Move every dead worker's unacked messages back to the queue."""
        for raw_name in cast("set[bytes]", self.client.smembers(self.key("workers"))):
            name = raw_name.decode()
            if not self.client.exists(self.key("alive", name)):
                self._script(_RECLAIM)(
                    keys=[self.key("processing", name), self.key("queue"), self.key("workers")],
                    args=[name],
                )

    # -- results ------------------------------------------------------------------------

    def store(self, task_id: str, state: str, result: Any, event: Event) -> bool:
        """Store a state; False if SUCCESS was already stored (the write is discarded).

        ``event`` (a ``state`` event) is logged as it turned out: ``state`` or
        ``state-discarded``.
        """
        kept, discarded = event, {**event, "kind": "state-discarded"}
        keys = [self.key("result", task_id), self.key("log", event["worker"])]
        args = [
            state,
            json.dumps(result),
            log_field(event),
            json.dumps(kept),
            json.dumps(discarded),
        ]
        return bool(self._script(_STORE)(keys=keys, args=args))

    # -- the event log ------------------------------------------------------------------

    def _log(self, pipe: Any, owner: str, event: Event) -> None:
        pipe.hset(self.key("log", owner), log_field(event), json.dumps(event))

    def log(self, owner: str) -> list[Event]:
        """The events ``owner``'s writes logged, whether or not it lived to record them."""
        entries = cast("dict[bytes, bytes]", self.client.hgetall(self.key("log", owner)))
        return [json.loads(entry) for entry in entries.values()]

    def state(self, task_id: str) -> str | None:
        raw = cast("bytes | None", self.client.hget(self.key("result", task_id), "state"))
        return None if raw is None else raw.decode()

    def count(self, key: str) -> int:
        """One more execution of the probe call ``key``; its number, from 1."""
        return int(self.client.incr(self.key("count", key)))

    def purge(self) -> None:
        """Delete every key of this run."""
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=500))
        if keys:
            self.client.delete(*keys)
