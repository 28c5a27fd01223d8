"""A Celery result backend over the simulation's key-value store. Internal.

:class:`Backend` is a ``KeyValueStoreBackend``, like Celery's Redis and cache backends:
Celery's own code encodes metas, refuses to overwrite SUCCESS and serves ``AsyncResult``.
simq adds two things: every write is an event in the history (``state``, or
``state-discarded`` for a write refused after SUCCESS), and waiting for a result
(``AsyncResult.get``) drives the simulation in virtual time instead of sleeping.

Chords go the way of the backend the simulation names (``Simulation(result_backend=)``):

* ``"redis"``: Celery's ``RedisBackend`` chord methods themselves (``apply_chord``,
  ``set_chord_size``, ``add_to_chord``, ``on_chord_part_return``) run over
  :class:`RedisChordStore`, a model of the Redis server's side: its keys and the three
  Lua scripts Celery registers (each header part counted once, by task id and index; one
  dispatch claim; a ``done`` marker against late copies). Keys never expire. Without
  the redis package (which Celery 5.7's Redis backend module imports), chords keep
  Celery's generic key-value path instead (``BaseKeyValueStoreBackend``: an ``incr``
  counter of finished parts, as the cache backend; no de-duplication of copies).
* ``"database"``, ``"rpc"``: no native join. Celery's ``BaseBackend.apply_chord`` sends
  ``celery.chord_unlock``, which polls the header every ``result_chord_retry_interval``
  (a retried task) and publishes the body once every part is ready.
"""

from __future__ import annotations

import functools
import json
import types
import warnings
import weakref
from typing import Any

import celery
from celery import states
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.base import BaseBackend, KeyValueStoreBackend
from kombu.utils.json import dumps as kombu_dumps

from simq.engine.fibers import current_fiber
from simq.exceptions import NoActiveSimulation

try:
    from celery.backends.redis import RedisBackend
except ImportError:  # Celery 5.7's module needs the redis package (celery[redis])
    RedisBackend = None

__all__ = ["CHORD_BACKENDS", "Backend", "RedisChordStore", "jsonable"]

#: Celery 5.7's Redis chord join of a ready header takes what is stored (checked on a real
#: worker). On 5.5 the same join hung on a real worker (more than 20 s, its join timeout
#: 2 s; 2026-12-04) and 5.5's iter_native reads ``_cache`` of a group result, which has
#: none: there simq keeps the key-value join, which waits the join timeout.
_READY_JOIN_TAKES_STORED = (celery.VERSION.major, celery.VERSION.minor) >= (5, 7)

#: The result backends whose chord support simq models (``Simulation(result_backend=)``):
#: whether each joins natively (``supports_native_join``).
CHORD_BACKENDS = {"redis": True, "database": False, "rpc": True}

