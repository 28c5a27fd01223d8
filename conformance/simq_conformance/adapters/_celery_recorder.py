"""Recording a real Celery worker's steps as simq history events (internal).

:class:`CeleryRecorder` hooks a process's Celery and kombu so that every observable step
lands in a :class:`~simq_conformance.sink.Sink`, in simq's event vocabulary. What each
hook sees, and where it runs in a prefork worker:

=========================================  ================  ===========================
hook                                       process           events
=========================================  ================  ===========================
``before_task_publish`` signal             any publisher     ``published`` (and stamps a
                                                             fresh ``simq_message_id``
                                                             header: a retry is a new
                                                             message)
``Consumer.create_task_handler`` wrapper   worker parent     ``delivered`` [redelivered]
                                                             (and stamps a fresh
                                                             ``simq_attempt`` header)
``Consumer.connect`` wrapper               worker parent     ``connection-restored``
``Consumer.on_connection_error_after_      worker parent     ``connection-lost``
connected`` wrapper
``Tasks.shutdown`` (task channel closes)   worker parent     ``worker-offline`` [shutdown]
``worker_ready`` signal                    worker parent     ``worker-online``
``task_prerun`` signal                     pool child        ``started``
``task_postrun`` signal (its ``state``)    pool child        ``succeeded`` ``failed``
                                                             ``retried`` ``ignored``
                                                             ``declined``
``Backend.store_result`` wrapper           both              ``state`` /
                                                             ``state-discarded``
kombu ``Message.ack/reject/requeue``       worker parent     ``acked`` ``rejected``
                                                             ``ack-failed``
``Request.on_failure`` (WorkerLostError)   worker parent     ``child-lost`` [exitcode]
``Request.on_timeout`` / ``on_failure``    worker parent     ``time-limit`` (+ ``failed``)
``Request.cancel``                         worker parent     ``cancelled`` [reason]
``Request._announce_revoked``              worker parent     ``revoked`` [reason]
``task_unknown`` signal                    worker parent     ``unregistered``
=========================================  ================  ===========================

Every event of one delivery carries its ``attempt`` id. The parent stamps it into the
message's headers as it receives the message, before Celery builds the Request: the
Request's dict, which Celery sends to the pool child and hands to the backend as
``request``, carries it from there. kombu's own delivery tag cannot serve: RabbitMQ
numbers deliveries per channel (a reconnected worker counts from 1 again), and kombu's
Redis transport gives a message one tag for life (a visibility-timeout copy shares it).

Signals and class patches are process-wide, so a process has at most one recorder
installed; worker processes install it at import of the boot module (before the pool
forks, so children inherit it), the test process installs it for one run and removes
it afterwards.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from typing import Any

from simq.message import canvas_details
from simq.seams.backend import jsonable
from simq_conformance.sink import Sink

__all__ = ["HEADER", "CeleryRecorder", "worker_name"]

#: The message header carrying simq's message id (one per publication).
HEADER = "simq_message_id"
#: The message header carrying the attempt id (one per delivery), stamped on receipt.
ATTEMPT = "simq_attempt"

_OUTCOMES = {
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "RETRY": "retried",
    "IGNORED": "ignored",
    "REJECTED": "declined",
}
_EXIT = re.compile(r"(exitcode|signal) (-?\d+)")

_installed: CeleryRecorder | None = None

#: Celery releases the recorder knows how to hook.
SUPPORTED_CELERY = ">=5.5,<5.8"


def _cancel_on_shutdown(consumer_cls: Any) -> str:
    """The Consumer method a cold shutdown cancels running tasks with.

    Celery 5.6 and 5.7 call it ``cancel_active_requests``; 5.5 called it
    ``cancel_all_unacked_requests``.
    """
    for name in ("cancel_active_requests", "cancel_all_unacked_requests"):
        if name in consumer_cls.__dict__:
            return name
    import celery

    raise RuntimeError(
        f"simq_conformance records Celery {SUPPORTED_CELERY} (5.5, 5.6, 5.7); Celery "
        f"{celery.__version__} has neither Consumer.cancel_active_requests (5.6+) nor "
        "Consumer.cancel_all_unacked_requests (5.5), which a cold shutdown calls"
    )


def worker_name(hostname: str | None) -> str | None:
    """A history worker name from a Celery node name: ``worker-1@host`` -> ``worker-1``."""
    if not hostname:
        return None
    return str(hostname).split("@", 1)[0]


def _safe(value: Any) -> Any:
    try:
        return jsonable(value)
    except Exception:  # an unserializable result must not lose the event
        return repr(value)


def _exception(exc: Any, backend: Any) -> Any:
    """Celery's json form of ``exc`` (the backend's ``prepare_exception``), as simq's
    worker records it."""
    if not isinstance(exc, BaseException):
        return _safe(exc)
    return _safe(backend.prepare_exception(exc, "json"))


def _message_id(request: Any) -> str | None:
    """The simq message id of a worker Request (its message) or a task Context."""
    headers = getattr(getattr(request, "message", None), "headers", None)
    if headers:
        return headers.get(HEADER)  # type: ignore[no-any-return]
    get = getattr(request, "get", None)
    return get(HEADER) if callable(get) else None


def _attempt(request: Any) -> dict[str, Any]:
    """``{"attempt": id}`` for a worker Request (its message) or a task Context, if any."""
    headers = getattr(getattr(request, "message", None), "headers", None)
    if headers:
        value = headers.get(ATTEMPT)
    else:
        get = getattr(request, "get", None)
        value = get(ATTEMPT) if callable(get) else None
    return {} if value is None else {"attempt": value}


def _timelimit(value: Any) -> list[Any] | None:
    """Celery's ``timelimit`` header ``(hard, soft)`` as simq records it."""
    if not isinstance(value, list | tuple) or not any(v is not None for v in value):
        return None
    return list(value)


