"""``simq.App`` (also ``simq.Celery``): the application, its task registry and routing.

The app turns calls into messages and hands them to its active simulation; it never
imports the simulated world itself.
"""

from __future__ import annotations

import datetime as dt
import difflib
import random
import sys
import uuid
import warnings
from collections.abc import Callable, Mapping
from typing import Any, overload

from simq import states
from simq.autoretry import make_autoretry
from simq.canvas import Signature, signature
from simq.config import Settings
from simq.exceptions import NoActiveSimulation, NotRegistered
from simq.message import Message
from simq.rates import parse_rate
from simq.result import AsyncResult
from simq.routing import route
from simq.runtime import Context, current_task, current_worker_task, encoded
from simq.serialization import dumps
from simq.task import Task

_Task = Task
_AsyncResult = AsyncResult

__all__ = ["App", "Celery", "TaskRegistry"]

_OMITTED: Any = object()

# Keywords the decorator consumes itself; every other keyword becomes a class attribute.
_DECORATOR_KEYWORDS = frozenset({"name", "base", "bind", "shared", "filter", "lazy"})


class TaskRegistry(dict[str, Task]):
    """Registered tasks by name; a miss raises NotRegistered (a KeyError)."""

    def __missing__(self, key: str) -> Task:
        exc = NotRegistered(key)
        if hasattr(exc, "add_note"):  # Python 3.11+; a note keeps Celery's str() and repr()
            close = difflib.get_close_matches(str(key), [str(name) for name in self], n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else "import the module that defines it before calling it"
            )
            exc.add_note(f"no task named {key!r} is registered with this app; {hint}")
        raise exc

    def register(self, task: Task | type[Task]) -> None:
        if isinstance(task, type):
            task = task()
        if not task.name:
            from simq.exceptions import SimqError

            raise SimqError(f"task class {type(task).__name__} must define a name to register")
        self[task.name] = task

    def unregister(self, name: str | Task) -> None:
        key = name if isinstance(name, str) else name.name or ""
        try:
            del self[key]
        except KeyError:
            raise NotRegistered(key) from None


class Control:
    """``app.control``: remote control commands, sent to the active simulation."""

    def __init__(self, app: App) -> None:
        self.app = app

    def revoke(
        self,
        task_id: str | list[str],
        destination: Any = None,
        terminate: bool = False,
        signal: Any = None,
        **kwargs: Any,
    ) -> None:
        """Tell every worker to discard ``task_id`` (and, with terminate, kill its child)."""
        self.app.require_world("app.control.revoke()").revoke(
            task_id, terminate=terminate, signal=signal
        )


class EagerStore:
    """Where ``apply()`` stores results (``task_store_eager_result``) outside a simulation."""

    eager = True

    def __init__(self, app: App) -> None:
        self.app = app
        self.hostname = app.hostname
        self._metas: dict[str, dict[str, Any]] = {}

    def store(
        self, task_id: str, state: str, result: Any, request: Context | None, traceback: str | None
    ) -> None:
        world = self.app._world
        if world is not None:
            world.store(task_id, state, result, request, traceback)
            return
        old = self._metas.get(task_id)
        if old is not None and old["status"] == states.SUCCESS:
            return
        self._metas[task_id] = {
            "status": state,
            "result": encoded(result),
            "traceback": traceback,
            "date_done": None,
        }

    def work(self, task: Any) -> None:
        """Eager runs take no simulated time."""

    def get(self, task_id: str) -> dict[str, Any] | None:
        world = self.app._world
        return world.get_meta(task_id) if world is not None else self._metas.get(task_id)

    def get_state(self, task_id: str) -> str:
        meta = self.get(task_id)
        return meta["status"] if meta else states.PENDING

    def forget(self, task_id: str) -> None:
        self._metas.pop(task_id, None)