_PLAIN = (str, int, float, bool, type(None))


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data for the history (kombu's json form, else its repr)."""
    if isinstance(value, _PLAIN):
        return value
    try:
        # Through JSON and back: tuples become lists (Celery's exc_message is a tuple),
        # as a history read back from JSON Lines has them.
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        pass
    try:
        return json.loads(kombu_dumps(value))
    except (TypeError, ValueError):
        return repr(value)


class Backend(KeyValueStoreBackend):
    """The simulation's result backend (Celery's key-value semantics, chords as ``kind``)."""

    supports_native_join = True
    implements_incr = True
    persistent = True

    def __init__(
        self, app: Any = None, simulation: Any = None, kind: str = "redis", **kwargs: Any
    ) -> None:
        # Celery makes this backend from result_backend= when the app's backend is first
        # used. Outside a simulation it exists (so that Celery's eager apply(), which
        # builds a tracer over the app's backend, works) but every read or write raises.
        if kind not in CHORD_BACKENDS:
            raise ValueError(f"unknown result backend kind {kind!r}")
        polling = kind != "redis"
        if polling:
            # No counter: BaseKeyValueStoreBackend keeps BaseBackend.apply_chord (which
            # sends celery.chord_unlock) and its on_chord_part_return does nothing.
            self.implements_incr = False
        super().__init__(app=app, **kwargs)
        self.kind = kind
        self.supports_native_join = CHORD_BACKENDS[kind]
        if polling:
            self.apply_chord = types.MethodType(BaseBackend.apply_chord, self)
            self.set_chord_size = types.MethodType(BaseBackend.set_chord_size, self)
            self.add_to_chord = types.MethodType(BaseBackend.add_to_chord, self)
            self.on_chord_part_return = types.MethodType(BaseBackend.on_chord_part_return, self)
        elif RedisBackend is not None:
            # BaseKeyValueStoreBackend.__init__ made apply_chord its incr variant.
            self.apply_chord = types.MethodType(RedisBackend.apply_chord, self)
        else:
            warnings.warn(
                "simq: Celery's Redis result backend cannot be imported here (it needs the "
                "redis package: pip install 'celery[redis]'), so chords count their parts "
                "with Celery's generic key-value counter, which does not ignore a second "
                "result of a redelivered header task as Redis's does",
                RuntimeWarning,
                stacklevel=2,
            )
        self.simulation = simulation
        self.data: dict[str, Any] = {}
        self.status: dict[str, str] = {}  # task id -> last stored state, for waiting
        self.client = RedisChordStore(self)

    def ensure(self, fun: Any, args: Any, **policy: Any) -> Any:
        """RedisBackend.ensure retries on connection errors; the store never fails."""
        return fun(*args)

    def _require_simulation(self) -> None:
        if self.simulation is None:
            raise NoActiveSimulation(
                "this app's result backend is simq's simulated store, which exists only "
                "inside a simulation; use `with simq.Simulation(app) as sim:` around the "
                "call, or configure a real result_backend for use outside simq"
            )

    # -- the key-value client (KeyValueStoreBackend's interface) -----------------------

    def get(self, key: Any) -> Any:
        self._require_simulation()
        return self.data.get(_key(key))

    def mget(self, keys: Any) -> list[Any]:
        self._require_simulation()
        data = self.data
        return [data.get(_key(k)) for k in keys]

    def set(self, key: Any, value: Any) -> None:
        self._require_simulation()
        self.data[_key(key)] = value

    def delete(self, key: Any) -> None:
        self._require_simulation()
        self.data.pop(_key(key), None)

    def incr(self, key: Any) -> int:
        self._require_simulation()
        k = _key(key)
        value = int(self.data.get(k) or 0) + 1
        self.data[k] = value
        return value

    def expire(self, key: Any, value: Any) -> None:
        return None  # results never expire within a simulation

    # -- recording ---------------------------------------------------------------------

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        final = self.status.get(task_id) == states.SUCCESS
        out = super()._store_result(task_id, result, state, traceback, request, **kwargs)
        fiber = current_fiber()
        slot = getattr(fiber, "owner", None)
        worker = getattr(getattr(slot, "worker", None), "name", None)
        if worker is None:
            worker = self.simulation.acting_worker
        value = result if type(result) in _PLAIN else jsonable(self.encode_result(result, state))
        attempt = self._attempt(task_id, slot, worker, request)
        extra = {} if attempt is None else {"attempt": attempt}
        if final:
            self.simulation.record(
                "state-discarded",
                task_id=task_id,
                worker=worker,
                state=state,
                result=value,
                **extra,
            )
        else:
            self.status[task_id] = state
            self.simulation.record(
                "state", task_id=task_id, worker=worker, state=state, result=value, **extra
            )
        return out

    def _attempt(self, task_id: str, slot: Any, worker: str | None, request: Any) -> str | None:
        """The attempt (delivery tag) making a write of ``task_id``'s state, if any: the one
        a child runs, or the one whose Request the worker's main process acts for."""
        job = getattr(slot, "job", None)
        if job is not None:
            delivery = job.request
            return delivery.tag if delivery is not None and delivery.id == task_id else None
        node = self.simulation.workers.get(worker) if worker is not None else None
        return node.attempt_of(task_id, request) if node is not None else None

    def _forget(self, task_id: str) -> None:
        super()._forget(task_id)
        self.status.pop(task_id, None)
        self.simulation.record("forgotten", task_id=task_id)

    def state_of(self, task_id: str) -> str:
        """The last state stored for ``task_id`` (PENDING when none)."""
        return self.status.get(task_id) or str(states.PENDING)

    # -- waiting: virtual time instead of sleeping --------------------------------------

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> Any:
        self._ensure_not_eager()
        self._require_simulation()
        if current_fiber() is not None:
            # Inside a task that allowed it (allow_join_result(), disable_sync_subtasks=
            # False), Celery's worker child polls the store, sleeping between reads:
            # Celery's own loop, on virtual time. The task waits where it stands while
            # other children run; a task cannot drive the event loop itself.
            return super().wait_for(task_id, timeout, interval, no_ack, on_interval)
        # Without a predicate the simulation waits for a ready state of task_id in this
        # store; celery's TimeoutError on timeout.
        self.simulation.wait(None, timeout, task_id)
        return self.get_task_meta(task_id)

    def as_uri(self, include_password: bool = False) -> str:
        return "simq://"

    # -- the chord join of Celery's Redis backend ---------------------------------------

    def iter_native(self, result: Any, *args: Any, **kwargs: Any) -> Any:
        """Redis's chord join takes what is stored and waits for nothing.

        ``RedisBackend.on_chord_part_return`` marks a header that holds a group result
        ready (``header_result.on_ready()``) before joining it. Celery's asynchronous
        result consumer (``AsyncBackendMixin.iter_native``) then reads the stored states
        once and returns: a member with no stored result (``ignore_result``) joins as
        None, and ``result_chord_join_timeout`` never elapses (checked on a real worker
        and Redis). Every other join polls the store, as a key-value backend does.
        """
        if (
            _READY_JOIN_TAKES_STORED
            and self.kind == "redis"
            and RedisBackend is not None
            and result.on_ready.ready
        ):
            return AsyncBackendMixin.iter_native(self, result, **kwargs)
        return super().iter_native(result, *args, **kwargs)

    _collect_into = AsyncBackendMixin._collect_into
    _wait_for_pending = AsyncBackendMixin._wait_for_pending

    @functools.cached_property
    def result_consumer(self) -> _ReadyResultConsumer:
        return _ReadyResultConsumer(self)


class _ReadyResultConsumer:
    """Celery's Redis result consumer, for a join whose results are all ready already.

    What ``RedisResultConsumer.on_wait_for_pending`` does before it would drain pub/sub
    messages: one read of the members' stored states (ready ones only); each fills its
    result's cache and the bucket ``iter_native`` yields from. A join that is not ready yet never
    comes here (``Backend.iter_native``).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.buckets: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def _wait_for_pending(
        self,
        result: Any,
        timeout: Any = None,
        on_interval: Any = None,
        on_message: Any = None,
        **kwargs: Any,
    ) -> Any:
        # Celery's one read (ResultSet._iter_meta: get_many with max_iterations=1, which
        # sleeps one interval when a member is not ready), before any message is drained.
        for meta in result._iter_meta(timeout=timeout, **kwargs):
            for node in result.results:
                # Only a task's result takes a state (a group result has no cache).
                if node.id == meta["task_id"] and hasattr(node, "_cache"):
                    node._maybe_set_cache(meta)
                    bucket = self.buckets.pop(node, None)
                    if bucket is not None:
                        bucket.append(node)
        return iter(())


def _key(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


# Redis's chord support is Celery's RedisBackend code (whatever the installed Celery has:
# 5.5 pipelines, 5.6+ Lua scripts), run by Backend over RedisChordStore.
_REDIS_CHORD_CODE = (
    "apply_chord", "set_chord_size", "add_to_chord", "on_chord_part_return",
    "_unpack_chord_result", "_set_chord_key", "_chord_publish_claim_expires",
    "_chord_zset", "_transport_options", "_chord_part_return_script",
    "_chord_cleanup_script", "_chord_claim_extend_script", "_MAX_STR_VALUE_SIZE",
)  # fmt: skip
for _name in _REDIS_CHORD_CODE if RedisBackend is not None else ():
    if _name in vars(RedisBackend):
        setattr(Backend, _name, vars(RedisBackend)[_name])


class _Pipeline:
    """``client.pipeline()``: commands queued by chaining, run in order by ``execute``."""

    def __init__(self, store: RedisChordStore) -> None:
        self.store = store
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.calls.clear()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or not hasattr(self.store, name):
            raise AttributeError(name)

        def queue(*args: Any, **kwargs: Any) -> _Pipeline:
            self.calls.append((name, args, kwargs))
            return self

        return queue

    def execute(self) -> list[Any]:
        calls, self.calls = self.calls, []
        return [getattr(self.store, name)(*args, **kwargs) for name, args, kwargs in calls]


class RedisChordStore:
    """The Redis server as Celery's RedisBackend chord code sees it (``backend.client``).

    Plain keys live in the backend's store; a chord's part results are a sorted set
    (``{member: score}``) or a list under their key, its counted parts a set. The
    commands Celery's chord code sends (5.5: a pipeline of ZADD/RPUSH, ZCOUNT/LLEN, GET;
    5.6+: the Lua scripts CHORD_PART_RETURN_LUA, CHORD_CLEANUP_LUA and
    CHORD_CLAIM_EXTEND_LUA, modelled line for line and atomic as Redis runs them) act on
    them. Keys never expire within a simulation (claims included).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def data(self) -> dict[str, Any]:
        self.backend._require_simulation()
        return self.backend.data

    # -- commands ----------------------------------------------------------------------

    def get(self, key: Any) -> Any:
        return self.data.get(_key(key))

    def set(self, key: Any, value: Any, ex: Any = None, nx: bool = False) -> bool:
        k = _key(key)
        if nx and k in self.data:
            return False
        self.data[k] = value
        return True

    def delete(self, *keys: Any) -> int:
        return sum(self.data.pop(_key(k), None) is not None for k in keys)

    def incr(self, key: Any, amount: int = 1) -> int:
        k = _key(key)
        value = int(self.data.get(k) or 0) + amount
        self.data[k] = value
        return value

    def expire(self, key: Any, seconds: Any) -> bool:
        return _key(key) in self.data

    def zadd(self, key: Any, mapping: dict[Any, Any]) -> int:
        zset = self.data.setdefault(_key(key), {})
        added = sum(member not in zset for member in mapping)
        for member, score in mapping.items():
            zset[member] = float(score)
        return added

    def zcount(self, key: Any, low: Any, high: Any) -> int:
        lo, hi = float(low), float(high)
        return sum(lo <= score <= hi for score in (self.data.get(_key(key)) or {}).values())

    def zrange(self, key: Any, start: int, end: int) -> list[Any]:
        zset = self.data.get(_key(key)) or {}
        ordered = sorted(zset, key=lambda member: (zset[member], _sortable(member)))
        return _span(ordered, start, end)

    def rpush(self, key: Any, *values: Any) -> int:
        items = self.data.setdefault(_key(key), [])
        items.extend(values)
        return len(items)

    def llen(self, key: Any) -> int:
        return len(self.data.get(_key(key)) or [])

    def lrange(self, key: Any, start: int, end: int) -> list[Any]:
        return _span(self.data.get(_key(key)) or [], start, end)

    def pipeline(self) -> _Pipeline:
        return _Pipeline(self)

    def register_script(self, source: str) -> Any:
        import celery.backends.redis as redis_backend

        scripts = {
            "CHORD_PART_RETURN_LUA": self._part_return,
            "CHORD_CLEANUP_LUA": self._cleanup,
            "CHORD_CLAIM_EXTEND_LUA": self._claim_extend,
        }
        for name, script in scripts.items():
            if source == getattr(redis_backend, name, None):
                return script
        raise NotImplementedError(
            "simq's model of Redis runs only the chord scripts of celery.backends.redis"
        )

    # -- Celery's Lua scripts ----------------------------------------------------------

    def _part_return(self, keys: list[Any], args: list[Any], client: Any = None) -> list[Any]:
        jkey, tkey, skey, dkey, _gkey, ckey = keys
        tid, value, ordered, score, _, _, _, claim_token = args
        data = self.data
        if data.get(_key(ckey)) == "done":
            return [-1, 0, 0, 0]
        member = f"{tid}:{score}"
        counted = data.setdefault(_key(dkey), set())
        if member not in counted:
            if str(ordered) == "1":
                self.zadd(jkey, {value: score})
            else:
                self.rpush(jkey, value)
            counted.add(member)
        readycount = self.zcount(jkey, "-inf", "+inf") if str(ordered) == "1" else self.llen(jkey)
        totaldiff = self.get(tkey)
        size = self.get(skey)
        claimed = 0
        complete = size is not None and readycount == int(size) + int(totaldiff or 0)
        if complete and self.set(ckey, claim_token, nx=True):
            claimed = 1
        return [readycount, totaldiff, size, claimed]

    def _cleanup(self, keys: list[Any], args: list[Any], client: Any = None) -> int:
        ckey, jkey, tkey, skey, dkey = keys
        token, done_expires = args
        if self.get(ckey) == token:
            self.delete(jkey, tkey, skey, dkey)
            if done_expires and int(done_expires) > 0:
                self.set(ckey, "done")
            return 1
        return 0

    def _claim_extend(self, keys: list[Any], args: list[Any], client: Any = None) -> int:
        ckey, skey = keys
        token = args[0]
        if self.get(ckey) == token:
            return 1
        if self.get(ckey) is None and self.get(skey) is not None:
            return int(self.set(ckey, token, nx=True))
        return 0


def _sortable(member: Any) -> bytes:
    return member if isinstance(member, bytes) else str(member).encode()


def _span(entries: list[Any], start: int, end: int) -> list[Any]:
    """Redis's inclusive [start, end] range, negative indices from the end."""
    n = len(entries)
    stop = n if end == -1 else (end + 1 if end >= 0 else n + end + 1)
    return list(entries[start:stop])
