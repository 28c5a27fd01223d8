"""Executing one task attempt: the request context and the tracer.

Internal. ``trace()`` runs a task body the way Celery's tracer does in the pool child:
it stores STARTED/SUCCESS/RETRY/FAILURE in the order Celery does, publishes link
callbacks before SUCCESS is stored, calls hooks in Celery's order, and turns the outcome
into an :class:`Outcome` the worker (the "parent") acts on: ack, reject, requeue.

Request contexts are kept per greenlet, so tasks interleaved on a simulated worker's
child slots each see their own ``self.request``.
"""

from __future__ import annotations

import traceback as _tb
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import greenlet

from simq import states
from simq.exceptions import EncodeError, Ignore, Reject, Retry, WorkerLostError
from simq.serialization import encode_exception, roundtrip

__all__ = [
    "Context",
    "Env",
    "Outcome",
    "current_task",
    "mark_as_failure",
    "pop_request",
    "push_request",
    "task_request",
    "trace",
]

_X_DEATH = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason")


class Context:
    """``task.request``: what the task knows about the current call (Celery's ``Context``)."""

    id: str | None = None
    task: str | None = None
    args: Any = None
    kwargs: Any = None
    retries: int = 0
    is_eager: bool = False
    called_directly: bool = True
    eta: str | None = None
    expires: str | None = None
    delivery_info: dict[str, Any] | None = None
    hostname: str | None = None
    origin: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    chord: Any = None
    chain: Any = None
    callbacks: Any = None
    errbacks: Any = None
    timelimit: Any = None
    ignore_result: bool = False
    reply_to: str | None = None
    correlation_id: str | None = None
    headers: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    shadow: str | None = None
    taskset: str | None = None
    utc: bool | None = None
    loglevel: Any = None
    logfile: Any = None
    stamps: Any = None
    stamped_headers: Any = None
    replaced_task_nesting: int = 0
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    lang: str | None = None
    _children: list[Any] | None = None

    def __init__(self, *args: dict[str, Any], **kwargs: Any) -> None:
        self.update(*args, **kwargs)

    def update(self, *args: dict[str, Any], **kwargs: Any) -> None:
        for mapping in args:
            self.__dict__.update(mapping)
        self.__dict__.update(kwargs)
        headers = self.__dict__.get("headers")
        if headers:
            # Custom headers are also readable as request attributes, as in Celery.
            for key, value in headers.items():
                self.__dict__.setdefault(key, value)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    @property
    def time_limit(self) -> float | None:
        return self.timelimit[0] if self.timelimit else None

    @property
    def soft_time_limit(self) -> float | None:
        return self.timelimit[1] if self.timelimit else None

    @property
    def children(self) -> list[Any]:
        if self._children is None:
            self._children = []
        return self._children

    def as_execution_options(self) -> dict[str, Any]:
        """The options a retry of this request is sent with (Celery's, same names)."""
        hard, soft = self.timelimit or (None, None)
        headers = dict(self.headers or {})
        for key in _X_DEATH:
            headers.pop(key, None)
        return {
            "task_id": self.id,
            "root_id": self.root_id,
            "parent_id": self.parent_id,
            "group_id": self.group,
            "group_index": self.group_index,
            "shadow": self.shadow,
            "chord": self.chord,
            "chain": self.chain,
            "link": self.callbacks,
            "link_error": self.errbacks,
            "expires": self.expires,
            "soft_time_limit": soft,
            "time_limit": hard,
            "headers": headers,
            "retries": self.retries,
            "reply_to": self.reply_to,
            "replaced_task_nesting": self.replaced_task_nesting,
            "origin": self.origin,
            "ignore_result": self.ignore_result,
        }

    def __repr__(self) -> str:
        return f"<Context: {vars(self)!r}>"


# -- per-greenlet request stacks ------------------------------------------------------


class _Frames:
    __slots__ = ("requests", "tasks")

    def __init__(self) -> None:
        self.requests: dict[Any, list[Context]] = {}
        self.tasks: list[Any] = []


def _frames() -> _Frames:
    glet = greenlet.getcurrent()
    try:
        return glet.simq_frames  # type: ignore[no-any-return]
    except AttributeError:
        frames = glet.simq_frames = _Frames()
        return frames


def push_request(task: Any, request: Context) -> None:
    """Make ``request`` the current request of ``task`` in this greenlet."""
    frames = _frames()
    frames.requests.setdefault(task, []).append(request)
    frames.tasks.append(task)


def pop_request(task: Any) -> None:
    frames = _frames()
    stack = frames.requests[task]
    stack.pop()
    if not stack:
        del frames.requests[task]
    frames.tasks.pop()