class App:
    """A task application with Celery's API.

    Args:
        main: Name of the main module; names tasks defined in ``__main__``.
        **settings: Settings by Celery's names (``task_acks_late=True``, ...);
            ``broker=`` and ``backend=`` set ``broker_url`` and ``result_backend``.

    Example:
        >>> app = App("shop", task_acks_late=True)
        >>> @app.task(bind=True, max_retries=5)
        ... def pay(self, order_id):
        ...     return order_id
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        strict_typing: bool = True,
        broker: str | None = None,
        backend: str | None = None,
        **settings: Any,
    ) -> None:
        self.main = main
        self.strict_typing = strict_typing
        if broker is not None:
            settings.setdefault("broker_url", broker)
        if backend is not None:
            settings.setdefault("result_backend", backend)
        self.conf = Settings(settings)
        self.tasks = TaskRegistry()
        self.control = Control(self)
        self.hostname = "localhost"
        self._world: Any = None
        self._eager = EagerStore(self)
        self._random = random.Random(0)
        self._task_base: type[_Task] | None = None

    # -- tasks -------------------------------------------------------------------------

    @property
    def Task(self) -> type[_Task]:
        """The base task class bound to this app (``base`` default of ``@app.task``)."""
        if self._task_base is None:
            self._task_base = type(
                "Task", (Task,), {"app": self, "__module__": __name__, "abstract": True}
            )
        return self._task_base

    @overload
    def task(self, fun: Callable[..., Any], /) -> _Task: ...
    @overload
    def task(self, **opts: Any) -> Callable[[Callable[..., Any]], _Task]: ...
    def task(self, *args: Any, **opts: Any) -> Any:
        """Decorator that makes a function a task: ``@app.task`` or ``@app.task(**opts)``."""
        if len(args) == 1 and not opts and callable(args[0]):
            return self._task_from_fun(args[0])
        if args:
            if len(args) == 1 and not callable(args[0]):
                raise TypeError("argument 1 to @task() must be a callable")
            raise TypeError(f"@task() takes exactly 1 argument ({len(args)} given)")

        def decorate(fun: Callable[..., Any]) -> _Task:
            return self._task_from_fun(fun, **opts)

        return decorate

    shared_task = task

    def _task_from_fun(
        self,
        fun: Callable[..., Any],
        name: str | None = None,
        base: type[_Task] | None = None,
        bind: bool = False,
        **options: Any,
    ) -> _Task:
        for key in ("shared", "filter", "lazy"):
            options.pop(key, None)
        name = name or self.gen_task_name(fun.__name__, fun.__module__)
        base = base or self.Task
        if name in self.tasks:
            existing = self.tasks[name]
            if getattr(existing, "__wrapped__", None) is not fun:
                warnings.warn(
                    f"task name {name!r} is already registered; keeping the first", stacklevel=3
                )
            return existing
        if "rate_limit" in options:
            parse_rate(options["rate_limit"], owner=f"task {name!r}: rate_limit")
        run = fun if bind else staticmethod(fun)
        attrs: dict[str, Any] = {
            "app": self,
            "name": name,
            "run": run,
            "_decorated": True,
            "_bind_flag": bind,
            "__doc__": fun.__doc__,
            "__module__": fun.__module__,
            "__qualname__": fun.__qualname__,
            "__wrapped__": run,
            **options,
        }
        task_cls: type[_Task] = type(fun.__name__, (base,), attrs)
        task = task_cls()
        self.register_task(task)
        return task

    def register_task(self, task: _Task | type[_Task], **options: Any) -> _Task:
        """Register a task instance or class (named by ``name`` or generated)."""
        if isinstance(task, type):
            task = task()
        cls = type(task)
        if not task.name:
            cls.name = self.gen_task_name(cls.__name__, cls.__module__)
        if cls.app is not self:
            cls.app = self
        if cls.rate_limit is not None:
            parse_rate(cls.rate_limit, owner=f"task {task.name!r}: rate_limit")
        cls.bind(self)
        self._annotate(task)
        self.tasks[task.name or ""] = task
        make_autoretry(task)
        return task

    def refresh_tasks(self) -> None:
        """Re-read config-derived task attributes if ``app.conf`` changed since binding."""
        version = self.conf.version
        for task in self.tasks.values():
            cls = type(task)
            if cls.__dict__.get("_conf_version") != version and "_config_filled" in cls.__dict__:
                cls._fill_from_config(self)
                self._annotate(task)

    def _annotate(self, task: _Task) -> None:
        annotations = self.conf.task_annotations
        if not annotations:
            return
        for annotation in annotations if isinstance(annotations, list | tuple) else [annotations]:
            if callable(annotation):
                found = annotation(task)
            else:
                found = annotation.get(task.name) or annotation.get("*")
            for key, value in (found or {}).items():
                setattr(type(task), key, value)

    def gen_task_name(self, name: str, module: str) -> str:
        """Celery's naming: ``module.name``; ``main.name`` for tasks in ``__main__``."""
        if module == "__main__" and self.main:
            return f"{self.main}.{name}"
        if module not in sys.modules:
            return f"{module}.{name}"
        return f"{module}.{name}"

    # -- results and signatures --------------------------------------------------------

    def AsyncResult(self, task_id: str, **kwargs: Any) -> _AsyncResult:
        """The result handle of ``task_id``."""
        return AsyncResult(task_id, app=self, **kwargs)

    def signature(self, *args: Any, **kwargs: Any) -> Signature:
        kwargs["app"] = self
        return signature(*args, **kwargs)

    @property
    def current_task(self) -> Any:
        return current_task()

    @property
    def current_worker_task(self) -> Any:
        return current_worker_task()

    # -- the active world --------------------------------------------------------------

    def require_world(self, what: str) -> Any:
        world = self._world
        if world is None:
            raise NoActiveSimulation(
                f"{what} publishes a message, but app {self.main!r} has no active simulation; "
                "start one with `with simq.Simulation(app) as sim:` (or the `simulation` "
                "pytest fixture), or run the task in process with task.apply()"
            )
        return world

    def new_task_id(self) -> str:
        world = self._world
        return world.new_task_id() if world is not None else str(uuid.uuid4())

    def random(self, name: str) -> random.Random:
        world = self._world
        return world.random(name) if world is not None else self._random

    def eager_env(self) -> EagerStore:
        return self._eager

    def backend_get(self, task_id: str) -> dict[str, Any] | None:
        return self._eager.get(task_id)

    def backend_store(self, task_id: str, state: str, meta: Any, request: Any) -> None:
        self._eager.store(task_id, state, meta, request, None)

    def now(self) -> dt.datetime:
        world = self._world
        if world is not None:
            return world.now  # type: ignore[no-any-return]
        return dt.datetime.now(dt.timezone.utc)

    # -- sending -----------------------------------------------------------------------

    def send_task(
        self,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        countdown: float | None = None,
        eta: dt.datetime | str | None = None,
        task_id: str | None = None,
        producer: Any = None,
        connection: Any = None,
        router: Any = None,
        result_cls: Any = None,
        expires: Any = _OMITTED,
        publisher: Any = None,
        link: Any = None,
        link_error: Any = None,
        add_to_parent: bool = True,
        group_id: str | None = None,
        group_index: int | None = None,
        retries: int = 0,
        chord: Any = None,
        reply_to: str | None = None,
        time_limit: Any = _OMITTED,
        soft_time_limit: Any = _OMITTED,
        root_id: str | None = None,
        parent_id: str | None = None,
        route_name: str | None = None,
        shadow: str | None = None,
        chain: Any = None,
        task_type: Any = None,
        replaced_task_nesting: int = 0,
        **options: Any,
    ) -> _AsyncResult:
        """Send a task by name to the active simulation (same options as apply_async)."""
        self.require_world(f"sending task {name!r}")
        if self.conf.task_always_eager:
            warnings.warn("task_always_eager has no effect on send_task", stacklevel=2)
        if task_type is None:
            task_type = self.tasks.get(name)
            if task_type is not None:
                # 5.7: a locally registered task's execution options are the defaults.
                exec_opts = {
                    k: v for k, v in task_type._get_exec_options().items() if v is not None
                }
                options = dict(exec_opts, **options)
                options.setdefault("ignore_result", task_type.ignore_result)
        for key, value in (
            ("time_limit", time_limit),
            ("soft_time_limit", soft_time_limit),
            ("expires", expires),
        ):
            if value is not _OMITTED:
                options[key] = value  # an explicit None clears the task's default
        options.update(
            countdown=countdown,
            eta=eta,
            task_id=task_id,
            link=link,
            link_error=link_error,
            add_to_parent=add_to_parent,
            group_id=group_id,
            group_index=group_index,
            retries=retries,
            chord=chord,
            reply_to=reply_to,
            root_id=root_id,
            parent_id=parent_id,
            route_name=route_name,
            shadow=shadow,
            chain=chain,
            replaced_task_nesting=replaced_task_nesting,
            result_cls=result_cls,
        )
        return self._publish(name, args, kwargs, options, task_type)

    def _publish(
        self, name: str, args: Any, kwargs: Any, options: dict[str, Any], task_type: Any
    ) -> _AsyncResult:
        """Turn a call into a message and publish it (``options`` is consumed)."""
        world = self._world
        if world is None:
            world = self.require_world(f"sending task {name!r}")
        pop = options.pop
        task_id = pop("task_id", None) or world.new_task_id()
        countdown, eta = pop("countdown", None), pop("eta", None)
        link, link_error = pop("link", None), pop("link_error", None)
        time_limit, soft_time_limit = pop("time_limit", None), pop("soft_time_limit", None)
        expires = pop("expires", None)
        ignore_result = bool(pop("ignore_result", None))
        root_id, parent_id = pop("root_id", None), pop("parent_id", None)
        shadow, result_cls = pop("shadow", None), pop("result_cls", None)
        add_to_parent = pop("add_to_parent", True)

        args = () if args is None else args
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(args, list | tuple):
            raise TypeError("task args must be a list or tuple")
        if not isinstance(kwargs, Mapping):
            raise TypeError("task keyword arguments must be a mapping")

        queue, exchange, routing_key = self._route(
            name, args, kwargs, options, task_type, pop("route_name", None)
        )
        now = world.time()
        # The headers carry ISO 8601 (microseconds) and a worker reads them back: keep the
        # float the worker schedules on equal to what the header says (amqp.py).
        eta_ts = _on_the_wire(_eta(now, countdown, eta)) if countdown or eta else None
        expires_ts = (
            _on_the_wire(_absolute(now, expires, "expires")) if expires is not None else None
        )

        parent = current_worker_task()
        if parent is not None and (not root_id or not parent_id):
            preq = parent.request
            if not root_id:
                root_id = preq.root_id or preq.id
            if not parent_id:
                parent_id = preq.id
            if self.conf.task_inherit_parent_priority:
                options.setdefault("priority", (preq.delivery_info or {}).get("priority"))
        root_id = root_id or task_id
        priority = options.get("priority")
        serializer = (
            options.get("serializer")
            or (task_type.serializer if task_type is not None else None)
            or self.conf.task_serializer
        )
        headers: dict[str, Any] = {
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": shadow,
            "eta": _iso(eta_ts) if eta_ts is not None else None,
            "expires": _iso(expires_ts) if expires_ts is not None else None,
            "group": options.get("group_id"),
            "group_index": options.get("group_index"),
            "retries": options.get("retries") or 0,
            "timelimit": [time_limit, soft_time_limit],
            "root_id": root_id,
            "parent_id": parent_id,
            "origin": options.get("origin") or "gen0@simq",
            "ignore_result": ignore_result,
            "replaced_task_nesting": options.get("replaced_task_nesting") or 0,
        }
        reply_to = options.get("reply_to")
        if reply_to:
            headers["reply_to"] = reply_to
        custom = options.get("headers")
        if custom:
            headers.update(custom)
        embed = {
            "callbacks": _sig_list(link) if link is not None else None,
            "errbacks": _sig_list(link_error) if link_error is not None else None,
            "chain": options.get("chain"),
            "chord": options.get("chord"),
        }
        body = dumps([list(args), dict(kwargs), embed], serializer)
        message = Message(
            message_id=world.new_message_id(),
            task_id=task_id,
            task=name,
            headers=headers,
            body=body,
            serializer=serializer,
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            priority=priority,
            eta=eta_ts,
            expires=expires_ts,
        )
        world.publish(message)
        result = (result_cls or self.AsyncResult)(task_id)
        result.ignored = ignore_result
        if add_to_parent and parent is not None and parent.trail:
            parent.request.children.append(result)
        return result

    def _route(
        self,
        name: str,
        args: Any,
        kwargs: Any,
        options: dict[str, Any],
        task: Any,
        route_name: str | None,
    ) -> tuple[str, str, str]:
        return route(self.conf, route_name or name, args, kwargs, options, task)

    def __repr__(self) -> str:
        return f"<App {self.main or '__main__'}>"


Celery = App


def _sig_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    return [dict(item) for item in items]


def _to_epoch(value: dt.datetime | str, what: str) -> float:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{what} must be a datetime or an ISO string, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)  # naive means UTC (enable_utc)
    return value.timestamp()


def _eta(now: float, countdown: float | None, eta: dt.datetime | str | None) -> float | None:
    if countdown:  # countdown wins over eta, as in amqp.py
        return now + float(countdown)
    if eta:
        return _to_epoch(eta, "eta")
    return None


def _absolute(now: float, value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return now + float(value)
    return _to_epoch(value, what)


def _on_the_wire(ts: float | None) -> float | None:
    """``ts`` as a worker reads it back from its ISO 8601 header (whole microseconds)."""
    return None if ts is None else _to_epoch(_iso(ts) or "", "timestamp")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()
