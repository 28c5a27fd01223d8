"""Task arguments: cheap signature checks at the call, and retry's argument merging."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simq.runtime import Context
    from simq.task import Task

__all__ = ["NO_HEADER", "header_from", "merge_retry_arguments"]

NO_HEADER: Any = object()


def header_from(fun: Callable[..., Any]) -> Any:
    """A no-op function with ``fun``'s signature: calling it checks arguments cheaply.

    Python itself then raises the TypeError, with the message a user would see calling
    the function (``add() missing 1 required positional argument: 'y'``), as Celery does.
    """
    try:
        sig = inspect.signature(fun)
    except (TypeError, ValueError):
        return NO_HEADER
    namespace: dict[str, Any] = {}
    parts: list[str] = []
    star = False
    params = list(sig.parameters.values())
    for index, param in enumerate(params):
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text, star = f"*{param.name}", True
        elif param.kind is param.VAR_KEYWORD:
            text = f"**{param.name}"
        elif param.kind is param.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if param.default is not param.empty:
            namespace[f"__simq_default_{index}"] = param.default
            text += f"=__simq_default_{index}"
        parts.append(text)
        nxt = params[index + 1] if index + 1 < len(params) else None
        if param.kind is param.POSITIONAL_ONLY and (
            nxt is None or nxt.kind is not param.POSITIONAL_ONLY
        ):
            parts.append("/")
    name = getattr(fun, "__name__", "task")
    if not name.isidentifier():
        name = "task"
    exec(f"def {name}({', '.join(parts)}):\n    return None\n", namespace)
    return namespace[name]


def merge_retry_arguments(task: Task, request: Context, args: Any, kwargs: Any) -> tuple[Any, Any]:
    """5.7's retry argument merging (issue #6494), §1.8 step 4."""
    orig_args = list(request.args or ())
    orig_kwargs = dict(request.kwargs or {})
    if args is None and kwargs is None:
        return orig_args, orig_kwargs
    if args is not None and kwargs is not None:
        return list(args), dict(kwargs)
    if args is not None:
        # Only args given: keep the original kwargs that the new positionals do not cover.
        try:
            names = [
                p.name
                for p in inspect.signature(task.run).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        except (TypeError, ValueError):
            names = []
        covered = set(names[: len(args)])
        kept = {k: v for k, v in orig_kwargs.items() if k not in covered}
        return list(args), kept
    # Only kwargs given: they replace the original kwargs, and one naming an original
    # positional replaces it in place, so positionals stay positional (Celery 5.7).
    assert kwargs is not None
    kwargs = dict(kwargs)
    if not orig_args:
        return orig_args, kwargs
    try:
        signature = inspect.signature(task.run)
        bound = signature.bind_partial(*orig_args)
    except (TypeError, ValueError):
        return orig_args, kwargs
    for name in list(kwargs):
        if (
            name in bound.arguments
            and signature.parameters[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ):
            bound.arguments[name] = kwargs.pop(name)
    return list(bound.args), {**bound.kwargs, **kwargs}