def _exitcode(exc: Any) -> int | None:
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    found = _EXIT.search(str(exc))
    if found is None:
        return None
    number = int(found.group(2))
    return -number if found.group(1) == "signal" else number


class CeleryRecorder:
    """Records this process's Celery steps into ``sink``.

    Args:
        sink: Where events go.
        worker: The worker name for events whose hook cannot tell (the process's own
            worker in a worker process; None in the test process).
        publish_only: Hook publishing only (the test process of a run whose workers
            are other processes).
    """

    def __init__(self, sink: Sink, worker: str | None = None, publish_only: bool = False):
        self.sink = sink
        self.worker = worker
        self.publish_only = publish_only
        self._patches: list[tuple[Any, str, Any]] = []
        # message id -> worker it was delivered to: an in-process pool's request knows
        # only the machine's hostname, not the worker's node name.
        self._holders: dict[str, str | None] = {}
        self._cancelling: str | None = None
        self._signals: list[tuple[Any, Callable[..., Any]]] = []
        self._deliveries = itertools.count(1)  # this process's deliveries: attempt ids
        self._prerun_of: str | None = None  # the task id task_prerun last announced

    # -- install / uninstall -----------------------------------------------------------

    def install(self) -> CeleryRecorder:
        global _installed
        if _installed is not None:
            raise RuntimeError(
                f"a CeleryRecorder is already installed in this process ({_installed.sink}); "
                "uninstall it first: signals and patches are process-wide"
            )
        from celery import signals

        self._connect(signals.before_task_publish, self._on_publish)
        if not self.publish_only:
            self._install_worker_hooks(signals)
        _installed = self
        return self

    def uninstall(self) -> None:
        global _installed
        for signal, receiver in reversed(self._signals):
            signal.disconnect(receiver, dispatch_uid=id(receiver))
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self._signals.clear()
        self._patches.clear()
        if _installed is self:
            _installed = None

    def _connect(self, signal: Any, receiver: Callable[..., Any]) -> None:
        signal.connect(receiver, weak=False, dispatch_uid=id(receiver))
        self._signals.append((signal, receiver))

    def _patch(self, owner: Any, attr: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__.get(attr)
        if original is None:
            import celery

            raise RuntimeError(
                f"simq_conformance records Celery {SUPPORTED_CELERY} (5.5, 5.6, 5.7) and "
                f"hooks {owner.__module__}.{owner.__name__}.{attr}, which Celery "
                f"{celery.__version__} (kombu's Message for ack/reject) does not define"
            )
        self._patches.append((owner, attr, original))
        setattr(owner, attr, make(original))

    def _install_worker_hooks(self, signals: Any) -> None:
        import celery.app.trace as trace
        from celery.backends.base import Backend
        from celery.worker.consumer.consumer import Consumer
        from celery.worker.consumer.tasks import Tasks
        from celery.worker.request import Request
        from kombu.message import Message

        self._connect(signals.worker_ready, self._on_worker_ready)
        self._connect(signals.task_prerun, self._on_prerun)
        self._patch(trace, "build_tracer", self._wrap_build_tracer)
        self._connect(signals.task_postrun, self._on_postrun)
        self._connect(signals.task_unknown, self._on_unknown)
        self._patch(Consumer, "create_task_handler", self._wrap_task_handler)
        self._patch(Consumer, "connect", self._wrap_connect)
        self._patch(Consumer, "on_connection_error_after_connected", self._wrap_connection_error)
        self._patch(Backend, "store_result", self._wrap_store_result)
        self._patch(Request, "on_failure", self._wrap_on_failure)
        self._patch(Request, "on_timeout", self._wrap_on_timeout)
        self._patch(Request, "cancel", self._wrap_cancel)
        self._patch(Request, "_announce_revoked", self._wrap_announce_revoked)
        self._patch(Consumer, _cancel_on_shutdown(Consumer), self._wrap_cancel_active)
        self._patch(Tasks, "shutdown", self._wrap_consumer_shutdown)
        self._patch(Message, "ack", self._wrap_disposition("ack"))
        self._patch(Message, "reject", self._wrap_disposition("reject"))
        self._patch(Message, "requeue", self._wrap_disposition("requeue"))

    # -- publishing --------------------------------------------------------------------

    def _on_publish(
        self,
        sender: Any = None,
        headers: dict[str, Any] | None = None,
        routing_key: str | None = None,
        properties: dict[str, Any] | None = None,
        body: Any = None,
        **_: Any,
    ) -> None:
        if headers is None or not str(headers.get("task", "")).startswith("probes."):
            return
        from kombu.utils.uuid import uuid

        # A retry copies the request's headers: give every publication its own id.
        message_id = headers[HEADER] = uuid()
        self.sink.record(
            "published",
            task_id=headers.get("id"),
            message_id=message_id,
            task=headers.get("task"),
            queue=routing_key,
            retries=headers.get("retries") or 0,
            eta=headers.get("eta"),
            expires=headers.get("expires"),
            priority=(properties or {}).get("priority"),
            parent_id=headers.get("parent_id"),
            root_id=headers.get("root_id"),
            ignore_result=headers.get("ignore_result"),
            timelimit=_timelimit(headers.get("timelimit")),
            # The body is still (args, kwargs, embed) here: the same canvas keys simq's
            # broker records (group, chord, chain, link, link_error), for C1-C4.
            **canvas_details(str(headers.get("task")), headers, body),
        )

    # -- the worker parent: consuming --------------------------------------------------

    def _wrap_task_handler(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def create_task_handler(consumer: Any, *args: Any, **kwargs: Any) -> Any:
            handler = original(consumer, *args, **kwargs)
            name = worker_name(consumer.hostname)

            def on_task_received(message: Any) -> Any:
                recorder._on_delivered(name, message)
                return handler(message)

            return on_task_received

        return create_task_handler

    def _on_delivered(self, worker: str | None, message: Any) -> None:
        message._simq_worker = worker
        headers = message.headers
        if headers is None:
            headers = message.headers = {}
        if self.worker is None and headers.get(HEADER):
            self._holders[headers[HEADER]] = worker
        # Unique in the run: a worker's node name, its process, its delivery count.
        attempt = f"{worker}.{os.getpid()}.{next(self._deliveries)}"
        headers[ATTEMPT] = message._simq_attempt = attempt
        info = message.delivery_info or {}
        self.sink.record(
            "delivered",
            task_id=headers.get("id"),
            message_id=headers.get(HEADER),
            worker=worker,
            queue=info.get("routing_key"),
            redelivered=bool(info.get("redelivered")),
            attempt=attempt,
        )

    def _wrap_connect(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def connect(consumer: Any) -> Any:
            conn = original(consumer)
            count = consumer.__dict__.get("_simq_connects", 0) + 1
            consumer.__dict__["_simq_connects"] = count
            if count > 1:
                recorder.sink.record(
                    "connection-restored", worker=worker_name(consumer.hostname) or recorder.worker
                )
            return conn

        return connect

    def _wrap_connection_error(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def on_connection_error_after_connected(consumer: Any, exc: Any) -> Any:
            # The consumer found its connection broken by itself (no fault of the
            # adapter's): it closes it and reconnects, and the broker takes back what
            # the worker held (amqp at once, a virtual transport as its channel closes).
            # Found on sqla+sqlite, where a session error broke the channel ("cannot
            # start a transaction within a transaction", in the worker's log) and the
            # worker's unacked messages came back after the reconnect.
            recorder.sink.record(
                "connection-lost", worker=worker_name(consumer.hostname) or recorder.worker
            )
            return original(consumer, exc)

        return on_connection_error_after_connected

    def _wrap_consumer_shutdown(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def shutdown(step: Any, consumer: Any) -> Any:
            # The task channel closes here at shutdown, after running tasks finished
            # (warm) or were cancelled (cold): the broker takes back what the worker
            # still holds (amqp at channel close, redis by restore_at_shutdown), so the
            # worker is offline from now on, though its process lives a little longer.
            if consumer.task_consumer is not None:
                recorder.sink.record(
                    "worker-offline",
                    worker=worker_name(consumer.hostname) or recorder.worker,
                    reason="shutdown",
                )
            return original(step, consumer)

        return shutdown

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        consumer = sender
        controller = getattr(consumer, "controller", None)
        queues = sorted(consumer.app.amqp.queues.consume_from or ())
        self.sink.record(
            "worker-online",
            worker=worker_name(consumer.hostname) or self.worker,
            concurrency=getattr(controller, "concurrency", None),
            queues=queues,
            prefetch_multiplier=getattr(consumer, "prefetch_multiplier", None),
        )

    def _wrap_disposition(self, action: str) -> Callable[[Any], Any]:
        recorder = self

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def disposition(message: Any, *args: Any, **kwargs: Any) -> Any:
                headers = message.headers or {}
                kind = "acked"
                details: dict[str, Any] = {}
                if action != "ack":
                    requeue = action == "requeue" or bool(
                        kwargs.get("requeue", args[0] if args else False)
                    )
                    kind, details = "rejected", {"requeue": requeue}
                where: dict[str, Any] = {
                    "task_id": headers.get("id"),
                    "message_id": headers.get(HEADER),
                    "worker": getattr(message, "_simq_worker", None) or recorder.worker,
                }
                attempt = getattr(message, "_simq_attempt", None) or headers.get(ATTEMPT)
                if attempt is not None:
                    details["attempt"] = attempt
                # Stamped when issued: once the broker has it back, another worker may
                # record the redelivery before this call returns.
                issued = time.time()
                try:
                    result = original(message, *args, **kwargs)
                except Exception:
                    recorder.sink.record("ack-failed", **where, **details)
                    raise
                recorder.sink.record(kind, **where, at=issued, **details)
                return result

            return disposition

        return make

    def _wrap_announce_revoked(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def announce_revoked(
            request: Any, reason: str, terminated: bool, signum: Any, expired: bool
        ) -> Any:
            # Recorded on entry: Celery stores REVOKED and acks before its task_revoked
            # signal, and with an eager ack the signal would come after the ack.
            recorder.sink.record(
                "revoked",
                **recorder._where(request),
                reason="expired" if expired else reason,
                expired=bool(expired),
                terminated=bool(terminated),
            )
            return original(request, reason, terminated, signum, expired)

        return announce_revoked

    def _on_unknown(
        self,
        sender: Any = None,
        message: Any = None,
        name: str | None = None,
        id: str | None = None,
        **_: Any,
    ) -> None:
        headers = getattr(message, "headers", None) or {}
        attempt = headers.get(ATTEMPT)
        self.sink.record(
            "unregistered",
            task_id=id,
            message_id=headers.get(HEADER),
            worker=worker_name(getattr(sender, "hostname", None)) or self.worker,
            task=name,
            **({} if attempt is None else {"attempt": attempt}),
        )

    def _wrap_on_failure(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def on_failure(request: Any, exc_info: Any, *args: Any, **kwargs: Any) -> Any:
            from billiard.exceptions import TimeLimitExceeded, WorkerLostError

            exc = getattr(exc_info, "exception", None)
            exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback
            lost = isinstance(exc, WorkerLostError) or (
                isinstance(exc, SystemExit)
                and not (request._already_cancelled or request._already_revoked)
            )
            if isinstance(exc, TimeLimitExceeded):
                # 5.7 reaches on_failure before on_timeout for a hard limit: record the
                # limit here, once, ahead of the FAILURE write it leads to.
                recorder._timed_out(request, exc.args[0] if exc.args else None)
            elif lost:
                recorder.sink.record(
                    "child-lost",
                    task_id=request.id,
                    message_id=_message_id(request),
                    worker=worker_name(request.hostname) or recorder.worker,
                    exitcode=_exitcode(exc),
                    **_attempt(request),
                )
            return original(request, exc_info, *args, **kwargs)

        return on_failure

    def _wrap_on_timeout(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def on_timeout(request: Any, soft: bool, timeout: float) -> Any:
            if soft:
                recorder.sink.record(
                    "time-limit", **recorder._where(request), which="soft", limit=timeout
                )
            else:
                recorder._timed_out(request, timeout)
            return original(request, soft, timeout)

        return on_timeout

    def _timed_out(self, request: Any, limit: Any) -> None:
        """``time-limit`` [hard] and ``failed`` for ``request``, once."""
        if request.__dict__.get("_simq_timed_out"):
            return
        request.__dict__["_simq_timed_out"] = True
        from billiard.exceptions import TimeLimitExceeded

        where = self._where(request)
        self.sink.record("time-limit", **where, which="hard", limit=limit)
        exception = _exception(TimeLimitExceeded(limit), request.task.backend)
        self.sink.record("failed", **where, exception=exception)

    def _where(self, request: Any) -> dict[str, Any]:
        return {
            "task_id": request.id,
            "message_id": _message_id(request),
            "worker": worker_name(request.hostname) or self.worker,
            **_attempt(request),
        }

    def _wrap_cancel(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def cancel(request: Any, *args: Any, **kwargs: Any) -> Any:
            # Celery cancels running tasks on a cold shutdown (cancel_active_requests)
            # and, with worker_cancel_long_running_tasks_on_connection_loss, when the
            # connection is lost.
            if not request._already_cancelled:
                recorder.sink.record(
                    "cancelled",
                    **recorder._where(request),
                    reason=recorder._cancelling or "connection-lost",
                )
            return original(request, *args, **kwargs)

        return cancel

    def _wrap_cancel_active(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def cancel_active_requests(consumer: Any, *args: Any, **kwargs: Any) -> Any:
            recorder._cancelling = "shutdown"
            try:
                return original(consumer, *args, **kwargs)
            finally:
                recorder._cancelling = None

        return cancel_active_requests

    # -- the pool child: executing -----------------------------------------------------

    def _wrap_build_tracer(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """Tracers that record a task Celery skipped without running it.

        With ``worker_deduplicate_successful_tasks``, the tracer returns a redelivered
        task that already succeeded before ``task_prerun``, so no signal tells of it. The
        simulator records it as ``started`` then ``succeeded`` [deduplicated]; so does
        this: a trace that ended well with no runtime and no ``task_prerun`` of its id.
        """
        recorder = self

        def build_tracer(name: str, task: Any, *args: Any, **kwargs: Any) -> Any:
            tracer = original(name, task, *args, **kwargs)

            def trace(uuid: str, args_: Any, kwargs_: Any, request: Any = None) -> Any:
                recorder._prerun_of = None
                out = tracer(uuid, args_, kwargs_, request)
                skipped = (
                    recorder._prerun_of != uuid
                    and isinstance(out, tuple)
                    and len(out) == 4
                    and out[1] is None  # no failure info
                    and out[2] is None  # no runtime: the body never ran
                    and isinstance(request, dict)
                )
                if skipped:
                    recorder._deduplicated(name, uuid, request)
                return out

            return trace

        return build_tracer

    def _deduplicated(self, name: str, task_id: str, request: dict[str, Any]) -> None:
        common = {
            "task_id": task_id,
            "message_id": request.get(HEADER),
            "worker": worker_name(request.get("hostname")) or self.worker,
            **({} if request.get(ATTEMPT) is None else {"attempt": request[ATTEMPT]}),
        }
        self.sink.record("started", task=name, retries=request.get("retries") or 0, **common)
        self.sink.record("succeeded", deduplicated=True, **common)

    def _on_prerun(
        self, sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any
    ) -> None:
        self._prerun_of = task_id
        request = task.request
        self.sink.record(
            "started",
            task_id=task_id,
            message_id=request.get(HEADER),
            worker=self._worker_of(request),
            task=task.name,
            retries=request.retries or 0,
            **_attempt(request),
        )

    def _on_postrun(
        self,
        sender: Any = None,
        task_id: str | None = None,
        task: Any = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        kind = _OUTCOMES.get(state or "")
        if kind is None:
            return
        details: dict[str, Any] = {}
        if kind == "retried":
            inner = getattr(retval, "exc", None)
            when = getattr(retval, "when", None)
            details = {
                "exception": _exception(inner, task.backend) if inner is not None else None,
                "when": when if isinstance(when, int | float) or when is None else str(when),
            }
        elif kind == "declined":
            details = {"requeue": bool(getattr(retval, "requeue", False))}
        elif kind != "succeeded":
            details = {
                "exception": _exception(retval, task.backend) if retval is not None else None
            }
        request = task.request
        self.sink.record(
            kind,
            task_id=task_id,
            message_id=request.get(HEADER),
            worker=self._worker_of(request),
            **details,
            **_attempt(request),
        )

    def _worker_of(self, request: Any) -> str | None:
        """The worker running ``request`` (a task's context) in this process."""
        hostname = str(getattr(request, "hostname", None) or "")
        if "@" in hostname:
            return worker_name(hostname)
        message_id = request.get(HEADER) if hasattr(request, "get") else None
        return self._holders.get(message_id or "") or self.worker

    # -- the result backend ------------------------------------------------------------

    def _wrap_store_result(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def store_result(
            backend: Any,
            task_id: str,
            result: Any,
            state: str,
            traceback: Any = None,
            request: Any = None,
            **kwargs: Any,
        ) -> Any:
            from celery.backends.base import BaseKeyValueStoreBackend

            kind = "state"
            if isinstance(backend, BaseKeyValueStoreBackend):
                # Key-value backends drop any write after SUCCESS (G15): say so.
                try:
                    if backend._get_task_meta_for(task_id).get("status") == "SUCCESS":
                        kind = "state-discarded"
                except Exception:
                    pass
            stored = original(
                backend, task_id, result, state, traceback=traceback, request=request, **kwargs
            )
            # No request: a write outside any attempt (a revoke command marking REVOKED),
            # which simq records without a worker too.
            worker = recorder._worker_of(request) if request is not None else None
            # The stored value as the backend encodes it (an exception in Celery's json
            # form), as simq's backend records it.
            try:
                value = _safe(backend.encode_result(result, state))
            except Exception:
                value = _safe(result)
            # The attempt whose Request (or task context) writes, when the write is its own
            # task's (a chord's callback state is written by a member's attempt).
            attempt = {}
            if request is not None and getattr(request, "id", None) == task_id:
                attempt = _attempt(request)
            recorder.sink.record(
                kind, task_id=task_id, worker=worker, state=state, result=value, **attempt
            )
            return stored

        return store_result
