"""What a checker returns (:class:`Violation`) and what it is told (:class:`CheckConfig`).

Both are plain values, so a checker is a pure function ``check(history, config)``: the
same call judges a simulated run and a run recorded on a real broker.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import attrs
from celery.worker.consumer.consumer import Consumer as _CeleryConsumer

from simq.history import Event

__all__ = ["TRANSPORTS", "CheckConfig", "Violation"]

#: The transports a history can come from; they differ in how unacked messages return.
TRANSPORTS = ("amqp", "redis", "sqs", "memory")

#: kombu's visibility timeouts: ``kombu/transport/redis.py`` (3600 s), SQS (1800 s).
_DEFAULT_VISIBILITY_TIMEOUT = {"redis": 3600.0, "sqs": 1800.0}

#: Celery 5.7's defaults for the per-task settings a :class:`CheckConfig` may override.
_TASK_DEFAULTS: dict[str, Any] = {
    "acks_late": False,
    "acks_on_failure": True,
    "acks_on_timeout": True,
    "reject_on_worker_lost": False,
    "retry_on_worker_lost": False,
    "max_retries": 3,
    "ignore_result": False,
    "store_errors_even_if_ignored": False,
    "time_limit": None,
    "soft_time_limit": None,
    "rate_limit": None,
}


@attrs.frozen
class Violation:
    """A guarantee a history breaks, with the events that prove it.

    Attributes:
        guarantee: The guarantee of CELERY_SEMANTICS.md §3.2, e.g. ``"G5"``.
        message: What is wrong, naming the task and message ids and the times.
        events: The events that show it, in history order.
    """

    guarantee: str
    message: str
    events: tuple[Event, ...] = ()

    def __str__(self) -> str:
        return f"{self.guarantee}: {self.message}"

    def describe(self) -> str:
        """The violation followed by its evidence, one JSON event per line."""
        lines = [str(self)]
        lines += ["    " + json.dumps(e.to_dict(), separators=(",", ":")) for e in self.events]
        return "\n".join(lines)


def _table(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


#: simq's ``Simulation(transport="polling")`` (kombu's polling transports, such as
#: ``filesystem://`` and SQLAlchemy): read as ``"memory"``, on Celery's synchronous loop.
POLLING = "polling"


def _transport(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in TRANSPORTS and value != POLLING:
        raise ValueError(f"{attribute.name} must be one of {', '.join(TRANSPORTS)}, got {value!r}")


#: Seconds one turn of Celery's synchronous consumer loop may wait for a message
#: (``loops.synloop``: ``connection.drain_events(timeout=2.0)``), on transports kombu
#: marks not asynchronous (``CheckConfig.sync_loop``).
SYNLOOP_DRAIN = 2.0
#: Whether this Celery sends an ack at once without an event loop: 5.7's
#: ``Consumer.call_soon_ack``. Before it (5.5) ``Consumer.call_soon`` queued acks and
#: rejects for ``synloop``'s next turn (``perform_pending_operations``, newest first).
ACKS_AT_ONCE_ON_SYNLOOP = hasattr(_CeleryConsumer, "call_soon_ack")


@attrs.frozen
class CheckConfig:
    """How the run that produced a history was configured; the caller fills it in.

    Per-task tables map a task name to a value; the key ``"*"`` gives the value for
    every task not named, and a missing entry means Celery's default. Per-worker tables
    work the same way with worker names.

    Attributes:
        transport: ``"amqp"``, ``"redis"``, ``"sqs"`` or ``"memory"`` (kombu's
            in-memory transport: messages come back when the channel closes, like amqp,
            but a requeued message is not flagged redelivered). ``"polling"`` is simq's
            model of kombu's polling transports (``filesystem://``, SQLAlchemy), judged
            as ``"memory"`` with ``sync_loop`` on by default.
        visibility_timeout: Seconds; None means kombu's default for the transport.
        prefetch: Worker name -> prefetch window (concurrency x multiplier; 0 unlimited).
            A worker not listed uses its ``worker-online`` event's numbers.
        acks_late, acks_on_failure, acks_on_timeout, reject_on_worker_lost,
        retry_on_worker_lost, max_retries, ignore_result, store_errors_even_if_ignored,
        time_limit, soft_time_limit, rate_limit: Per task name, the task's setting.
            ``rate_limit`` takes Celery's strings (``"10/m"``) or tasks per second.
        eta_task_limit: ``worker_eta_task_limit``, if set.
        deduplicate_successful_tasks: ``worker_deduplicate_successful_tasks``.
        persistent_backend: Whether the result backend persists (all but RPC).
        kv_backend: Whether it is a key-value backend, where SUCCESS is final (G15).
        cancel_long_running_tasks_on_connection_loss: the worker setting of that name.
        reject_stores_failure: Whether ``Reject(requeue=False)`` stores FAILURE(Reject)
            (Celery 5.7, worker/request.py ``on_failure``, #4222); False for older Celery,
            which only rejects the message and leaves the state alone.
        lost_child_keeps_success: Whether a child lost after its SUCCESS was stored keeps
            it (Celery 5.7, ``Request._success_was_stored``); False for older Celery, which
            handles the loss like any other (FAILURE, discarded by a key-value backend).
        cancel_without_retry: Whether a cold shutdown cancels an unacked acks_late task
            without storing RETRY (Celery 5.6+, ``Request.cancel(emit_retry=False)``);
            False for Celery 5.5, whose every cancel stores RETRY('cancelled by Celery').
        sync_loop: The worker ran Celery's synchronous consumer loop (``loops.synloop``:
            a transport kombu marks not asynchronous, such as ``filesystem://`` or
            SQLAlchemy), where every received task goes to the prefork pool (the
            consumer waits for a free child) and a warm shutdown runs them all (G17),
            and an ETA task holds the window open until it starts (G5). With
            ``acks_wait_for_turn`` (Celery before 5.7) an ack waits for the loop's next
            turn, up to ``SYNLOOP_DRAIN`` after it was asked for (G1). Default: on
            for ``"polling"``.
        complete: The run drained (nothing left to do): "eventually" claims are
            checked at the end of the history. Leave False for a history cut short.
        slack: Seconds of tolerance on time bounds: a start against its ETA or
            expiry, a time limit against its limit, a prefork worker's ack against the
            child's start. It covers the recording's timing jitter (clock skew between
            machines, time-limit timers, events recorded in different processes); the
            conformance suite measures it on the deployment.
        transport_slack: Seconds of tolerance on what the broker and the worker's
            consumer loop do in their own time: a visibility-timeout restore against
            the timeout, a redelivery after a fault, the consumer's next turn (when it
            lowers the prefetch count again after an ETA task). Real Redis restores
            only from a worker's poll, so restores come late and a copy's delivery is
            recorded against an earlier unacked one. None: the same as ``slack``.
    """

    transport: str = attrs.field(default="amqp", validator=_transport)
    visibility_timeout: float | None = None
    prefetch: dict[str, int] = attrs.field(factory=dict, converter=_table, hash=False)
    acks_late: dict[str, bool] = attrs.field(factory=dict, converter=_table, hash=False)
    acks_on_failure: dict[str, bool] = attrs.field(factory=dict, converter=_table, hash=False)
    acks_on_timeout: dict[str, bool] = attrs.field(factory=dict, converter=_table, hash=False)
    reject_on_worker_lost: dict[str, bool] = attrs.field(factory=dict, converter=_table, hash=False)
    retry_on_worker_lost: dict[str, bool] = attrs.field(factory=dict, converter=_table, hash=False)
    max_retries: dict[str, int | None] = attrs.field(factory=dict, converter=_table, hash=False)
    ignore_result: dict[str, bool] = attrs.field(factory=dict, converter=_table, hash=False)
    store_errors_even_if_ignored: dict[str, bool] = attrs.field(
        factory=dict, converter=_table, hash=False
    )
    time_limit: dict[str, float | None] = attrs.field(factory=dict, converter=_table, hash=False)
    soft_time_limit: dict[str, float | None] = attrs.field(
        factory=dict, converter=_table, hash=False
    )
    rate_limit: dict[str, str | float | None] = attrs.field(
        factory=dict, converter=_table, hash=False
    )
    eta_task_limit: int | None = None
    deduplicate_successful_tasks: bool = False
    persistent_backend: bool = True
    kv_backend: bool = True
    cancel_long_running_tasks_on_connection_loss: bool = False
    reject_stores_failure: bool = True
    lost_child_keeps_success: bool = True
    cancel_without_retry: bool = True
    sync_loop: bool = attrs.field(
        default=attrs.Factory(lambda self: self.transport == POLLING, takes_self=True)
    )
    acks_wait_for_turn: bool = False
    complete: bool = False
    slack: float = 0.0
    transport_slack: float | None = None

    def setting(self, name: str, task: str | None) -> Any:
        """The per-task setting ``name`` for task ``task`` (its entry, ``"*"``, default)."""
        table: dict[str, Any] = getattr(self, name)
        if task is not None and task in table:
            return table[task]
        if "*" in table:
            return table["*"]
        return _TASK_DEFAULTS[name]

    def late(self, task: str | None) -> bool:
        """Whether ``task`` acks late."""
        return bool(self.setting("acks_late", task))

    def stores_errors(self, task: str | None, ignore_result: bool | None = None) -> bool:
        """Whether failures of ``task`` are stored (results kept, or errors kept anyway).

        ``ignore_result`` is the message's own (``apply_async(ignore_result=True)``, in its
        ``published`` event), which Celery's worker reads before the task's setting.
        """
        if ignore_result is None:
            ignore_result = bool(self.setting("ignore_result", task))
        return not ignore_result or bool(self.setting("store_errors_even_if_ignored", task))

    @property
    def transport_tolerance(self) -> float:
        """The transport's tolerance in force: ``transport_slack``, else ``slack``."""
        return self.slack if self.transport_slack is None else float(self.transport_slack)

    @property
    def emulates_acks(self) -> bool:
        """redis and sqs: unacked messages return by visibility timeout, not channel close."""
        return self.transport in ("redis", "sqs")

    @property
    def consumer_holds_unacked(self) -> bool:
        """kombu's virtual transports without a visibility timeout ("memory", "polling"):
        unacked messages live in the consuming process, and a killed one loses them."""
        return self.transport in ("memory", POLLING)

    @property
    def effective_visibility_timeout(self) -> float | None:
        """The visibility timeout in force (None on amqp)."""
        if not self.emulates_acks:
            return None
        if self.visibility_timeout is not None:
            return float(self.visibility_timeout)
        return _DEFAULT_VISIBILITY_TIMEOUT[self.transport]

    def window(self, worker: str | None) -> int | None:
        """The configured prefetch window of ``worker``, if the caller gave one."""
        table = self.prefetch
        if worker is not None and worker in table:
            return int(table[worker])
        if "*" in table:
            return int(table["*"])
        return None


# -- helpers shared by the checker modules -----------------------------------------------


def when(event: Event | None) -> str:
    """``event``'s time, ISO 8601 in UTC, for messages."""
    if event is None:
        return "?"
    return event.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch(value: Any) -> float | None:
    """An ISO 8601 string (naive means UTC), datetime or number as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return float(value.timestamp())
    raise TypeError(f"not a time: {value!r}")


def exc_type(result: Any) -> str | None:
    """The exception type name of an encoded exception (``{"exc_type": ...}``)."""
    if isinstance(result, Mapping):
        name = result.get("exc_type")
        return str(name) if name is not None else None
    return None


_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def per_second(rate: str | float | None) -> float | None:
    """Celery's rate-limit notation (``"10/m"``, ``"5"``, ``2.5``) as tasks per second."""
    if rate is None or rate == "":
        return None
    if isinstance(rate, int | float):
        return float(rate) or None
    text = str(rate).strip()
    number, _, unit = text.partition("/")
    scale = _RATE_UNITS.get((unit or "s")[:1])
    if scale is None:
        raise ValueError(f"rate limit {rate!r} is not 'N', 'N/s', 'N/m' or 'N/h'")
    value = float(number) / scale
    return value or None