def task_request(task: Any) -> Context | None:
    """The request ``task`` is executing in this greenlet, or None."""
    stack = _frames().requests.get(task)
    return stack[-1] if stack else None


def current_task() -> Any:
    """The task executing in this greenlet (innermost), or None."""
    tasks = _frames().tasks
    return tasks[-1] if tasks else None


def current_worker_task() -> Any:
    """The innermost task executing as a worker task (not called directly), or None."""
    frames = _frames()
    for task in reversed(frames.tasks):
        stack = frames.requests.get(task)
        if stack and not stack[-1].called_directly and not stack[-1].is_eager:
            return task
    return None


# -- the tracer ----------------------------------------------------------------------


class Env(Protocol):
    """What the tracer needs from the world it runs in (a simulation, or eager apply)."""

    eager: bool
    hostname: str

    def store(
        self, task_id: str, state: str, result: Any, request: Context, traceback: str | None
    ) -> None:
        """Write a state to the result backend (SUCCESS stays final)."""

    def get_state(self, task_id: str) -> str:
        """The stored state of ``task_id`` (PENDING when unknown)."""

    def work(self, task: Any) -> None:
        """Called just before the body runs: a simulated worker spends the task's duration."""


@attrs.frozen(slots=True)
class Outcome:
    """How an attempt ended, for the worker's ack decision (Celery's trace ``state``).

    ``state`` is SUCCESS, FAILURE, RETRY, REJECTED, IGNORED, or ``LOST`` (the child died).
    """

    state: str
    retval: Any = None
    exc: BaseException | None = None
    traceback: str | None = None
    requeue: bool = False
    exitcode: int | None = None


LOST = "LOST"


def _stores(task: Any, request: Context, env: Env) -> tuple[bool, bool]:
    """Whether results, and whether errors, are stored for this attempt (trace.py)."""
    publish = (not env.eager or bool(task.store_eager_result)) and not request.ignore_result
    errors = publish or (
        (not env.eager or bool(task.store_eager_result)) and bool(task.store_errors_even_if_ignored)
    )
    return publish, errors


def _format_tb(exc: BaseException) -> str:
    return "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))


def mark_as_failure(
    task: Any,
    request: Context,
    exc: BaseException,
    tb: str | None,
    env: Env,
    call_errbacks: bool = True,
) -> None:
    """Store FAILURE (unless results are ignored) and call the errbacks, as Celery does."""
    _, store_errors = _stores(task, request, env)
    if store_errors:
        env.store(request.id or "", states.FAILURE, exc, request, tb)
    if call_errbacks and request.errbacks:
        call_task_errbacks(task, request, exc, tb, env)


def call_task_errbacks(
    task: Any, request: Context, exc: BaseException, tb: str | None, env: Env
) -> None:
    """Call errbacks: inline when they take (request, exc, traceback), else as tasks."""
    app = task.app
    old_style = []
    for errback in request.errbacks or ():
        sig = app.signature(errback)
        target = app.tasks.get(sig.task)
        if target is not None and target.takes_errback_args(sig):
            try:
                sig(request, exc, tb)
            except Exception:  # logged by Celery, swallowed
                pass
        else:
            old_style.append(sig)
    task_id = request.id
    root_id = request.root_id or task_id
    for sig in old_style:
        if env.eager:
            sig.apply((task_id,), parent_id=task_id, root_id=root_id)
        else:
            sig.apply_async((task_id,), parent_id=task_id, root_id=root_id)


def _dispatch_callbacks(task: Any, request: Context, retval: Any) -> None:
    app = task.app
    parent_id = request.id
    root_id = request.root_id or parent_id
    for callback in request.callbacks or ():
        app.signature(callback).apply_async((retval,), parent_id=parent_id, root_id=root_id)
    if request.chain:
        chain = list(request.chain)
        nxt = app.signature(chain.pop())
        nxt.apply_async((retval,), chain=chain, parent_id=parent_id, root_id=root_id)


