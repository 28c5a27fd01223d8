"""``simq.Task``: Celery's Task API, attribute for attribute.

A task knows nothing of time or faults: ``apply_async`` turns a call into a message and
hands it to the app's active simulation; ``apply`` runs the body in process with Celery's
eager semantics; ``retry`` follows Celery 5.7 (CELERY_SEMANTICS.md §1.8).
"""

from __future__ import annotations

import datetime as dt
import inspect
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from simq import states
from simq.arguments import NO_HEADER, header_from, merge_retry_arguments
from simq.exceptions import (
    MaxRetriesExceededError,
    Reject,
    Retry,
    SimqError,
)
from simq.result import AsyncResult, EagerResult
from simq.runtime import Context, Env, task_request, trace
from simq.serialization import roundtrip

if TYPE_CHECKING:
    from simq.app import App
    from simq.canvas import Signature

__all__ = ["Task"]

_EXEC_OPTIONS = (
    "queue",
    "routing_key",
    "exchange",
    "priority",
    "expires",
    "serializer",
    "delivery_mode",
    "compression",
    "time_limit",
    "soft_time_limit",
)

# Attribute, setting: filled from app.conf when the attribute is None at bind time.
_FROM_CONFIG = (
    ("serializer", "task_serializer"),
    ("rate_limit", "task_default_rate_limit"),
    ("priority", "task_default_priority"),
    ("track_started", "task_track_started"),
    ("acks_late", "task_acks_late"),
    ("acks_on_failure_or_timeout", "task_acks_on_failure_or_timeout"),
    ("reject_on_worker_lost", "task_reject_on_worker_lost"),
    ("retry_on_worker_lost", "task_retry_on_worker_lost"),
    ("ignore_result", "task_ignore_result"),
    ("store_eager_result", "task_store_eager_result"),
    ("store_errors_even_if_ignored", "task_store_errors_even_if_ignored"),
    ("time_limit", "task_time_limit"),
    ("soft_time_limit", "task_soft_time_limit"),
)


