"""Signatures: a task call as data (Celery's ``celery.canvas.Signature``).

Merge rules (CELERY_SEMANTICS.md §5.2): partial args are prepended, call-time kwargs and
options win (except ``group_id`` and ``stamped_headers``), immutable signatures ignore
call-time arguments, and options passed as ``None`` are dropped before merging.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simq.app import App
    from simq.result import AsyncResult, EagerResult

__all__ = ["Signature", "maybe_signature", "signature"]

_IMMUTABLE_OPTIONS = frozenset({"group_id", "stamped_headers"})


class Signature(dict):  # type: ignore[type-arg]
    """A task name with arguments and options; a dict, so it travels in messages."""

    def __init__(
        self,
        task: Any = None,
        args: Any = None,
        kwargs: Any = None,
        options: Mapping[str, Any] | None = None,
        type: Any = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: App | None = None,
        **ex: Any,
    ) -> None:
        self._app = app
        if isinstance(task, Mapping):
            super().__init__(task)
            self._type = None
            return
        if isinstance(task, str):
            name, self._type = task, type
        else:
            name, self._type = task.name, task
            if app is None:
                self._app = task.app
        super().__init__(
            task=name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}, **ex),
            subtask_type=subtask_type,
            immutable=immutable,
        )

    # -- fields ------------------------------------------------------------------------

    @property
    def task(self) -> str:
        return self["task"]  # type: ignore[no-any-return]

    name = task

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return self["kwargs"]  # type: ignore[no-any-return]

    @property
    def options(self) -> dict[str, Any]:
        return self["options"]  # type: ignore[no-any-return]

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def app(self) -> App:
        if self._app is None:
            raise LookupError(f"signature {self.task!r} has no app; build it with task.s()")
        return self._app

    @property
    def type(self) -> Any:
        """The task this signature calls (looked up in the app's registry)."""
        if self._type is None:
            self._type = self.app.tasks[self.task]
        return self._type

    # -- merging -----------------------------------------------------------------------

    def _merge(
        self, args: Any = None, kwargs: Any = None, options: Any = None, force: bool = False
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        options = dict(options or {})
        new_options = dict(self.options)
        # Stamp keys the signature already carries are kept too, as group_id is.
        frozen = _IMMUTABLE_OPTIONS.union(self.options.get("stamped_headers") or ())
        for key, value in options.items():
            if key in frozen and key in self.options:
                continue
            new_options[key] = value
        if self.immutable and not force:
            return self.args, dict(self.kwargs), new_options
        return args + self.args, {**self.kwargs, **kwargs}, new_options

    def clone(self, args: Any = None, kwargs: Any = None, **opts: Any) -> Signature:
        """A copy with arguments merged in and options deep-copied."""
        args, kwargs, options = self._merge(args, kwargs, opts)
        sig = Signature(
            self.task,
            args,
            kwargs,
            copy.deepcopy(options),
            type=self._type,
            subtask_type=self.get("subtask_type"),
            immutable=self.immutable,
            app=self._app,
        )
        return sig

    partial = clone

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Update options in place and return self."""
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def freeze(self, _id: str | None = None, **kwargs: Any) -> AsyncResult:
        """Give the signature a task id (kept if already set) and return its result."""
        opts = self.options
        if "task_id" not in opts or opts["task_id"] is None:
            opts["task_id"] = _id or self.app.new_task_id()
        for key in ("group_id", "root_id", "parent_id", "group_index"):
            if kwargs.get(key) is not None:
                opts[key] = kwargs[key]
        return self.type.AsyncResult(opts["task_id"])  # type: ignore[no-any-return]

    # -- calling -----------------------------------------------------------------------

    def __call__(self, *partial_args: Any, **partial_kwargs: Any) -> Any:
        """Call the task body locally, with partial arguments merged."""
        args, kwargs, _ = self._merge(partial_args, partial_kwargs, None)
        return self.type(*args, **kwargs)

    def delay(self, *partial_args: Any, **partial_kwargs: Any) -> AsyncResult:
        return self.apply_async(partial_args, partial_kwargs)

    def apply_async(
        self, args: Any = None, kwargs: Any = None, route_name: Any = None, **options: Any
    ) -> AsyncResult:
        """Send the signature's task; call-time options win over stored ones."""
        options = {k: v for k, v in options.items() if v is not None}
        args, kwargs, options = self._merge(args, kwargs, options)
        return self.type.apply_async(args, kwargs, **options)  # type: ignore[no-any-return]

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> EagerResult:
        """Run the signature's task in process with eager semantics."""
        options = {k: v for k, v in options.items() if v is not None}
        args, kwargs, options = self._merge(args, kwargs, options)
        return self.type.apply(args, kwargs, **options)  # type: ignore[no-any-return]

    def link(self, callback: Signature) -> Signature:
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}({args}){'!' if self.immutable else ''}"

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        sig = Signature(dict(copy.deepcopy(dict(self), memo)), app=self._app)
        sig._type = self._type
        return sig

    def __reduce__(self) -> Any:
        return Signature, (dict(self),)


def signature(varies: Any, *args: Any, app: Any = None, **kwargs: Any) -> Signature:
    """Build a signature from a task, a task name or a signature dict."""
    if isinstance(varies, Signature):
        return varies.clone() if app is None else Signature(dict(varies), app=app)
    if isinstance(varies, Mapping):
        return Signature(dict(varies), app=app)
    kwargs["app"] = app
    return Signature(varies, *args, **kwargs)


def maybe_signature(d: Any, app: App | None = None) -> Signature | None:
    if d is None:
        return None
    if isinstance(d, Signature):
        if app is not None and d._app is None:
            d._app = app
        return d
    return Signature(dict(d), app=app)