def trace(task: Any, request: Context, env: Env, propagate: bool = False) -> Outcome:
    """Run one attempt of ``task`` with ``request``; store states; return the outcome.

    ``propagate`` re-raises the task's exception (including Retry), as ``apply(throw=True)``.
    """
    args = request.args or ()
    kwargs = request.kwargs or {}
    task_id = request.id or ""
    publish_result, _ = _stores(task, request, env)
    push_request(task, request)
    try:
        if task.track_started and publish_result and not env.eager:
            env.store(task_id, states.STARTED, {"pid": 0, "hostname": env.hostname}, request, None)
        try:
            task.before_start(task_id, args, kwargs)
            env.work(task)
            retval = task.run(*args, **kwargs)
        except Reject as exc:
            return Outcome(states.REJECTED, exc, exc, requeue=exc.requeue)
        except Ignore as exc:
            return Outcome(states.IGNORED, exc, exc)
        except Retry as exc:
            if propagate:
                raise
            return _on_retry(task, request, exc, env)
        except (SystemExit, KeyboardInterrupt) as exc:
            # The body killed its own child process (Celery: WorkerLostError in the parent).
            return Outcome(LOST, None, exc, exitcode=_exitcode(exc))
        except Exception as exc:
            if propagate:
                raise
            return _on_failure(task, request, exc, env)
        return _on_success(task, request, retval, env, publish_result, propagate)
    except (SystemExit, KeyboardInterrupt) as exc:
        # Raised by a hook (on_success, after_return, on_failure, on_retry) it ends the
        # pool child too, possibly after SUCCESS was stored; eager mode lets it propagate.
        if env.eager:
            raise
        return Outcome(LOST, None, exc, exitcode=_exitcode(exc))
    finally:
        pop_request(task)


def _exitcode(exc: BaseException) -> int:
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    return 1


def lost_error(exitcode: int | None, exc: BaseException | None = None) -> WorkerLostError:
    """The WorkerLostError Celery reports for a child that exited with ``exitcode``.

    A negative exit code is a signal, as billiard reports it (``-9``: SIGKILL).
    """
    if isinstance(exc, KeyboardInterrupt):
        return WorkerLostError("Worker exited prematurely: KeyboardInterrupt.")
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "UNKNOWN"
        return WorkerLostError(f"Worker exited prematurely: signal {-exitcode} ({name}).")
    return WorkerLostError(f"Worker exited prematurely: exitcode {exitcode}.")


def run_parent_hooks(task: Any, request: Context, exc: BaseException) -> None:
    """``on_failure`` and ``after_return`` run by the parent (hard time limit, 5.7)."""
    args, kwargs = request.args or (), request.kwargs or {}
    push_request(task, request)
    try:
        for hook, hook_args in (
            (task.on_failure, (exc, request.id, args, kwargs, None)),
            (task.after_return, (states.FAILURE, exc, request.id, args, kwargs, None)),
        ):
            try:
                hook(*hook_args)
            except Exception:  # logged by Celery, swallowed
                pass
    finally:
        pop_request(task)


def _on_success(
    task: Any, request: Context, retval: Any, env: Env, publish_result: bool, propagate: bool
) -> Outcome:
    task_id = request.id or ""
    try:
        if request.callbacks or request.chain:
            _dispatch_callbacks(task, request, retval)
        if publish_result:
            env.store(task_id, states.SUCCESS, retval, request, None)
    except EncodeError as exc:
        if propagate:
            raise
        return _on_failure(task, request, exc, env)
    args, kwargs = request.args or (), request.kwargs or {}
    _hook(env, task.on_success, retval, task_id, args, kwargs)
    _hook(env, task.after_return, states.SUCCESS, retval, task_id, args, kwargs, None)
    return Outcome(states.SUCCESS, retval)


def _on_retry(task: Any, request: Context, exc: Retry, env: Env) -> Outcome:
    task_id = request.id or ""
    tb = _format_tb(exc)
    _, store_errors = _stores(task, request, env)
    if store_errors:
        env.store(task_id, states.RETRY, exc.exc, request, tb)
    task.on_retry(exc.exc, task_id, request.args or (), request.kwargs or {}, tb)
    return Outcome(states.RETRY, exc, exc, tb)


def _on_failure(task: Any, request: Context, exc: BaseException, env: Env) -> Outcome:
    task_id = request.id or ""
    tb = _format_tb(exc)
    mark_as_failure(task, request, exc, tb, env)
    args, kwargs = request.args or (), request.kwargs or {}
    task.on_failure(exc, task_id, args, kwargs, tb)
    _hook(env, task.after_return, states.FAILURE, exc, task_id, args, kwargs, tb)
    return Outcome(states.FAILURE, exc, exc, tb)


def _hook(env: Env, fn: Callable[..., Any], *args: Any) -> None:
    # 5.7: an exception in on_success/after_return is logged and does not flip the outcome
    # in a worker; eager mode re-raises it.
    if env.eager:
        fn(*args)
        return
    try:
        fn(*args)
    except Exception:  # logged by Celery, swallowed
        pass


def encoded(value: Any, serializer: str = "json") -> Any:
    """A result as a JSON-compatible value, the way a backend stores it."""
    if value is None or type(value) in _SCALARS:
        return value
    if isinstance(value, BaseException):
        return encode_exception(value)
    return roundtrip(value, serializer)


_SCALARS = frozenset({int, str, bool})