class Task:
    """A task type. Instantiated once per app, like Celery's (actor-like) tasks.

    Subclass it for a custom base (``@app.task(base=MyTask)``) to share hooks such as
    ``on_failure``. Every attribute below has Celery 5.7's default.
    """

    app: ClassVar[App | None] = None
    name: str | None = None
    typing: bool | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180
    rate_limit: str | float | None = None
    ignore_result: bool | None = None
    trail: bool = True
    send_events: bool = True
    store_errors_even_if_ignored: bool | None = None
    serializer: str | None = None
    compression: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    backend: Any = None
    track_started: bool | None = None
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    acks_on_failure: bool | None = None
    acks_on_timeout: bool | None = None
    reject_on_worker_lost: bool | None = None
    retry_on_worker_lost: bool | None = None
    throws: tuple[type[BaseException], ...] = ()
    expires: float | dt.datetime | None = None
    priority: int | None = None
    resultrepr_maxsize: int = 1024
    store_eager_result: bool | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}  # noqa: RUF012 - Celery's class attribute
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    queue: str | None = None
    routing_key: str | None = None
    exchange: str | None = None
    delivery_mode: int | None = None
    abstract: bool = True
    _bind_flag: ClassVar[bool] = False

    MaxRetriesExceededError = MaxRetriesExceededError

    # -- binding -----------------------------------------------------------------------

    @classmethod
    def bind(cls, app: App) -> App:
        """Attach the task type to ``app`` and fill unset attributes from its config."""
        cls.app = app
        filled = tuple(attr for attr, _ in _FROM_CONFIG if getattr(cls, attr) is None)
        filled += tuple(
            attr for attr in ("acks_on_failure", "acks_on_timeout") if getattr(cls, attr) is None
        )
        if cls.typing is None:
            cls.typing = app.strict_typing
        # Attributes left None are filled from app.conf, and filled again when app.conf
        # changes later (Celery reads them when the app is finalized, after config).
        cls._config_filled = filled  # type: ignore[attr-defined]
        cls._fill_from_config(app)
        cls.on_bound(app)
        return app

    @classmethod
    def _fill_from_config(cls, app: App) -> None:
        conf = app.conf
        filled = cls.__dict__.get("_config_filled", ())
        for attr, setting in _FROM_CONFIG:
            if attr in filled:
                setattr(cls, attr, conf[setting])
        # 5.7: acks_on_failure / acks_on_timeout fall back to their setting, then to the
        # deprecated combined flag, then to True.
        for attr, setting in (
            ("acks_on_failure", "task_acks_on_failure"),
            ("acks_on_timeout", "task_acks_on_timeout"),
        ):
            if attr in filled:
                value = conf[setting]
                if value is None:
                    value = cls.acks_on_failure_or_timeout
                setattr(cls, attr, True if value is None else bool(value))
        cls._conf_version = conf.version  # type: ignore[attr-defined]

    @classmethod
    def on_bound(cls, app: App) -> None:
        """Called when the task type is bound to an app; override to customise."""

    # -- the body ----------------------------------------------------------------------

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Tasks must define the run method.")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task body directly, in process: no message, no state stored."""
        from simq.runtime import pop_request, push_request

        push_request(self, Context(args=args, kwargs=kwargs))
        try:
            return self.run(*args, **kwargs)
        finally:
            pop_request(self)

    @property
    def request(self) -> Context:
        """The current request (``self.request.id``, ``.retries``, ``.args``, ...)."""
        req = task_request(self)
        if req is None:
            req = Context()
        return req

    # -- calling -----------------------------------------------------------------------

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Shortcut for ``apply_async(args, kwargs)``."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task as a message to the active simulation (Celery's signature).

        Options: countdown, eta, expires, queue, routing_key, exchange, priority,
        task_id, headers, link, link_error, ignore_result, time_limit, soft_time_limit,
        shadow, serializer, retries and Celery's internal canvas options.
        """
        app = self._get_app()
        if type(self).__dict__.get("_conf_version") != app.conf.version:
            app.refresh_tasks()
        if self.soft_time_limit and self.time_limit and self.soft_time_limit > self.time_limit:
            raise ValueError("soft_time_limit must be less than or equal to time_limit")
        # Celery checks only the task's attributes; a per-call pair is checked too, since
        # the worker would otherwise kill the task before its soft limit could fire.
        soft = options.get("soft_time_limit", self.soft_time_limit)
        hard = options.get("time_limit", self.time_limit)
        if soft and hard and soft > hard:
            raise ValueError("soft_time_limit must be less than or equal to time_limit")
        if self.typing:
            self._check_arguments(args, kwargs)
        shadow = shadow or self.shadow_name(args, kwargs, options)
        options = dict(self._get_exec_options(), **options)
        options.setdefault("ignore_result", self.ignore_result)
        if app.conf.task_always_eager:
            serializer = options.get("serializer") or self.serializer or "json"
            args = roundtrip(list(args or ()), serializer)
            kwargs = roundtrip(dict(kwargs or {}), serializer)
            return self.apply(
                args,
                kwargs,
                task_id=task_id or app.new_task_id(),
                link=link,
                link_error=link_error,
                **options,
            )
        options["task_id"] = task_id
        options["link"] = link
        options["link_error"] = link_error
        options["shadow"] = shadow
        options["result_cls"] = self.AsyncResult
        return app._publish(self.name or "", args, kwargs, options, self)

    def shadow_name(self, args: Any, kwargs: Any, options: Any) -> str | None:
        """Override to show another name for this call in logs and monitoring."""
        return None

    def _get_exec_options(self) -> dict[str, Any]:
        return {key: getattr(self, key, None) for key in _EXEC_OPTIONS}

    def _check_arguments(self, args: Any, kwargs: Any) -> None:
        cls = type(self)
        header = cls.__dict__.get("_simq_header")
        if header is None:
            header = header_from(self.run)
            cls._simq_header = header  # type: ignore[attr-defined]
        if header is not NO_HEADER:
            header(*(args or ()), **(kwargs or {}))

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        link: Any = None,
        link_error: Any = None,
        task_id: str | None = None,
        retries: int | None = None,
        throw: bool | None = None,
        logfile: Any = None,
        loglevel: Any = None,
        headers: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult:
        """Run the task in process, now, with Celery's eager semantics (§1.7).

        Countdowns, expiry, rate limits and time limits do not apply; a retry runs again at
        once, recursively, with the same id.
        """
        from simq.runtime import current_task

        app = self._get_app()
        app.refresh_tasks()
        task_id = task_id or app.new_task_id()
        retries = retries or 0
        if throw is None:
            throw = app.conf.task_eager_propagates
        parent = current_task()
        parent_req = parent.request if parent is not None else None
        if parent_req is not None and parent_req.id:
            parent_id, root_id = parent_req.id, parent_req.root_id or task_id
        else:
            parent_id, root_id = None, task_id
        task = app.tasks[self.name or ""]
        limits = None
        if self.time_limit is not None or self.soft_time_limit is not None:
            limits = [self.time_limit, self.soft_time_limit]
        request = Context(
            id=task_id,
            task=self.name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            parent_id=parent_id,
            root_id=root_id,
            retries=retries,
            is_eager=True,
            called_directly=False,
            logfile=logfile,
            loglevel=loglevel or 0,
            hostname=app.hostname,
            callbacks=_listify(link),
            errbacks=_listify(link_error),
            headers=headers,
            timelimit=limits,
            ignore_result=options.get("ignore_result", self.ignore_result),
            delivery_info={
                "is_eager": True,
                "exchange": options.get("exchange"),
                "routing_key": options.get("routing_key"),
                "priority": options.get("priority"),
            },
        )
        outcome = trace(task, request, app.eager_env(), propagate=bool(throw))
        retval = outcome.retval
        if isinstance(retval, Retry) and retval.sig is not None:
            return retval.sig.apply(retries=retries + 1)  # type: ignore[no-any-return]
        return EagerResult(
            task_id, retval, outcome.state, traceback=outcome.traceback, name=self.name, app=app
        )

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult:
        """The result handle of ``task_id``."""
        return AsyncResult(task_id, app=self._get_app(), task_name=self.name, **kwargs)

    def signature(self, args: Any = None, *starargs: Any, **starkwargs: Any) -> Signature:
        """A signature of this task (``subtask`` is an alias)."""
        from simq.canvas import signature

        starkwargs.setdefault("app", self._get_app())
        return signature(self, args, *starargs, **starkwargs)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """``signature(args, kwargs)``: a partial that merges later arguments."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: later arguments (a parent's result) are dropped."""
        return self.signature(args, kwargs, immutable=True)

    # -- retry -------------------------------------------------------------------------

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: dt.datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Retry the task: publish a new message (same id, retries+1), then raise Retry.

        ``countdown`` defaults to ``default_retry_delay``; past ``max_retries`` the ``exc``
        given is re-raised, or MaxRetriesExceededError if none was.
        """
        request = self.request
        retries = request.retries + 1
        if max_retries is not None:
            self.override_max_retries = max_retries
        max_retries = self.max_retries if max_retries is None else max_retries

        if request.called_directly:
            # Not executing as a task: re-raise now, regardless of the limit.
            _raise_with_context(exc or Retry("Task can be retried", None))

        if not eta and countdown is None:
            countdown = self.default_retry_delay

        args, kwargs = merge_retry_arguments(self, request, args, kwargs)
        sig = self.signature_from_request(
            request, args, kwargs, countdown=countdown, eta=eta, retries=retries, **options
        )
        if max_retries is not None and retries > max_retries:
            if exc:
                _raise_with_context(exc)
            # Celery formats the retry signature's arguments: a tuple and a dict.
            raise self.MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{sig.args} kwargs:{sig.kwargs}",
                task_args=sig.args,
                task_kwargs=sig.kwargs,
            )
        ret = Retry(exc=exc, when=eta or countdown, is_eager=request.is_eager, sig=sig)
        if request.is_eager:
            # apply() sees the Retry and runs the retry at once, recursively.
            if throw:
                raise ret
            return ret
        try:
            sig.apply_async()
        except Exception as publish_error:
            raise Reject(publish_error, requeue=False) from publish_error
        if throw:
            raise ret
        return ret

    def signature_from_request(
        self,
        request: Context | None = None,
        args: Any = None,
        kwargs: Any = None,
        queue: str | None = None,
        **extra_options: Any,
    ) -> Signature:
        """The signature a retry of ``request`` is sent with (§4.1)."""
        request = self.request if request is None else request
        args = request.args if args is None else args
        kwargs = request.kwargs if kwargs is None else kwargs
        options = {**request.as_execution_options(), **extra_options}
        delivery_info = request.delivery_info or {}
        priority = delivery_info.get("priority")
        if priority is not None:
            options["priority"] = priority
        if queue:
            options["queue"] = queue
        else:
            exchange = delivery_info.get("exchange")
            routing_key = delivery_info.get("routing_key")
            if exchange == "" and routing_key:
                options["queue"] = routing_key
            else:
                options["exchange"] = exchange
                options["routing_key"] = routing_key
        return self.signature(args, kwargs, options, type=self)

    def retry_on_lost(self, request: Context, exc: BaseException, env: Env) -> None:
        """``retry_on_worker_lost``: send the retry, store RETRY, call ``on_retry``."""
        from simq.runtime import pop_request, push_request

        push_request(self, request)
        try:
            sig = self.signature_from_request(
                request, countdown=self.default_retry_delay, retries=request.retries + 1
            )
            sig.apply_async()
        finally:
            pop_request(self)
        if not request.ignore_result or self.store_errors_even_if_ignored:
            env.store(request.id or "", states.RETRY, exc, request, None)
        self.on_retry(exc, request.id, request.args, request.kwargs, None)

    # -- state -------------------------------------------------------------------------

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any
    ) -> None:
        """Store a state (custom ones like ``PROGRESS`` included) for the current task."""
        app = self._get_app()
        task_id = task_id or self.request.id
        if task_id is None:
            raise SimqError(
                f"task {self.name!r}: update_state() needs a task id; outside a running task "
                "pass task_id="
            )
        app.backend_store(task_id, state or states.PENDING, meta, self.request)

    # -- hooks -------------------------------------------------------------------------

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Called before the body runs, in the worker."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Called after SUCCESS is stored."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Called after FAILURE is stored and errbacks ran."""

    def on_retry(
        self, exc: BaseException | None, task_id: str | None, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Called after RETRY is stored (the retry message is already published)."""

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Called after SUCCESS or FAILURE (not after RETRY, Reject or Ignore)."""

    # -- helpers -----------------------------------------------------------------------

    def _get_app(self) -> App:
        app = type(self).app
        if app is None:
            raise SimqError(f"task {self.name!r} is not bound to an app; define it with @app.task")
        return app

    def takes_errback_args(self, sig: Signature) -> bool:
        """Whether an errback of this task is called inline as (request, exc, traceback)."""
        if self._bind_flag:
            return False
        fun = getattr(self, "__wrapped__", None)
        if fun is None:
            return False
        try:
            params = inspect.signature(fun).parameters.values()
        except (TypeError, ValueError):
            return False
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            return True
        stored = 0 if sig.immutable else len(sig.args)
        return len(positional) - stored > 1

    def jitter_random(self) -> random.Random:
        return self._get_app().random("retry_jitter")

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self.app.main if self.app else None}>"


def _listify(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _raise_with_context(exc: BaseException) -> None:
    import sys

    current = sys.exc_info()[1]
    if current is not None and current is not exc:
        raise exc from current
    raise exc
